"""Predicted saliency maps: reading them for scoring, writing ours.

Layouts (frame = 1-based ground-truth frame number):
  ours       <pred>/<dataset>/<video>/<frame:05d>.png, 8-bit grey (video =
             ground-truth folder name, e.g. 0601 or a STAViS video name),
             written by `save_prediction`.
  published  DHF1K: <pred>/<video>/<frame>.png (video with or without leading
             zeros, as diff_sal writes them); AV sets: <pred>/<dataset>/
             <video>/pred_sal_%06d.jpg (diff_sal's split<k>_results/ folders).
"""

from __future__ import annotations

import abc
import pathlib
import re

import numpy as np
from PIL import Image

from diffsal_jax.data import atomic_files
from diffsal_jax.evaluation import ground_truth

_FRAME_FILE = re.compile(r"(?:pred_sal_)?(\d+)\.(?:png|jpe?g)", re.IGNORECASE)


class DamagedPredictionError(ValueError):
  """A prediction file that cannot be decoded (named in the message)."""


class PredictionSource(abc.ABC):
  """Predicted maps of one fold, addressed like the ground truth."""

  @abc.abstractmethod
  def frame_ids(self, video: str) -> list[int]:
    """Frames of `video` that have a prediction (empty if none)."""

  @abc.abstractmethod
  def read(self, video: str, frame_id: int) -> np.ndarray:
    """The prediction, (h, w) float; resized to the ground truth later."""


class PredictionDir(PredictionSource):
  """Predictions on disk in our layout or a published one (see module doc).

  Per video the first folder holding frame files wins: <root>/<dataset>/
  <video>, <root>/<video>, then <root>/<int(video)> for numbered videos.
  `read` gives float64 (H, W) in [0, 1] (`ground_truth.read_grey`);
  KeyError for a frame without a file, DamagedPredictionError for a file
  that does not decode.
  """

  def __init__(self, root: str | pathlib.Path, dataset: str):
    self.root, self.dataset = pathlib.Path(root), dataset
    self._listing: dict[str, dict[int, pathlib.Path]] = {}

  def _files(self, video: str) -> dict[int, pathlib.Path]:
    if video not in self._listing:
      folders = [self.root / self.dataset / video, self.root / video]
      if video.isdigit():
        folders.append(self.root / str(int(video)))
      files = {}
      for folder in filter(pathlib.Path.is_dir, folders):
        matches = ((_FRAME_FILE.fullmatch(p.name), p) for p in folder.iterdir())
        files = {int(m.group(1)): p for m, p in matches if m}
        if files:
          break
      self._listing[video] = files
    return self._listing[video]

  def frame_ids(self, video: str) -> list[int]:
    return sorted(self._files(video))

  def read(self, video: str, frame_id: int) -> np.ndarray:
    path = self._files(video)[frame_id]
    try:
      return ground_truth.read_grey(path)
    except OSError as error:   # PIL's UnidentifiedImageError included
      raise DamagedPredictionError(
          f"{path} cannot be read as an image ({error}); write it again, or "
          f"delete it to score {video} without frame {frame_id} (counted as "
          "a frame without prediction)") from None


def save_prediction(root: str | pathlib.Path, dataset: str, video: str,
                    frame_id: int, saliency: np.ndarray) -> pathlib.Path:
  """Writes one map in our layout, scaled by its max to 0..255 (8-bit PNG).

  `saliency`: (H, W) array of any real dtype; negative values are clipped to
  0. Scaling by the max (no offset) keeps every metric unchanged up to 8-bit
  quantisation, whatever range the model outputs. Returns the file written
  (atomically, `atomic_files.write_atomic`).
  """
  saliency = np.clip(np.asarray(saliency, np.float64), 0.0, None)
  peak = saliency.max(initial=0.0)
  pixels = np.round(saliency / peak * 255 if peak > 0 else saliency)
  path = pathlib.Path(root) / dataset / video / f"{frame_id:05d}.png"
  image = Image.fromarray(pixels.astype(np.uint8))  # 2-D uint8 -> "L"
  # No fsync per frame (thousands of small files): a crash may lose the last
  # frames, never leave a partial one.
  atomic_files.write_atomic(path, lambda f: image.save(f, format="PNG"),
                            binary=True, fsync=False)
  return path
