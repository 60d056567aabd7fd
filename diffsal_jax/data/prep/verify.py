"""`python -m data_prep verify OUT`: are the shards the files the conversion wrote?

Each shard is compared with the sha256 and size that `convert` recorded in
OUT/manifest.json when it wrote the shard. Manifests written before those
were recorded have none; their shards are checked by reading every record
instead (the ArrayRecord reader checks each chunk's hash and the record
count is compared with the manifest), which finds damaged chunks but not
every change. Damaged shards are listed with their video and the fix; the
exit status is 1 when any is.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib

import tqdm
from array_record.python import array_record_module

from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import shards

BY_SHA256, BY_RECORDS = "sha256", "records"
_RECORDS_PER_READ = 256   # bounds the memory of a record-by-record check


@dataclasses.dataclass
class ShardCheck:
  """The verdict on one shard; `problem` is "" when it is intact."""
  video: str            # manifest key, e.g. 'DHF1K/601'
  shard: pathlib.Path
  method: str           # BY_SHA256 or BY_RECORDS
  problem: str = ""


def _read_every_record(path: pathlib.Path, expected: int) -> str:
  """"" or what is wrong with a shard whose manifest has no checksum."""
  try:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      count = reader.num_records()
      if count != expected:
        return f"{count} records, the manifest lists {expected}"
      for start in range(0, count, _RECORDS_PER_READ):
        reader.read(start, min(start + _RECORDS_PER_READ, count))
    finally:
      reader.close()
  except RuntimeError as e:   # "Corrupted Riegeli/records file: ..."
    return f"unreadable: {e}"
  return ""


def check_shard(out_dir: os.PathLike, entry: manifest_lib.VideoEntry) -> ShardCheck:
  """Checks one video's shard by its recorded sha256 and size, else by
  reading every record (see the module docstring)."""
  path = pathlib.Path(out_dir) / manifest_lib.SHARD_DIR / entry.shard
  check = ShardCheck(entry.key, path, BY_SHA256 if entry.shard_sha256 else BY_RECORDS)
  if not path.is_file():
    check.problem = "missing"
  elif check.method == BY_RECORDS:
    check.problem = _read_every_record(path, entry.num_records)
  elif (size := path.stat().st_size) != entry.shard_bytes:
    # Cheaper than hashing, and says what happened (a truncated copy...).
    check.problem = f"{size} bytes, the conversion wrote {entry.shard_bytes}"
  else:
    digest, _ = shards.file_checksum(path)
    if digest != entry.shard_sha256:
      check.problem = (f"sha256 {digest[:16]}..., the conversion wrote "
                       f"{entry.shard_sha256[:16]}... (same size: bytes changed)")
  return check


def verify(out_dir: os.PathLike, workers: int = 4, progress: bool = True
           ) -> list[ShardCheck]:
  """One `ShardCheck` per video of OUT/manifest.json, in manifest order.

  `workers` threads check shards side by side (hashing and the reader
  release the GIL). Raises FileNotFoundError / ValueError for a missing or
  foreign manifest (see `manifest.load_manifest`).
  """
  manifest = manifest_lib.load_manifest(out_dir)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool, tqdm.tqdm(
      total=len(manifest.videos), unit="shard", desc="verify", dynamic_ncols=True,
      disable=not progress) as bar:
    futures = [pool.submit(check_shard, out_dir, entry) for entry in manifest.videos]
    for _ in concurrent.futures.as_completed(futures):
      bar.update(1)
    checks = [f.result() for f in futures]
  return checks


def report(out_dir: os.PathLike, checks: list[ShardCheck]) -> str:
  """The summary line, the table of damaged shards and the fix."""
  bad = [c for c in checks if c.problem]
  by_records = sum(c.method == BY_RECORDS for c in checks)
  lines = [f"{out_dir}: {len(checks)} shards, {len(checks) - by_records} checked by sha256 "
           f"and size, {by_records} by reading every record; {len(bad)} damaged"]
  if by_records:
    lines.append(f"  {by_records} manifest entries have no shard checksum (converted before "
                 "they were recorded): their records were read instead, which finds damaged "
                 "chunks but not every change; convert again to record checksums")
  if bad:
    width = max(len(str(c.shard)) for c in bad)
    video_width = max(len("video"), *(len(c.video) for c in bad))
    lines.append(f"  {'shard':<{width}}  {'video':<{video_width}}  problem")
    lines += [f"  {str(c.shard):<{width}}  {c.video:<{video_width}}  {c.problem}" for c in bad]
    lines.append(f"Fix: delete the damaged shards and re-run `python -m data_prep convert "
                 f"--resume --dst {out_dir} ...` with the same --src and flags (only those "
                 f"videos are converted again), or copy them again from an intact copy")
  return "\n".join(lines)


def run(out, workers: int, progress: bool = True) -> int:
  """CLI entry: prints the report; 0 when every shard is intact, else 1."""
  checks = verify(out, workers, progress=progress)
  print(report(out, checks))
  return 1 if any(c.problem for c in checks) else 0
