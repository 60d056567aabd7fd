"""Converts one video of a raw release into its ArrayRecord shard.

`convert_video` checks the files first (missing frames, frame counts by the
`release_files` rule, missing wav), then streams one record per frame (image
and ground truth, `shards.frame_record`) and the audio chunks into a
`shards.ShardWriter`, which only becomes a shard on `commit`. Any bad input
raises `issues.BadInput` naming the file; the shard is then abandoned and the
other videos are unaffected. The orchestration lives in `convert_release.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import re

import av
import numpy as np

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import release_files
from diffsal_jax.data import shards
from diffsal_jax.data.issues import BadInput, Issue

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
  """Reads a video's files, hashing every byte, turning failures into issues.

  `notes` collects the non-fatal issues (corrections and flags) of the video.
  """

  def __init__(self, src: layouts.VideoSource):
    self.src = src
    self.sha = hashlib.sha256()
    self.files = 0
    self.notes: list[Issue] = []
    self.frames: release_files.Numbered | None = None
    self.maps: release_files.Numbered | None = None
    self.fixations: release_files.Numbered | None = None

  def fail(self, kind: str, path, detail: str):
    raise BadInput(Issue(kind, str(path), detail, video=self.src.key))

  def note(self, kind: str, path, detail: str) -> None:
    self.notes.append(Issue(kind, str(path), detail, video=self.src.key, fatal=False))

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

  def index(self, directory, pattern: str, kind: str) -> release_files.Numbered:
    """Numbered files of `directory` (any zero padding, 0- or 1-based)."""
    try:
      numbered = release_files.index_numbered(directory, pattern, kind)
    except release_files.ReleaseError as e:
      self.fail(e.kind, e.path, e.detail)
    if numbered.zero_based:
      self.note("renumbered", directory, numbered.note())
    return numbered

  def reconcile(self, counts: dict[str, tuple[int, pathlib.Path]]) -> int:
    """Frames 1..N that every source has (`release_files` rule); notes a
    difference, refuses one beyond the sync slack."""
    where = min(counts.values(), key=lambda c: c[0])[1]   # the shortest source
    try:
      kept, note = release_files.reconcile_frame_counts(
          {label: n for label, (n, _) in counts.items()}, where)
    except release_files.ReleaseError as e:
      self.fail(e.kind, e.path, e.detail)
    if note:
      self.note("frame_count_adjusted", where, note)
    return kept


def _annotation_counts(reader: _SourceReader) -> dict[str, tuple[int, pathlib.Path]]:
  """Indexes the maps and fixation files; returns their frame counts."""
  src, counts = reader.src, {}
  if src.maps_dir is not None:
    reader.maps = reader.index(src.maps_dir, src.map_pattern, "missing_file")
    counts["maps"] = (reader.maps.count, src.maps_dir)
  if src.fix_dir is not None:
    reader.fixations = reader.index(src.fix_dir, src.fix_pattern, "missing_file")
    counts["fixation files"] = (reader.fixations.count, src.fix_dir)
  return counts


def _check_files(reader: _SourceReader) -> int:
  """Checks what can be checked before decoding; returns the number of frames
  to keep (for an AVI: at most that many, 0 for no limit)."""
  src = reader.src
  if src.wav_path is not None and not src.wav_path.is_file():
    reader.fail("bad_audio", src.wav_path, "wav file missing")
  counts = _annotation_counts(reader)
  if src.avi_path is not None:   # its frames are only counted by decoding
    return min((n for n, _ in counts.values()), default=0)
  reader.frames = reader.index(src.frames_dir, src.frame_pattern, "missing_frame")
  if reader.frames.count == 0:
    reader.fail("missing_frame", src.frames_dir, "no frames found")
  if src.num_frames:
    counts["in the fold list"] = (src.num_frames, src.frames_dir)
  counts = {"frames": (reader.frames.count, src.frames_dir), **counts}
  return reader.reconcile(counts)


def _iter_frames(reader: _SourceReader, num_frames: int):
  """Yields (PIL image or None, fps or None) per frame, from the AVI or the
  image files; AVI frames past `num_frames` (when > 0) are only counted."""
  src = reader.src
  if src.avi_path is None:
    for k in range(1, num_frames + 1):
      yield reader.image(reader.frames.path(k), "missing_frame")[0], None
    return
  data = reader.read(src.avi_path, "bad_video")
  try:
    with av.open(io.BytesIO(data)) as container:
      stream = container.streams.video[0]
      fps = float(stream.average_rate) if stream.average_rate else None
      for k, frame in enumerate(container.decode(stream), start=1):
        yield (frame.to_image() if not num_frames or k <= num_frames else None), fps
  except av.error.FFmpegError as e:
    reader.fail("bad_video", src.avi_path, f"cannot decode ({e})")


def _to_model_size(reader, function, img, path, *args) -> np.ndarray:
  try:
    return function(img, *args)
  except ValueError as e:   # float images, 32-bit values out of range
    reader.fail("bad_image_mode", path, str(e))


def _frame_images(reader, options: Options, num_frames: int):
  """Yields each frame's encoded image at model size, then returns (N, fps,
  frame size) (the generator's return value).

  For an AVI, N is settled here: its decoded frames vs the annotations by
  the `release_files` rule (frames past the annotations are decoded, counted
  and not yielded)."""
  src = reader.src
  written, decoded, fps, frame_hw = 0, 0, src.fps, None
  for img, stream_fps in _iter_frames(reader, num_frames):
    decoded += 1
    fps = stream_fps or fps
    if img is None:
      continue
    frame_hw = frame_hw or (img.height, img.width)
    array = _to_model_size(reader, image_rules.frame_to_model_size, img,
                           src.avi_path or reader.frames.path(decoded), src.family,
                           options.size_hw)
    yield image_rules.encode_image(array, options.image_format)
    written += 1
  if written == 0:
    reader.fail("bad_video", src.avi_path or src.frames_dir, "no frames decoded")
  if src.avi_path is not None and (reader.maps or reader.fixations):
    counts = {"decoded AVI frames": (decoded, src.avi_path)}
    for label, found in (("maps", reader.maps), ("fixation files", reader.fixations)):
      if found is not None:
        counts[label] = (found.count, found.directory)
    written = reader.reconcile(counts)   # <= frames yielded, so those are 1..N
  return written, fps, frame_hw


def _fixation_points(reader: _SourceReader, k: int, map_hw) -> np.ndarray:
  path = reader.fixations.path(k)
  if path.suffix.lower() == ".mat":
    data = reader.read(path)
    try:
      binary = release_files.read_fixation_mat(data, path)
    except release_files.ReleaseError as e:
      reader.fail(e.kind, e.path, e.detail)
  else:
    img, _ = reader.image(path)
    binary = image_rules.grey_unit(img) > 0
  if binary.shape != tuple(map_hw):
    reader.fail("bad_fixations", path, f"fixation map {binary.shape} but saliency map {map_hw}")
  return image_rules.fixation_points(binary)


def _ground_truth(reader, options: Options, k: int, state: dict) -> dict[str, bytes]:
  """Frame k's ground truth for `shards.frame_record`; records the original
  map size and empty-map frames in `state`."""
  path = reader.maps.path(k)
  img, map_bytes = reader.image(path)
  state.setdefault("map_hw", (img.height, img.width))
  model_map = _to_model_size(reader, image_rules.map_to_model_size, img, path,
                             options.size_hw)
  if not model_map.any():
    state["empty"].append(k)
    reader.note("empty_map", path, "all-zero map: frame kept, never a training target")
  points = (_fixation_points(reader, k, (img.height, img.width))
            if reader.fixations is not None else np.zeros((0, 2), np.int32))
  return {"map": image_rules.encode_image(model_map, "png"), "map_orig": map_bytes,
          "fix": points.astype(np.int32).tobytes()}


def _write_frames(reader, writer, options: Options, num_frames: int):
  """Writes one record per frame, its image plus (videos with maps) its
  ground truth; returns (N, fps, frame size, original map size or None,
  empty-map frames)."""
  src, state = reader.src, {"empty": []}
  images, k = _frame_images(reader, options, num_frames), 0
  while True:
    try:
      image = next(images)
    except StopIteration as done:
      count, fps, frame_hw = done.value
      break
    k += 1   # <= the annotations' count: `_check_files` capped num_frames there
    truth = _ground_truth(reader, options, k, state) if src.maps_dir is not None else None
    writer.write(shards.frame_record(src.key, k, image, truth))
  return count, fps, frame_hw, state.get("map_hw"), state["empty"]


def _write_audio(reader: _SourceReader, writer) -> dict:
  from diffsal_jax.data import audio   # pylint: disable=g-import-not-at-top (heavy import, AV only)
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


def _fill_video(reader, writer, options: Options) -> manifest_lib.VideoEntry:
  src = reader.src
  num_frames, fps, frame_hw, map_hw, empty = _write_frames(
      reader, writer, options, _check_files(reader))
  entry = manifest_lib.VideoEntry(
      key=src.key, dataset=src.dataset, name=src.name, num_frames=num_frames, fps=fps,
      orig_hw=map_hw or frame_hw, has_maps=src.maps_dir is not None,
      has_fixations=src.fix_dir is not None, shard=writer.path.name, num_records=0,
      empty_map_frames=empty)
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
  reader = _SourceReader(src)
  try:
    entry = _fill_video(reader, writer, options)
  except BadInput as e:
    writer.abort()
    return VideoResult(src.key, None, reader.notes + [e.issue])
  except BaseException:
    writer.abort()
    raise
  entry.shard_sha256, entry.shard_bytes = writer.commit()
  return VideoResult(src.key, entry, reader.notes)
