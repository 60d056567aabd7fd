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
import pathlib
import logging
import re

import numpy as np
from PIL import Image

from diffsal_jax.data import atomic_files
from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as shard_manifest
from diffsal_jax.data import release_files

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


def read_grey(path) -> np.ndarray:
  """Reads an image (path or file object) as float64 (H, W) in [0, 1].

  Colour images give channel 0, as the MATLAB evaluation reads them
  (`I(:, :, 1)` after `im2double`); 16-bit images are divided by 65535,
  palette images read through their palette (`image_rules.grey_unit`, the
  rule the converter applies too).
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

  def frame_count_note(self, video: str) -> str:
    """'' when the release's sources agree on `video`'s frame count, else
    how `frame_ids` cut them to the frames all of them have (a frame or two
    apart: `release_files.reconcile_frame_counts`)."""
    del video
    return ""


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    raise FileNotFoundError(f"{path} not found: {what}")
  return path


class _RawSource(GroundTruthSource):
  """A release on disk: frame ids by the converter's rule, cached per video
  with the note saying what was cut."""

  def __init__(self):
    self._files = _NumberedFiles()
    self._frame_ids: dict[str, list[int]] = {}
    self._notes: dict[str, str] = {}

  @abc.abstractmethod
  def _frame_counts(self, video: str) -> tuple[str, dict[str, int]]:
    """(folder to name in errors, source label -> its number of frames)."""

  def frame_ids(self, video: str) -> list[int]:
    if video not in self._frame_ids:
      where, counts = self._frame_counts(video)
      kept, self._notes[video] = release_files.reconcile_frame_counts(counts, where)
      if self._notes[video]:
        logging.getLogger(__name__).info("%s: %s", where, self._notes[video])
      self._frame_ids[video] = list(range(1, kept + 1))
    return self._frame_ids[video]

  def frame_count_note(self, video: str) -> str:
    self.frame_ids(video)
    return self._notes[video]


class _NumberedFiles:
  """Per-folder cache of `release_files.index_numbered` (sources are pickled
  to workers; the cache is rebuilt there)."""

  def __init__(self):
    self._cache: dict[tuple[pathlib.Path, str], release_files.Numbered] = {}

  def __call__(self, folder: pathlib.Path, pattern: str) -> release_files.Numbered:
    if (folder, pattern) not in self._cache:
      self._cache[folder, pattern] = release_files.index_numbered(folder, pattern)
    return self._cache[folder, pattern]

  def __getstate__(self) -> dict:
    return {"_cache": {}}


class Dhf1kRawSource(_RawSource):
  """DHF1K release: annotation/NNNN/{maps,fixation}/NNNN.png.

  Folder and file numbers may have any zero padding (videos are named
  `NNNN` whatever their folder's padding). Frames are those that the maps,
  the fixation files and, when present, video/NNN.AVI (decoded with PyAV) or
  frames/<n>/ all have, by the converter's rule (`release_files`).
  """

  dataset = "dhf1k"

  def __init__(self, root: str | pathlib.Path):
    super().__init__()
    self.root = pathlib.Path(root)
    self.annotation = _require_dir(
        self.root / "annotation",
        "--data must be the DHF1K root that holds annotation/NNNN/maps")
    self._folders = {f"{n:04d}": path for n, path in
                     layouts.numbered_subdirs(self.annotation).items()}

  def videos(self, fold: int | None) -> list[str]:
    if fold is not None:
      raise ValueError("DHF1K has no folds; drop --fold")
    return sorted(self._folders)

  def _folder(self, video: str) -> pathlib.Path:
    folder = self._folders.get(f"{int(video):04d}" if video.isdigit() else video)
    if folder is None:
      raise FileNotFoundError(f"{self.annotation}: no folder of DHF1K video {video}")
    return folder

  def _video_frame_count(self, number: int) -> dict[str, int]:
    """Frames of the video itself, when the release holds it."""
    avis = [p for p in (self.root / "video").glob("*")
            if p.stem.isdigit() and int(p.stem) == number and p.suffix.lower() == ".avi"]
    if avis:
      return {"decoded AVI frames": release_files.decoded_frame_count(avis[0])}
    frames = layouts.numbered_subdirs(self.root / "frames").get(number)
    return {"frames": self._files(frames, "{:d}.png").count} if frames else {}

  def _frame_counts(self, video: str) -> tuple[str, dict[str, int]]:
    folder = self._folder(video)
    maps = _require_dir(folder / "maps", f"DHF1K video {video} has no maps folder")
    counts = {"maps": self._files(maps, "{:04d}.png").count}
    if (folder / "fixation").is_dir():
      counts["fixation files"] = self._files(folder / "fixation", "{:04d}.png").count
    counts.update(self._video_frame_count(int(folder.name)))
    return str(folder), counts

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    return read_grey(self._files(self._folder(video) / "maps", "{:04d}.png").path(frame_id))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    folder = self._folder(video) / "fixation"
    return read_grey(self._files(folder, "{:04d}.png").path(frame_id)) > 0


def read_fold_list(path: pathlib.Path) -> dict[str, int]:
  """Parses a STAViS fold list (`name nframes fps` lines, as the converter
  reads them: `layouts.parse_fold_list`) -> {name: nframes}."""
  issues = []
  entries = layouts.parse_fold_list(path, issues)
  if issues:   # ReleaseError: evaluate names it instead of a traceback
    raise release_files.ReleaseError(issues[0].kind, issues[0].path, issues[0].detail)
  return {name: nframes for name, nframes, _ in entries}


class StavisRawSource(_RawSource):
  """Audio-visual sets as packaged by STAViS.

  annotations/<DS>/<vid>/maps/eyeMap_%05d.jpg, annotations/<DS>/<vid>/
  fixMap_%05d.mat (variable `eyeMap`, any MATLAB version), fold_lists/
  <DS>_list_test_<k>_fps.txt (DIEM: one DIEM_list_test_fps.txt for every
  fold). Frames are those that the fold list, the maps, the fixation files
  and video_frames/<DS>/<vid>/ (when present) all have, by the converter's
  rule (`release_files`).
  """

  def __init__(self, root: str | pathlib.Path, dataset: str):
    if dataset not in AV_FOLDERS:
      raise ValueError(f"unknown audio-visual dataset {dataset!r}; "
                       f"choose from {sorted(AV_FOLDERS)}")
    super().__init__()
    self.dataset = dataset
    self.folder = AV_FOLDERS[dataset]
    self.root = pathlib.Path(root)
    self.annotation = _require_dir(
        self.root / "annotations" / self.folder,
        f"--data must be the STAViS data root holding annotations/"
        f"{self.folder}")

  def _fold_list_path(self, fold: int, split: str = "test") -> pathlib.Path:
    name = layouts.fold_list_names(self.folder, fold)[split]
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

  def _frame_counts(self, video: str) -> tuple[str, dict[str, int]]:
    maps = _require_dir(self.annotation / video / "maps",
                        f"{self.folder} video {video} has no maps folder")
    counts = {"maps": self._files(maps, "eyeMap_{:05d}.jpg").count,
              "fixation files": self._files(self.annotation / video,
                                            "fixMap_{:05d}.mat").count}
    frames = self.root / "video_frames" / self.folder / video
    if frames.is_dir():
      counts["frames"] = self._files(frames, "img_{:05d}.jpg").count
    if video in self._listed_frames:
      counts["in the fold list"] = self._listed_frames[video]
    return str(self.annotation / video), counts

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    maps = self.annotation / video / "maps"
    return read_grey(self._files(maps, "eyeMap_{:05d}.jpg").path(frame_id))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    path = self._files(self.annotation / video, "fixMap_{:05d}.mat").path(frame_id)
    return release_files.read_mat_variable(path, "eyeMap") > 0


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
    from diffsal_jax.evaluation import shard_ground_truth
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
  # No fsync per frame (thousands of small files): a crash may lose the last
  # frames, never leave a partial one.
  atomic_files.write_atomic(path, lambda f: image.save(f, format="PNG"),
                            binary=True, fsync=False)
  return path
