"""What the evaluation asks of ground truth, whatever holds it.

The evaluation only talks to a `GroundTruthSource`: per video, the frame ids
and readers for the continuous map and the binary fixation map of one frame.
Its readers: the raw releases (`release_ground_truth`, which also picks the
reader for a --data folder with `open_ground_truth`) and the project's
ArrayRecord shards (`shard_ground_truth`). Sources must be picklable (they
are sent to worker processes).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts

# --dataset names: DHF1K, then the audio-visual sets (`layouts.AV_FOLDERS`).
DATASETS = ("dhf1k",) + tuple(sorted(layouts.AV_FOLDERS))


def release_folder(dataset: str) -> str:
  """Folder (and manifest dataset) name of an evaluation `dataset` name:
  'dhf1k' -> 'DHF1K', 'avad' -> 'AVAD', ... Raises ValueError for a name
  not in DATASETS."""
  if dataset == "dhf1k":
    return "DHF1K"
  if dataset not in layouts.AV_FOLDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from {list(DATASETS)}")
  return layouts.AV_FOLDERS[dataset]


def read_grey(path) -> np.ndarray:
  """Reads an image (path or file object) as float64 (H, W) in [0, 1].

  Colour images give channel 0, as the MATLAB evaluation reads them
  (`I(:, :, 1)` after `im2double`); 16-bit images are divided by 65535,
  palette images read through their palette (`image_rules.grey_unit`, the
  rule the converter applies too). Raises what PIL raises for a missing or
  undecodable file (OSError, PIL.UnidentifiedImageError).
  """
  with Image.open(path) as image:
    return image_rules.grey_unit(image)


class GroundTruthSource(abc.ABC):
  """Per-video ground truth of one dataset."""

  dataset: str

  @abc.abstractmethod
  def videos(self, fold: int | None) -> list[str]:
    """Test videos of `fold` (1-based), or every annotated video for None."""

  @abc.abstractmethod
  def frame_ids(self, video: str) -> list[int]:
    """Annotated frame ids of `video` (1-based, as in the file names)."""

  @abc.abstractmethod
  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    """Continuous saliency map, float in [0, 1], shape (H, W)."""

  @abc.abstractmethod
  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    """Binary fixation map, bool, shape (H, W)."""

  def read_frames(self, video: str, frame_ids: Sequence[int]
                  ) -> list[np.ndarray] | None:
    """RGB uint8 `(H, W, 3)` pictures of `frame_ids`, for reports; None when
    the source holds no pictures of `video` (the scores never need them)."""
    del video, frame_ids
    return None

  def frame_count_note(self, video: str) -> str:
    """'' when the release's sources agree on `video`'s frame count, else
    how `frame_ids` cut them to the frames all of them have (a frame or two
    apart: `release_files.reconcile_frame_counts`)."""
    del video
    return ""
