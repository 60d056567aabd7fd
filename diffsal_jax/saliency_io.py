"""Reading ground truth and predictions, and writing predictions.

The evaluation only talks to a `GroundTruthSource`: per video, the frame ids
and readers for the continuous map and the binary fixation map of one frame.
Two readers of the raw releases are here (DHF1K, and the six audio-visual
sets as packaged by STAViS); `shard_ground_truth.py` reads the project's
ArrayRecord shards and `open_raw_source` picks the right one. Sources must
be picklable (they are sent to worker processes). Predictions are read
through a `PredictionSource`; `PredictionDir` reads the layouts below and
`save_prediction` writes ours.

Prediction layouts (frame = 1-based ground-truth frame number):
  ours       <pred>/<dataset>/<video>/<frame:05d>.png, 8-bit grey (video =
             ground-truth folder name, e.g. 0601 or a STAViS video name).
  published  DHF1K: <pred>/<video>/<frame>.png (video with or without leading
             zeros, as diff_sal writes them); AV sets: <pred>/<dataset>/
             <video>/pred_sal_%06d.jpg (diff_sal's split<k>_results/ folders).
"""

from __future__ import annotations

import abc
import functools
import io
import os
import pathlib
import re
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image
import scipy.io

from data_prep import manifest as shard_manifest

# CLI name -> folder name in the STAViS package (annotations/<folder>/...).
AV_FOLDERS = {
    "avad": "AVAD",
    "coutrot1": "Coutrot_db1",
    "coutrot2": "Coutrot_db2",
    "diem": "DIEM",
    "etmd": "ETMD_av",
    "summe": "SumMe",
}
DATASETS = ("dhf1k",) + tuple(AV_FOLDERS)
_FRAME_FILE = re.compile(r"(?:pred_sal_)?(\d+)\.(?:png|jpe?g)", re.IGNORECASE)


def read_grey(path: str | pathlib.Path) -> np.ndarray:
  """Reads an image as float64 in [0, 1]; colour images give channel 0.

  Channel 0 (not a luma mix) is what the MATLAB evaluation reads
  (`I(:, :, 1)` after `im2double`).
  """
  with Image.open(path) as image:
    pixels = np.asarray(image)
  if pixels.ndim == 3:
    pixels = pixels[..., 0]
  if pixels.dtype == np.uint8:
    return pixels / 255.0
  if np.issubdtype(pixels.dtype, np.integer):  # 16-bit PNG (uint16 or "I").
    return pixels / 65535.0
  return pixels.astype(np.float64)  # Bool (1-bit) or float images.


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


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    raise FileNotFoundError(f"{path} not found: {what}")
  return path


def _numbered_files(folder: pathlib.Path, pattern: str) -> list[int]:
  regex = re.compile(pattern)
  matches = (regex.fullmatch(p.name) for p in folder.iterdir())
  return sorted(int(m.group(1)) for m in matches if m)


class Dhf1kRawSource(GroundTruthSource):
  """DHF1K release: annotation/NNNN/{maps,fixation}/NNNN.png."""

  dataset = "dhf1k"

  def __init__(self, root: str | pathlib.Path):
    self.annotation = _require_dir(
        pathlib.Path(root) / "annotation",
        "--data must be the DHF1K root that holds annotation/NNNN/maps")

  def videos(self, fold: int | None) -> list[str]:
    if fold is not None:
      raise ValueError("DHF1K has no folds; drop --fold")
    return sorted(p.name for p in self.annotation.iterdir()
                  if p.is_dir() and p.name.isdigit())

  def frame_ids(self, video: str) -> list[int]:
    maps = _require_dir(self.annotation / video / "maps",
                        f"DHF1K video {video} has no maps folder")
    return _numbered_files(maps, r"(\d+)\.png")

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    return read_grey(self.annotation / video / "maps" / f"{frame_id:04d}.png")

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    path = self.annotation / video / "fixation" / f"{frame_id:04d}.png"
    return read_grey(path) > 0


def read_fold_list(path: pathlib.Path) -> dict[str, int]:
  """Parses a STAViS fold list (`name nframes fps` lines) -> {name: nframes}."""
  videos = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) < 2 or not fields[1].isdigit():
      raise ValueError(f"{path}:{number}: expected 'name nframes fps', "
                       f"got {line!r}")
    videos[fields[0]] = int(fields[1])
  return videos


class StavisRawSource(GroundTruthSource):
  """Audio-visual sets as packaged by STAViS.

  annotations/<DS>/<vid>/maps/eyeMap_%05d.jpg, annotations/<DS>/<vid>/
  fixMap_%05d.mat (variable `eyeMap`), fold_lists/<DS>_list_test_<k>_fps.txt
  (DIEM: one DIEM_list_test_fps.txt for every fold).
  """

  def __init__(self, root: str | pathlib.Path, dataset: str):
    if dataset not in AV_FOLDERS:
      raise ValueError(f"unknown audio-visual dataset {dataset!r}; "
                       f"choose from {sorted(AV_FOLDERS)}")
    self.dataset = dataset
    self.folder = AV_FOLDERS[dataset]
    self.root = pathlib.Path(root)
    self.annotation = _require_dir(
        self.root / "annotations" / self.folder,
        f"--data must be the STAViS data root holding annotations/"
        f"{self.folder}")

  def _fold_list_path(self, fold: int, split: str = "test") -> pathlib.Path:
    name = (f"{self.folder}_list_{split}_fps.txt" if self.dataset == "diem"
            else f"{self.folder}_list_{split}_{fold}_fps.txt")
    path = self.root / "fold_lists" / name
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: fold lists must be in "
                              f"<data>/fold_lists as packaged by STAViS")
    return path

  def videos(self, fold: int | None) -> list[str]:
    if fold is None:
      return sorted(p.name for p in self.annotation.iterdir() if p.is_dir())
    return list(read_fold_list(self._fold_list_path(fold)))

  @functools.cached_property
  def _listed_frames(self) -> dict[str, int]:
    """Frame counts of every video named in any fold list."""
    counts = {}
    for path in sorted((self.root / "fold_lists").glob(
        f"{self.folder}_list_*_fps.txt")):
      counts.update(read_fold_list(path))
    return counts

  def frame_ids(self, video: str) -> list[int]:
    maps = _require_dir(self.annotation / video / "maps",
                        f"{self.folder} video {video} has no maps folder")
    frames = _numbered_files(maps, r"eyeMap_(\d+)\.jpg")
    # Like the STAViS scripts, only frames 1..nframes of the fold list count.
    limit = self._listed_frames.get(video)
    return [f for f in frames if limit is None or f <= limit]

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    path = self.annotation / video / "maps" / f"eyeMap_{frame_id:05d}.jpg"
    return read_grey(path)

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    path = self.annotation / video / f"fixMap_{frame_id:05d}.mat"
    try:
      content = scipy.io.loadmat(path, variable_names=["eyeMap"])
    except (NotImplementedError, ValueError) as error:
      raise ValueError(f"{path}: cannot read with scipy.io.loadmat "
                       f"({error}); re-save it as a MATLAB v5 file") from error
    if "eyeMap" not in content:
      raise KeyError(f"{path} has no variable 'eyeMap' (STAViS fixation maps "
                     f"store the binary map under that name)")
    return np.asarray(content["eyeMap"]) > 0


def open_raw_source(data_root: str | pathlib.Path,
                    dataset: str) -> GroundTruthSource:
  """Reader of `dataset` under `data_root`: converted shards or raw release.

  A folder holding manifest.json is the output of `python -m data_prep
  convert`; anything else must be the raw release.
  """
  manifest = pathlib.Path(data_root) / shard_manifest.MANIFEST_NAME
  if manifest.is_file():
    # Imported here: it imports this module, and grain (slow) behind it.
    # pylint: disable-next=g-import-not-at-top
    from diffsal_jax import shard_ground_truth
    return shard_ground_truth.ShardGroundTruth(data_root, dataset)
  try:
    if dataset == "dhf1k":
      return Dhf1kRawSource(data_root)
    return StavisRawSource(data_root, dataset)
  except FileNotFoundError as error:
    raise FileNotFoundError(
        f"--data {data_root} is neither converted shards (no {manifest}) nor "
        f"a raw release ({error})") from None


class PredictionSource(abc.ABC):
  """Predicted maps of one fold, addressed like the ground truth."""

  @abc.abstractmethod
  def frame_ids(self, video: str) -> list[int]:
    """Frames of `video` that have a prediction (empty if none)."""

  @abc.abstractmethod
  def read(self, video: str, frame_id: int) -> np.ndarray:
    """The prediction, (h, w) float; resized to the ground truth later."""


class PredictionDir(PredictionSource):
  """Predictions on disk in our layout or a published one (see module doc)."""

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
    return read_grey(self._files(video)[frame_id])


def atomic_write(path: pathlib.Path, write: Callable[[io.IOBase], None],
                 mode: str = "w") -> None:
  """Calls `write(stream)` on a temporary file, then renames it to `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(handle, mode) as stream:
      write(stream)
    os.replace(temp, path)
  except BaseException:
    os.unlink(temp)
    raise


def save_prediction(root: str | pathlib.Path, dataset: str, video: str,
                    frame_id: int, saliency: np.ndarray) -> pathlib.Path:
  """Writes one map in our layout, scaled by its max to 0..255 (8-bit PNG).

  Scaling by the max (no offset) keeps every metric unchanged up to 8-bit
  quantisation, whatever range the model outputs.
  """
  saliency = np.clip(np.asarray(saliency, np.float64), 0.0, None)
  peak = saliency.max(initial=0.0)
  pixels = np.round(saliency / peak * 255 if peak > 0 else saliency)
  path = pathlib.Path(root) / dataset / video / f"{frame_id:05d}.png"
  image = Image.fromarray(pixels.astype(np.uint8))  # 2-D uint8 -> "L"
  atomic_write(path, lambda f: image.save(f, format="PNG"), mode="wb")
  return path
