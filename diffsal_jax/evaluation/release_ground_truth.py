"""Ground truth read from the raw releases, and the reader for a --data folder.

Two readers: DHF1K as released, and the six audio-visual sets as packaged by
STAViS (layout, dataset folders and fold lists: `data.layouts`, the rules
the converter follows too). `open_ground_truth` picks between them and the
converted shards (`shard_ground_truth`). Frame ids, numbered files and `.mat`
fixations are read by the converter's rules (`data.release_files`), so raw
and converted ground truth hold the same videos, frames and values.
"""

from __future__ import annotations

import abc
import functools
import logging
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as shard_manifest
from diffsal_jax.data import release_files
from diffsal_jax.evaluation import ground_truth


def _read_rgb(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    raise FileNotFoundError(f"{path} not found: {what}")
  return path


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


class _RawSource(ground_truth.GroundTruthSource):
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


class Dhf1kRawSource(_RawSource):
  """DHF1K release: annotation/NNNN/{maps,fixation}/NNNN.png.

  Folder and file numbers may have any zero padding (videos are named
  `NNNN` whatever their folder's padding). Frames are those that the maps,
  the fixation files and, when present, video/NNN.AVI (decoded with PyAV) or
  frames/<n>/ all have, by the converter's rule (`release_files`). Raises
  FileNotFoundError when `root` has no annotation/ folder.
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

  def _video_file(self, number: int) -> pathlib.Path | None:
    avis = [p for p in (self.root / "video").glob("*")
            if p.stem.isdigit() and int(p.stem) == number and p.suffix.lower() == ".avi"]
    return avis[0] if avis else None

  def _video_frame_count(self, number: int) -> dict[str, int]:
    """Frames of the video itself, when the release holds it."""
    avi = self._video_file(number)
    if avi:
      return {"decoded AVI frames": release_files.decoded_frame_count(avi)}
    frames = layouts.numbered_subdirs(self.root / "frames").get(number)
    return {"frames": self._files(frames, "{:d}.png").count} if frames else {}

  def read_frames(self, video: str, frame_ids: Sequence[int]
                  ) -> list[np.ndarray] | None:
    number = int(self._folder(video).name)
    avi = self._video_file(number)
    if avi:
      return release_files.decoded_frames(avi, frame_ids)
    frames = layouts.numbered_subdirs(self.root / "frames").get(number)
    if not frames:
      return None
    files = self._files(frames, "{:d}.png")
    return [_read_rgb(files.path(f)) for f in frame_ids]

  def _frame_counts(self, video: str) -> tuple[str, dict[str, int]]:
    folder = self._folder(video)
    maps = _require_dir(folder / "maps", f"DHF1K video {video} has no maps folder")
    counts = {"maps": self._files(maps, "{:04d}.png").count}
    if (folder / "fixation").is_dir():
      counts["fixation files"] = self._files(folder / "fixation", "{:04d}.png").count
    counts.update(self._video_frame_count(int(folder.name)))
    return str(folder), counts

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    maps = self._folder(video) / "maps"
    return ground_truth.read_grey(self._files(maps, "{:04d}.png").path(frame_id))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    folder = self._folder(video) / "fixation"
    return ground_truth.read_grey(self._files(folder, "{:04d}.png").path(frame_id)) > 0


class StavisRawSource(_RawSource):
  """Audio-visual sets as packaged by STAViS (`layouts` module doc).

  annotations/<DS>/<vid>/maps/eyeMap_%05d.jpg, annotations/<DS>/<vid>/
  fixMap_%05d.mat (variable `eyeMap`, any MATLAB version), fold lists named
  by `layouts.fold_list_names`. Frames are those that the fold lists, the
  maps, the fixation files and video_frames/<DS>/<vid>/ (when present) all
  have, by the converter's rule (`release_files`). Raises ValueError for a
  `dataset` not in `layouts.AV_FOLDERS`, FileNotFoundError when `root` has
  no annotations/<DS> folder.
  """

  def __init__(self, root: str | pathlib.Path, dataset: str):
    if dataset not in layouts.AV_FOLDERS:
      raise ValueError(f"unknown audio-visual dataset {dataset!r}; "
                       f"choose from {sorted(layouts.AV_FOLDERS)}")
    super().__init__()
    self.dataset = dataset
    self.folder = layouts.AV_FOLDERS[dataset]
    self.root = pathlib.Path(root)
    self.annotation = _require_dir(
        self.root / "annotations" / self.folder,
        f"--data must be the STAViS data root holding annotations/"
        f"{self.folder}")

  def videos(self, fold: int | None) -> list[str]:
    if fold is None:
      return sorted(p.name for p in self.annotation.iterdir() if p.is_dir())
    path = layouts.fold_list_path(self.root, self.folder, fold, "test")
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: fold lists must be in "
                              f"<data>/{layouts.FOLD_LISTS_DIR} as packaged by STAViS")
    return list(layouts.read_fold_list(path))

  @functools.cached_property
  def _listed_frames(self) -> dict[str, int]:
    """Frame counts of every video named in any fold list."""
    counts = {}
    for path in layouts.fold_list_paths(self.root, self.folder):
      counts.update(layouts.read_fold_list(path))
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

  def read_frames(self, video: str, frame_ids: Sequence[int]
                  ) -> list[np.ndarray] | None:
    folder = self.root / "video_frames" / self.folder / video
    if not folder.is_dir():
      return None
    files = self._files(folder, "img_{:05d}.jpg")
    return [_read_rgb(files.path(f)) for f in frame_ids]

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    maps = self.annotation / video / "maps"
    return ground_truth.read_grey(self._files(maps, "eyeMap_{:05d}.jpg").path(frame_id))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    path = self._files(self.annotation / video, "fixMap_{:05d}.mat").path(frame_id)
    return release_files.read_fixation_mat(path)


def open_ground_truth(data_root: str | pathlib.Path,
                      dataset: str) -> ground_truth.GroundTruthSource:
  """Reader of `dataset` under `data_root`: converted shards or raw release.

  A folder holding manifest.json is the output of `python -m data_prep
  convert` (`shard_ground_truth.ShardGroundTruth`); anything else must be
  the raw release (`Dhf1kRawSource`, `StavisRawSource`). Raises
  FileNotFoundError when it is neither, ValueError for an unknown `dataset`
  or a conversion of the other family.
  """
  manifest = pathlib.Path(data_root) / shard_manifest.MANIFEST_NAME
  if manifest.is_file():
    # Imported here: grain (slow to import) is behind it.
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
