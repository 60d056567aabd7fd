"""The JSON manifest written next to the shards (`OUT/manifest.json`).

It lists every converted video (frame count, fps, original size, where its
records sit in its shard, audio format, checksum of its source files), the
DHF1K splits or the AV folds, and the problems met during conversion.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from diffsal_jax.data import atomic_files

FORMAT = "diffsal-arrayrecord-v2"   # v2: frame records are tf.train.Examples
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"


@dataclasses.dataclass
class VideoEntry:
  """One converted video.

  Records of its shard: frame f (1..N) at key f - 1, a `tf.train.Example`
  with the encoded image and, when `has_maps`, the frame's ground truth (see
  `shards.frame_record`); when it has audio, `audio['num_chunks']` chunks of
  `audio['chunk_samples']` raw samples from key `audio_offset` (= N).
  """
  key: str                   # 'DHF1K/1', 'AVAD/V1_Speech1'
  dataset: str               # 'DHF1K' or the AV folder name
  name: str                  # name in the release
  num_frames: int
  fps: float
  orig_hw: tuple[int, int]   # original frame size (maps, fixations live here)
  has_maps: bool
  has_fixations: bool
  shard: str                 # file name under OUT/shards/
  num_records: int
  audio_offset: int = -1
  audio: dict[str, Any] | None = None   # sample_rate, num_samples, dtype, chunk_samples, num_chunks
  empty_map_frames: list[int] = dataclasses.field(default_factory=list)
  source_files: int = 0
  source_sha256: str = ""
  # sha256 and size of the shard file as written (`python -m data_prep verify`);
  # "" / -1 in manifests written before they were recorded.
  shard_sha256: str = ""
  shard_bytes: int = -1

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "VideoEntry":
    data = dict(data)
    data["orig_hw"] = tuple(data["orig_hw"])
    return cls(**data)


@dataclasses.dataclass
class Manifest:
  dataset: str                                   # 'dhf1k' or 'av'
  image: dict[str, Any]                          # height, width, format
  videos: list[VideoEntry]
  splits: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  folds: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
  fold_lists: dict[str, str] = dataclasses.field(default_factory=dict)
  issues: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  format: str = FORMAT

  @property
  def image_hw(self) -> tuple[int, int]:
    return (int(self.image["height"]), int(self.image["width"]))

  def index_of(self) -> dict[str, int]:
    return {v.key: i for i, v in enumerate(self.videos)}

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def save_manifest(out_dir: os.PathLike, manifest: Manifest) -> None:
  """Writes OUT/manifest.json atomically (`atomic_files.write_json`)."""
  atomic_files.write_json(pathlib.Path(out_dir) / MANIFEST_NAME,
                          manifest.to_json(), indent=1)


def load_manifest(out_dir: os.PathLike) -> Manifest:
  """Reads OUT/manifest.json; errors say how to produce it."""
  path = pathlib.Path(out_dir) / MANIFEST_NAME
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: run `python -m data_prep convert --dst {out_dir} ...` first")
  data = json.loads(path.read_text())
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}; "
                     "re-run the conversion with this version of data_prep")
  data["videos"] = [VideoEntry.from_json(v) for v in data["videos"]]
  return Manifest(**data)
