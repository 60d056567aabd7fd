"""ArrayRecord shards: one file per video, written atomically, read via grain.

Each shard `OUT/shards/<video>.array_record` holds the records listed in
`manifest.VideoEntry`: one per frame (a `tf.train.Example` holding the image
and, for videos with maps, that frame's ground truth; `frame_record`), then
the audio chunks (raw samples), written with `group_size:1` so that any
record is read alone. The frame records are what TFDS reads
(`prep/tfds_metadata.py`); the Example wire format is written and read here
without protobuf or TensorFlow.
`ShardStore` reads them through a single `grain.sources.ArrayRecordDataSource`;
a shard that cannot be read back raises `DamagedShardError` naming the file,
its video and the fix. `commit` returns the shard's sha256 and size, which the
manifest records for `python -m data_prep verify`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import signal
from typing import Sequence

import grain
import numpy as np
from array_record.python import array_record_module
from PIL import Image

from diffsal_jax.data import atomic_files
from diffsal_jax.data import image_rules
from diffsal_jax.data import manifest as manifest_lib

WRITER_OPTIONS = "group_size:1,uncompressed"   # payloads are already compressed
# Test-only: SIGKILL this process after writing that many records (simulates
# a crash in the middle of a shard; see tests/test_data_prep.py).
KILL_HOOK_ENV = "DATA_PREP_TEST_KILL_AFTER_RECORDS"
_records_written_in_process = 0


class DamagedShardError(RuntimeError):
  """A shard whose records cannot be read back (truncated copy, disk error).

  The message names the shard, its video and the fix; the reader's own error
  (e.g. "Corrupted Riegeli/records file: ...") is chained and quoted.
  A RuntimeError, as the ArrayRecord reader's errors are.
  """


def damaged_shard_message(shard: os.PathLike, video_key: str, out_dir: os.PathLike,
                          problem: str) -> str:
  """The error text for a damaged shard: what, where, and the two fixes."""
  return (f"{shard} (video {video_key}) is damaged: {problem}. Fix: delete it and re-run "
          f"`python -m data_prep convert --resume --dst {out_dir} ...` with the same --src "
          f"and flags, or copy it again from an intact copy; `python -m data_prep verify "
          f"{out_dir}` checks every shard")


def file_checksum(path: os.PathLike) -> tuple[str, int]:
  """(sha256 hex digest, size in bytes) of a file, read in chunks.

  hashlib.file_digest reads 256 KiB at a time and releases the GIL while
  hashing, so threads can check several shards at once.
  """
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256")
    return digest.hexdigest(), f.tell()


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1   # int64 as protobuf writes it (two's complement)
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _read_varint(data, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos += 1
    if byte < 0x80:
      return value, pos
    shift += 7


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: dict[str, list[bytes] | int]) -> bytes:
  """A `tf.train.Example` in protobuf wire format, written without protobuf.

  A list of byte strings becomes a `bytes_list`, an int a one-value
  `int64_list`. Keys are written sorted, as TFDS's own serializer does.
  """
  entries = []
  for name in sorted(features):
    value = features[name]
    if isinstance(value, int):
      inner = _length_delimited(1, _varint(value))          # Int64List.value, packed
      feature = _length_delimited(3, inner)                 # Feature.int64_list
    else:
      inner = b"".join(_length_delimited(1, bytes(v)) for v in value)   # BytesList.value
      feature = _length_delimited(1, inner)                 # Feature.bytes_list
    entry = _length_delimited(1, name.encode()) + _length_delimited(2, feature)
    entries.append(_length_delimited(1, entry))             # Features.feature (map entry)
  return _length_delimited(1, b"".join(entries))            # Example.features


def _fields(data, start: int, end: int):
  """Yields (field number, payload memoryview or int) of a message's bytes."""
  pos = start
  while pos < end:
    tag, pos = _read_varint(data, pos)
    if tag & 7 == 2:
      size, pos = _read_varint(data, pos)
      yield tag >> 3, data[pos:pos + size]
      pos += size
    elif tag & 7 == 0:
      value, pos = _read_varint(data, pos)
      yield tag >> 3, value
    else:
      raise ValueError(f"unexpected protobuf wire type {tag & 7} in a shard record")


def decode_example(record: bytes) -> dict[str, list[memoryview] | list[int]]:
  """Inverse of `encode_example`: name -> byte strings (views into `record`,
  no copy) or ints. Raises ValueError for a record that is not such an Example."""
  view, features = memoryview(record), {}
  for field, example in _fields(view, 0, len(view)):
    if field != 1 or isinstance(example, int):
      raise ValueError("not a data_prep frame record (no Example.features)")
    for _, entry in _fields(example, 0, len(example)):
      name, feature = None, None
      for number, value in _fields(entry, 0, len(entry)):
        if number == 1:
          name = bytes(value).decode()
        elif number == 2:
          feature = value
      values = []
      for kind, lst in _fields(feature, 0, len(feature)):
        for _, item in _fields(lst, 0, len(lst)):
          if kind == 1:
            values.append(item)
          elif kind == 3:   # packed int64 varints
            pos = 0
            while pos < len(item):
              number, pos = _read_varint(item, pos)
              values.append(number - (1 << 64) if number >= 1 << 63 else number)
          else:
            raise ValueError(f"unsupported Feature kind {kind} in a shard record")
      features[name] = values
  return features


def frame_record(key: str, frame: int, image: bytes, ground_truth: dict[str, bytes] | None
                 ) -> bytes:
  """The record of one frame: its image and, for videos with maps, its ground truth.

  `ground_truth`: 'map' (the PNG of the uint8 (H, W) map at model size),
  'map_orig' (the release's map file, byte for byte), 'fix' (int32 (K, 2)
  (row, col) fixations at original size, little-endian bytes). Features:
  image, map and map_orig (lists of 0 or 1 byte strings), fixations, video
  (utf-8 key) and frame (1-based int); `tfds_metadata.frame_features`
  describes them to TFDS.
  """
  truth = ground_truth or {}
  return encode_example({
      "image": [image],
      "map": [truth["map"]] if truth else [],
      "map_orig": [truth["map_orig"]] if truth else [],
      "fixations": [truth.get("fix", b"")],
      "video": [key.encode()],
      "frame": int(frame)})


class ShardWriter:
  """Writes one shard to `atomic_files.temp_path(path)`; `commit` fsyncs and
  renames it.

  A crash before `commit` leaves only a temp file (never a partial shard);
  `convert --resume` deletes such leftovers and redoes the video.
  """

  def __init__(self, path: os.PathLike):
    self.path = pathlib.Path(path)
    self._tmp = atomic_files.temp_path(self.path)
    self._writer = array_record_module.ArrayRecordWriter(str(self._tmp), WRITER_OPTIONS)
    self.num_records = 0

  def write(self, record: bytes) -> int:
    """Appends a record; returns its key within the shard."""
    global _records_written_in_process
    self._writer.write(record)
    self.num_records += 1
    _records_written_in_process += 1
    if os.environ.get(KILL_HOOK_ENV) == str(_records_written_in_process):
      os.kill(os.getpid(), signal.SIGKILL)
    return self.num_records - 1

  def commit(self) -> tuple[str, int]:
    """Closes, fsyncs and renames the shard into place; returns its
    `file_checksum` (taken from the temp file, so of the bytes as written)."""
    self._writer.close()
    checksum = file_checksum(self._tmp)
    fd = os.open(self._tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(self._tmp, self.path)
    dir_fd = os.open(self.path.parent, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)
    return checksum

  def abort(self) -> None:
    self._writer.close()
    self._tmp.unlink(missing_ok=True)


@dataclasses.dataclass
class GroundTruth:
  map: np.ndarray            # uint8 (H, W) at model resolution
  points: np.ndarray         # int32 (K, 2) fixations (row, col) at original resolution
  map_orig: bytes            # the release's map file, byte for byte


class ShardStore:
  """Random access to converted videos (all, or the `videos` indices only)."""

  def __init__(self, out_dir: os.PathLike, manifest: manifest_lib.Manifest | None = None,
               videos: Sequence[int] | None = None):
    self.out_dir = pathlib.Path(out_dir)
    self.manifest = manifest or manifest_lib.load_manifest(out_dir)
    chosen = range(len(self.manifest.videos)) if videos is None else sorted(set(videos))
    paths, self._base, total = [], {}, 0
    for index in chosen:
      video = self.manifest.videos[index]
      shard = self.out_dir / manifest_lib.SHARD_DIR / video.shard
      if not shard.is_file():
        raise FileNotFoundError(f"{shard} (video {video.key}) is missing: re-run "
                                f"`python -m data_prep convert --resume --dst {self.out_dir} ...`")
      # A stat per shard finds a truncated copy before any work starts; other
      # damage shows when a record is read (chunk hashes) or with `verify`.
      size = shard.stat().st_size
      if video.shard_bytes >= 0 and size != video.shard_bytes:
        raise DamagedShardError(damaged_shard_message(
            shard, video.key, self.out_dir,
            f"{size} bytes, the conversion wrote {video.shard_bytes}"))
      # The `[start:end]` suffix spares opening every file at start-up.
      paths.append(f"{shard}[0:{video.num_records}]")
      self._base[index], total = total, total + video.num_records
    if not paths:
      raise ValueError(f"no videos selected from {self.out_dir}")
    self._source = grain.sources.ArrayRecordDataSource(paths)

  def shard_path(self, video: int) -> pathlib.Path:
    return self.out_dir / manifest_lib.SHARD_DIR / self.manifest.videos[video].shard

  def _read(self, video: int, keys: Sequence[int]) -> list[bytes]:
    """Records `keys` (global keys, all within `video`'s shard)."""
    try:
      # One record at a time: `__getitems__` starts a thread pool per call
      # (1.18 ms for a clip's 4 frames against 24 us this way, 2026-12-08),
      # and a clip's records all sit in one shard, so it has nothing to
      # run in parallel.
      return [self._source[key] for key in keys]
    except RuntimeError as e:   # the reader's "Corrupted Riegeli/records file: ..."
      raise DamagedShardError(damaged_shard_message(
          self.shard_path(video), self.manifest.videos[video].key, self.out_dir, str(e))) from e

  def raw_records(self, video: int) -> list[bytes]:
    """Every record of a video's shard, as stored (for checks and debugging)."""
    count = self.manifest.videos[video].num_records
    return self._read(video, range(self._base[video], self._base[video] + count))

  def encoded_frames(self, video: int, frames: Sequence[int]) -> list[bytes]:
    """Encoded images of 1-based `frames` (duplicates are read once)."""
    unique = sorted(set(frames))
    records = self._read(video, [self._base[video] + f - 1 for f in unique])
    data = {f: decode_example(r)["image"][0] for f, r in zip(unique, records)}
    return [data[f] for f in frames]

  def frames_uint8(self, video: int, frames: Sequence[int],
                   out: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, written into `out` if given; each distinct
    frame is decoded once."""
    encoded = self.encoded_frames(video, frames)
    if out is None:
      out = np.empty((len(frames), *self.manifest.image_hw, 3), np.uint8)
    decoded = {}
    for i, (frame, data) in enumerate(zip(frames, encoded)):
      if frame in decoded:
        out[i] = out[decoded[frame]]
      else:
        image_rules.decode_rgb_into(data, out[i])
        decoded[frame] = i
    return out

  def ground_truth(self, video: int, frame: int) -> GroundTruth:
    entry = self.manifest.videos[video]
    if not entry.has_maps:
      raise ValueError(f"video {entry.key} has no maps in {self.out_dir} (test split)")
    (record,) = self._read(video, [self._base[video] + frame - 1])
    fields = decode_example(record)
    return GroundTruth(
        map=np.asarray(Image.open(io.BytesIO(fields["map"][0]))),
        points=np.frombuffer(fields["fixations"][0], np.int32).reshape(-1, 2),
        map_orig=bytes(fields["map_orig"][0]))

  def audio(self, video: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """float32 samples [start, stop) of the video's wav, as `audio.load_wav` gave them."""
    entry = self.manifest.videos[video]
    if entry.audio is None:
      raise ValueError(f"video {entry.key} has no audio in {self.out_dir}")
    info = entry.audio
    stop = info["num_samples"] if stop is None else min(stop, info["num_samples"])
    start = max(0, min(start, stop))
    chunk = info["chunk_samples"]
    first, last = start // chunk, max(start, stop - 1) // chunk
    keys = [self._base[video] + entry.audio_offset + c for c in range(first, last + 1)]
    raw = b"".join(self._read(video, keys)) if stop > start else b""
    samples = np.frombuffer(raw, info["dtype"])[start - first * chunk:stop - first * chunk]
    if info["dtype"] == "int16":
      return samples.astype(np.float32) / np.float32(32768.0)
    return samples.astype(np.float32)
