"""Converts one video of a raw release into its ArrayRecord shard.

`convert_video` checks the files first (missing frames, count mismatches,
missing wav), then streams frames, ground truth and audio into a
`shards.ShardWriter`, which only becomes a shard on `commit`. Any bad input
raises `issues.BadInput` naming the file; the shard is then abandoned and the
other videos are unaffected. The orchestration lives in `convert_run.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import re

import av
import numpy as np
import scipy.io

from data_prep import image_rules
from data_prep import layouts
from data_prep import manifest as manifest_lib
from data_prep import shards
from data_prep.issues import BadInput, Issue

AUDIO_CHUNK_SAMPLES = 65536   # a 16-frame window (<= 35280 samples) spans <= 2 chunks


@dataclasses.dataclass(frozen=True)
class Options:
  height: int
  width: int
  image_format: str

  @property
  def size_hw(self) -> tuple[int, int]:
    return (self.height, self.width)


@dataclasses.dataclass
class VideoResult:
  key: str
  entry: manifest_lib.VideoEntry | None     # None when the video was left out
  issues: list[Issue]


def shard_name(key: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__")) + ".array_record"


class _SourceReader:
  """Reads a video's files, hashing every byte, turning failures into issues."""

  def __init__(self, src: layouts.VideoSource):
    self.src = src
    self.sha = hashlib.sha256()
    self.files = 0

  def fail(self, kind: str, path, detail: str):
    raise BadInput(Issue(kind, str(path), detail, video=self.src.key))

  def read(self, path: pathlib.Path, kind: str = "missing_file") -> bytes:
    try:
      data = path.read_bytes()
    except OSError as e:
      self.fail(kind, path, f"cannot read ({e.strerror or e})")
    self.sha.update(path.name.encode() + len(data).to_bytes(8, "little") + data)
    self.files += 1
    return data

  def image(self, path: pathlib.Path, kind: str = "missing_file"):
    data = self.read(path, kind)
    try:
      return image_rules.open_image(data), data
    except Exception as e:   # PIL raises many types for corrupt or truncated files
      self.fail("corrupt_image", path, f"cannot decode ({type(e).__name__}: {e})")


def _check_counts(reader: _SourceReader, num_frames: int) -> None:
  """Maps and fixations must come one per frame (when the video has them)."""
  src = reader.src
  for directory, pattern, label in ((src.maps_dir, src.map_pattern, "maps"),
                                    (src.fix_dir, src.fix_pattern, "fixation files")):
    if directory is None:
      continue
    present = layouts.numbered_files(directory, pattern)
    if len(present) != num_frames:
      reader.fail("count_mismatch", directory, f"{len(present)} {label} for {num_frames} frames")
    missing = sorted(set(range(1, num_frames + 1)) - present)
    if missing:
      reader.fail("missing_file", directory / pattern.format(missing[0]),
                  f"{len(missing)} {label} missing")


def _check_files(reader: _SourceReader) -> int:
  """Checks what can be checked before decoding; returns the frame count (0: AVI)."""
  src = reader.src
  if src.wav_path is not None and not src.wav_path.is_file():
    reader.fail("bad_audio", src.wav_path, "wav file missing")
  if src.avi_path is not None:
    return 0
  present = layouts.numbered_files(src.frames_dir, src.frame_pattern)
  num_frames = src.num_frames or len(present)
  if num_frames == 0:
    reader.fail("missing_frame", src.frames_dir, "no frames found")
  missing = sorted(set(range(1, num_frames + 1)) - present)
  if missing:
    reader.fail("missing_frame", src.frame_path(missing[0]),
                f"{len(missing)} of {num_frames} frames missing")
  _check_counts(reader, num_frames)
  return num_frames


def _iter_frames(reader: _SourceReader, num_frames: int):
  """Yields (PIL image, fps or None) per frame, from the AVI or the image files."""
  src = reader.src
  if src.avi_path is None:
    for k in range(1, num_frames + 1):
      yield reader.image(src.frame_path(k), "missing_frame")[0], None
    return
  data = reader.read(src.avi_path, "bad_video")
  try:
    with av.open(io.BytesIO(data)) as container:
      stream = container.streams.video[0]
      fps = float(stream.average_rate) if stream.average_rate else None
      for frame in container.decode(stream):
        yield frame.to_image(), fps
  except av.error.FFmpegError as e:
    reader.fail("bad_video", src.avi_path, f"cannot decode ({e})")


def _write_frames(reader, writer, options: Options, num_frames: int):
  """Writes frames 1..N; returns (N, fps, frame size)."""
  count, fps, frame_hw = 0, reader.src.fps, None
  for img, stream_fps in _iter_frames(reader, num_frames):
    frame_hw = frame_hw or (img.height, img.width)
    fps = stream_fps or fps
    array = image_rules.frame_to_model_size(img, reader.src.family, options.size_hw)
    writer.write(image_rules.encode_image(array, options.image_format))
    count += 1
  if count == 0:
    reader.fail("bad_video", reader.src.avi_path or reader.src.frames_dir, "no frames decoded")
  return count, fps, frame_hw


def _fixation_points(reader: _SourceReader, k: int, map_hw) -> np.ndarray:
  path = reader.src.fix_path(k)
  if path.suffix == ".mat":
    data = reader.read(path)
    try:
      binary = np.asarray(scipy.io.loadmat(io.BytesIO(data))["eyeMap"]) > 0
    except Exception as e:   # bad .mat, v7.3 (HDF5) file, no eyeMap variable
      reader.fail("bad_fixations", path, f"cannot read variable eyeMap ({e})")
  else:
    img, _ = reader.image(path)
    binary = np.asarray(img.convert("L")) > 0
  if binary.shape != tuple(map_hw):
    reader.fail("bad_fixations", path, f"fixation map {binary.shape} but saliency map {map_hw}")
  return image_rules.fixation_points(binary)


def _write_ground_truth(reader, writer, options: Options, num_frames: int, issues):
  """Writes one record per frame; returns (original map size, empty-map frames)."""
  map_hw, empty = None, []
  for k in range(1, num_frames + 1):
    path = reader.src.map_path(k)
    img, map_bytes = reader.image(path)
    map_hw = map_hw or (img.height, img.width)
    model_map = image_rules.map_to_model_size(img, options.size_hw)
    if not model_map.any():
      empty.append(k)
      issues.append(Issue("empty_map", str(path), "all-zero map", reader.src.key, fatal=False))
    points = (_fixation_points(reader, k, (img.height, img.width))
              if reader.src.fix_dir is not None else np.zeros((0, 2), np.int32))
    writer.write(shards.pack_fields({
        "map": image_rules.encode_image(model_map, "png"),
        "map_orig": map_bytes,
        "fix": points.astype(np.int32).tobytes()}))
  return map_hw, empty


def _write_audio(reader: _SourceReader, writer) -> dict:
  from diffsal_jax import audio   # pylint: disable=g-import-not-at-top (heavy import, AV only)
  path = reader.src.wav_path
  reader.read(path, "bad_audio")   # for the checksum
  try:
    wave, sample_rate = audio.load_wav(str(path))
  except audio.AudioError as e:
    reader.fail("bad_audio", path, str(e))
  wave = np.asarray(wave, np.float32).reshape(-1)
  if wave.size == 0:
    reader.fail("bad_audio", path, "no samples")
  as_int = np.round(wave * 32768.0)
  lossless = as_int.min() >= -32768 and as_int.max() <= 32767 and np.array_equal(
      as_int.astype(np.float32) / np.float32(32768.0), wave)
  samples = as_int.astype(np.int16) if lossless else wave   # int16 halves the size
  for start in range(0, samples.size, AUDIO_CHUNK_SAMPLES):
    writer.write(samples[start:start + AUDIO_CHUNK_SAMPLES].tobytes())
  return {"sample_rate": int(sample_rate), "num_samples": int(samples.size),
          "dtype": str(samples.dtype), "chunk_samples": AUDIO_CHUNK_SAMPLES,
          "num_chunks": -(-samples.size // AUDIO_CHUNK_SAMPLES)}


def _fill_video(reader, writer, options: Options, issues) -> manifest_lib.VideoEntry:
  src = reader.src
  num_frames, fps, frame_hw = _write_frames(reader, writer, options, _check_files(reader))
  entry = manifest_lib.VideoEntry(
      key=src.key, dataset=src.dataset, name=src.name, num_frames=num_frames, fps=fps,
      orig_hw=frame_hw, has_maps=src.maps_dir is not None,
      has_fixations=src.fix_dir is not None, shard=writer.path.name, num_records=0)
  if entry.has_maps:
    if src.avi_path is not None:
      _check_counts(reader, num_frames)
    entry.gt_offset = writer.num_records
    entry.orig_hw, entry.empty_map_frames = _write_ground_truth(
        reader, writer, options, num_frames, issues)
  if src.wav_path is not None:
    entry.audio_offset = writer.num_records
    entry.audio = _write_audio(reader, writer)
  entry.num_records = writer.num_records
  entry.source_files, entry.source_sha256 = reader.files, reader.sha.hexdigest()
  return entry


def convert_video(src: layouts.VideoSource, shard_dir: pathlib.Path,
                  options: Options) -> VideoResult:
  """Writes `shard_dir/<shard_name>`; bad input gives a result without entry."""
  writer = shards.ShardWriter(shard_dir / shard_name(src.key))
  issues: list[Issue] = []
  try:
    entry = _fill_video(_SourceReader(src), writer, options, issues)
  except BadInput as e:
    writer.abort()
    return VideoResult(src.key, None, issues + [e.issue])
  except BaseException:
    writer.abort()
    raise
  entry.shard_sha256, entry.shard_bytes = writer.commit()
  return VideoResult(src.key, entry, issues)
