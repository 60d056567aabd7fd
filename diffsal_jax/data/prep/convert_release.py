"""`python -m data_prep convert`: all videos of a release, in worker processes.

Each finished video leaves `shards/<video>.array_record` (renamed into place
only when complete) and then `shards/<video>.json` (its manifest entry). A
video counts as done only when both exist, so `--resume` after a crash redoes
the interrupted videos and keeps the others. The manifest, the TFDS
description of the same shards (`tfds_metadata`) and a report of all
problems are written at the end, atomically.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import pathlib
import time
import types

import tqdm

from diffsal_jax.data.prep import convert_video
from diffsal_jax.data.prep import tfds_metadata
from diffsal_jax.data import atomic_files
from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data.issues import FIXES, Issue

REPORT_NAME = "conversion_report.json"


def _sidecar(shard_dir: pathlib.Path, key: str) -> pathlib.Path:
  return shard_dir / (convert_video.shard_name(key)[:-len(".array_record")] + ".json")


def _save_result(shard_dir, result: convert_video.VideoResult, options: convert_video.Options) -> None:
  if result.entry is None:
    return
  atomic_files.write_json(_sidecar(shard_dir, result.key), {
      "format": manifest_lib.FORMAT,
      "options": dataclasses.asdict(options),
      "entry": dataclasses.asdict(result.entry),
      "issues": [dataclasses.asdict(i) for i in result.issues]}, indent=1)


def _load_done(shard_dir: pathlib.Path, release, options) -> dict[str, convert_video.VideoResult]:
  """Videos finished by an earlier run (shard and sidecar both present)."""
  done = {}
  for src in release.videos:
    path = _sidecar(shard_dir, src.key)
    if not path.is_file():
      continue
    data = json.loads(path.read_text())
    if data.get("format") != manifest_lib.FORMAT:
      raise SystemExit(f"{path} was written in shard format {data.get('format', 'v1')!r}, "
                       f"not {manifest_lib.FORMAT!r}: convert into an empty --dst")
    if data["options"] != dataclasses.asdict(options):
      raise SystemExit(f"{path} was written with {data['options']}, not "
                       f"{dataclasses.asdict(options)}: resume with the same --height, "
                       "--width and --image_format, or convert into an empty --dst")
    entry = manifest_lib.VideoEntry.from_json(data["entry"])
    if (shard_dir / entry.shard).is_file():
      done[src.key] = convert_video.VideoResult(src.key, entry, [Issue(**i) for i in data["issues"]])
  return done


def _prepare_dst(dst: pathlib.Path, resume: bool) -> pathlib.Path:
  shard_dir = dst / manifest_lib.SHARD_DIR
  if shard_dir.is_dir() and any(shard_dir.iterdir()) and not resume:
    raise SystemExit(f"{dst} already holds a conversion: pass --resume to finish it, "
                     "or choose an empty --dst")
  shard_dir.mkdir(parents=True, exist_ok=True)
  for leftover in shard_dir.glob("*.tmp-*"):   # from an interrupted run
    leftover.unlink()
  return shard_dir


def _convert_task(task) -> convert_video.VideoResult:
  src, shard_dir, options = task
  result = convert_video.convert_video(src, shard_dir, options)
  _save_result(shard_dir, result, options)
  return result


def _run_tasks(tasks, workers: int):
  """Yields results as videos finish (in-process when workers == 1)."""
  if workers <= 1 or len(tasks) <= 1:
    yield from map(_convert_task, tasks)
    return
  # spawn: no fork of a process that may hold threads (grain, PyAV).
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    yield from pool.imap_unordered(_convert_task, tasks)


def _build_manifest(release, results, options) -> manifest_lib.Manifest:
  converted = {r.key for r in results.values() if r.entry is not None}
  issues = list(release.issues) + [i for r in results.values() for i in r.issues]
  return manifest_lib.Manifest(
      dataset=release.family,
      image={"height": options.height, "width": options.width, "format": options.image_format},
      videos=[results[v.key].entry for v in release.videos if v.key in converted],
      splits={s: [k for k in keys if k in converted] for s, keys in release.splits.items()},
      folds={f: {s: [k for k in keys if k in converted] for s, keys in splits.items()}
             for f, splits in release.folds.items()},
      fold_lists=release.fold_lists,
      issues=[dataclasses.asdict(i) for i in issues])


def _print_summary(manifest, counts, elapsed: float, dst: pathlib.Path) -> None:
  size = sum(p.stat().st_size for p in (dst / manifest_lib.SHARD_DIR).glob("*.array_record"))
  print(f"\nconverted {counts['new']} videos, kept {counts['resumed']} from an earlier run, "
        f"left out {counts['failed']}; {sum(v.num_frames for v in manifest.videos)} frames, "
        f"{size / 2**20:.1f} MiB of shards, {elapsed:.1f} s")
  issues = [Issue(**i) for i in manifest.issues]
  # Problems (videos left out) first, then notes (corrected or flagged).
  issues.sort(key=lambda i: not i.fatal)
  for (is_note, kind), n in sorted(collections.Counter((not i.fatal, i.kind)
                                                       for i in issues).items()):
    print(f"  {n:5d} x {kind} ({'note' if is_note else 'problem'}): {FIXES[kind]}")
  for issue in issues[:50]:
    print(f"  {issue}")
  if len(issues) > 50:
    print(f"  ... {len(issues) - 50} more in {dst / REPORT_NAME}")


def run(args) -> int:
  """Converts with the CLI's flags (`args.dataset`, `.src`, `.dst`, ... as
  attributes); returns the exit status: 1 when some input was bad (a video or
  fold-list line left out) unless --skip_bad; notes alone give 0."""
  start = time.time()
  options = convert_video.Options(args.height, args.width, args.image_format)
  release = layouts.discover(args.dataset, args.src, dhf1k_fps=args.dhf1k_fps)
  dst = pathlib.Path(args.dst)
  shard_dir = _prepare_dst(dst, args.resume)
  results = _load_done(shard_dir, release, options) if args.resume else {}
  counts = {"resumed": len(results), "new": 0, "failed": 0}
  tasks = [(src, shard_dir, options) for src in release.videos if src.key not in results]
  with tqdm.tqdm(total=len(tasks), unit="video", desc="convert", dynamic_ncols=True) as bar:
    for result in _run_tasks(tasks, args.workers):
      results[result.key] = result
      counts["new" if result.entry else "failed"] += 1
      if result.entry is None:
        tqdm.tqdm.write(f"left out {result.key}: {result.issues[-1]}")
      bar.update(1)
  manifest = _build_manifest(release, results, options)
  manifest_lib.save_manifest(dst, manifest)
  tfds_metadata.write(dst, manifest)
  atomic_files.write_json(dst / REPORT_NAME, {
      "counts": counts, "problems": sum(i["fatal"] for i in manifest.issues),
      "notes": sum(not i["fatal"] for i in manifest.issues), "issues": manifest.issues,
      "seconds": time.time() - start}, indent=1)
  _print_summary(manifest, counts, time.time() - start, dst)
  problems = [i for i in manifest.issues if i["fatal"]]
  if problems and not args.skip_bad:
    print(f"exit 1: {len(problems)} problems (see above and {dst / REPORT_NAME}); "
          "pass --skip_bad to accept the output without the bad videos")
    return 1
  return 0


def convert_release(dataset: str, src, dst, *, height: int = 224, width: int = 384,
                    image_format: str = "jpeg", workers: int = 1, resume: bool = False,
                    skip_bad: bool = False, dhf1k_fps: float = layouts.DHF1K_FPS) -> int:
  """Python entry point with the CLI's flags; returns the exit status."""
  return run(types.SimpleNamespace(
      dataset=dataset, src=src, dst=dst, height=height, width=width,
      image_format=image_format, workers=workers, resume=resume, skip_bad=skip_bad,
      dhf1k_fps=dhf1k_fps))
