"""Finds the videos of a raw release in the layouts the datasets ship in.

DHF1K, as released:      video/001.AVI ... + annotation/0001/{maps,fixation}/0001.png
DHF1K, frames extracted: frames/<n>/<k>.png + maps/<n>/%04d.png (the DiffSal
  README layout; folder and file numbers with any zero padding, from 0 or 1); fixations are read from fixation/<n>/%04d.png when present
  (this project's extension) or else from annotation/%04d/fixation/.
AV (STAViS packaging):   video_frames/<DS>/<vid>/img_%05d.jpg,
  video_audio/<DS>/<vid>/<vid>.wav, annotations/<DS>/<vid>/maps/eyeMap_%05d.jpg,
  annotations/<DS>/<vid>/fixMap_%05d.mat (variable eyeMap),
  fold_lists/<DS>_list_{train,test}_{1,2,3}_fps.txt (`name nframes fps`);
  DIEM has one split, DIEM_list_{train,test}_fps.txt, used for all folds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

from diffsal_jax.data.issues import Issue
from diffsal_jax.data.release_files import ReleaseError, read_text_lines

# Command-line (evaluation) name of each AV set -> its folder name in the
# STAViS package, in the order of cfgs/dataset.json in the published code.
AV_FOLDERS = {"diem": "DIEM", "coutrot1": "Coutrot_db1", "coutrot2": "Coutrot_db2",
              "avad": "AVAD", "etmd": "ETMD_av", "summe": "SumMe"}
AV_DATASETS = tuple(AV_FOLDERS.values())
FOLDS = (1, 2, 3)
FOLD_LISTS_DIR = "fold_lists"
DHF1K_SPLITS = (("train", 1, 600), ("val", 601, 700), ("test", 701, 10**9))
DHF1K_FPS = 30.0


@dataclasses.dataclass(frozen=True)
class VideoSource:
  """Where one video's files are. Frame numbers are 1-based."""
  key: str
  dataset: str
  name: str
  family: str                          # 'dhf1k' or 'av' (selects the image rules)
  fps: float
  num_frames: int = 0                  # 0: count the frames (DHF1K)
  frames_dir: pathlib.Path | None = None
  frame_pattern: str = ""
  avi_path: pathlib.Path | None = None
  maps_dir: pathlib.Path | None = None
  map_pattern: str = ""
  fix_dir: pathlib.Path | None = None
  fix_pattern: str = ""
  wav_path: pathlib.Path | None = None

  def frame_path(self, k: int) -> pathlib.Path:
    return self.frames_dir / self.frame_pattern.format(k)

  def map_path(self, k: int) -> pathlib.Path:
    return self.maps_dir / self.map_pattern.format(k)

  def fix_path(self, k: int) -> pathlib.Path:
    return self.fix_dir / self.fix_pattern.format(k)


@dataclasses.dataclass
class Release:
  family: str
  videos: list[VideoSource]
  splits: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  folds: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
  fold_lists: dict[str, str] = dataclasses.field(default_factory=dict)   # name -> sha256
  issues: list[Issue] = dataclasses.field(default_factory=list)


def dhf1k_split(number: int) -> str:
  return next(name for name, lo, hi in DHF1K_SPLITS if lo <= number <= hi)


def numbered_subdirs(root: pathlib.Path) -> dict[int, pathlib.Path]:
  """Folders of `root` named by a number, by its value: `1`, `001` and `0001`
  are video 1 (as the published `util/dhf1k_frames.py` matches them, with
  `int(name)`). Two folders of one number raise ReleaseError naming both."""
  found: dict[int, pathlib.Path] = {}
  if not root.is_dir():
    return found
  for path in sorted(root.iterdir()):
    if path.is_dir() and path.name.isdigit():
      other = found.setdefault(int(path.name), path)
      if other != path:
        raise ReleaseError("ambiguous_name", path, f"{other.name} and {path.name} are "
                           f"both video {int(path.name)}")
  return found


def _dhf1k_source(raw: pathlib.Path, number: int, fps: float, folders, **files) -> VideoSource:
  """Fills the annotation paths: `folders` maps 'annotation', 'maps' and
  'fixation' to their numbered subfolders. Maps and fixations: maps/<n>
  (extracted layout) else annotation/<n>/maps; fixation/<n> else
  annotation/<n>/fixation (absent for test videos)."""
  annotation = folders["annotation"].get(number)
  maps_dir = folders["maps"].get(number) or (annotation and annotation / "maps")
  fix_dir = folders["fixation"].get(number) or (annotation and annotation / "fixation")
  return VideoSource(
      key=f"DHF1K/{number}", dataset="DHF1K", name=str(number), family="dhf1k",
      fps=fps, maps_dir=maps_dir if maps_dir and maps_dir.is_dir() else None,
      map_pattern="{:04d}.png", fix_dir=fix_dir if fix_dir and fix_dir.is_dir() else None,
      fix_pattern="{:04d}.png", **files)


def discover_dhf1k(raw: pathlib.Path, fps: float = DHF1K_FPS) -> Release:
  """Videos of video/*.AVI if present, else of frames/<n>/.

  Folder and file numbers may have any zero padding. A train or val video
  (1-700) without maps is left out with a `missing_annotations` problem
  (DHF1K releases maps for all of them), never converted without.
  """
  videos = []
  folders = {name: numbered_subdirs(raw / name) for name in ("annotation", "maps", "fixation")}
  if (raw / "video").is_dir():
    for path in sorted((raw / "video").iterdir()):
      if path.suffix.lower() == ".avi" and path.stem.isdigit():
        videos.append(_dhf1k_source(raw, int(path.stem), fps, folders, avi_path=path))
  elif (raw / "frames").is_dir():
    for number, frames_dir in numbered_subdirs(raw / "frames").items():
      videos.append(_dhf1k_source(raw, number, fps, folders, frames_dir=frames_dir,
                                  frame_pattern="{:d}.png"))
  else:
    raise FileNotFoundError(f"{raw}: neither video/ (DHF1K as released) nor frames/ "
                            "(extracted frames) found; --src must be the DHF1K root")
  videos.sort(key=lambda v: int(v.name))
  release = Release("dhf1k", [], splits={name: [] for name, _, _ in DHF1K_SPLITS})
  for video in videos:
    split = dhf1k_split(int(video.name))
    if split != "test" and video.maps_dir is None:
      expected = (raw / "maps" / video.name if video.frames_dir
                  else raw / "annotation" / f"{int(video.name):04d}" / "maps")
      release.issues.append(Issue("missing_annotations", str(expected),
                                  f"{split} video {video.name} has no maps folder",
                                  video=video.key))
      continue
    release.videos.append(video)
    release.splits[split].append(video.key)
  return release


def parse_fold_list(path: pathlib.Path, issues: list[Issue]) -> list[tuple[str, int, float]]:
  """(name, nframes, fps) per line; malformed lines become issues.

  Text as editors save it (BOM, UTF-16, CRLF/CR, trailing blanks: see
  `release_files.read_text_lines`); the published `read_sal_text` also takes
  the first three whitespace-separated words.
  """
  entries = []
  try:
    lines = read_text_lines(path)
  except ReleaseError as e:
    issues.append(Issue(e.kind, e.path, e.detail))
    return entries
  for lineno, line in enumerate(lines, start=1):
    words = line.split()
    if not words:
      continue
    try:
      if len(words) != 3:
        raise ValueError(f"{len(words)} fields")
      name, nframes, fps = words[0], int(words[1]), float(words[2])
      if nframes < 1 or not fps > 0:
        raise ValueError("nframes and fps must be positive")
    except ValueError as e:
      issues.append(Issue("bad_fold_line", f"{path}:{lineno}", f"{line.strip()!r} ({e})"))
      continue
    entries.append((name, nframes, fps))
  return entries


def read_fold_list(path: pathlib.Path) -> dict[str, int]:
  """{name: nframes} of a fold list parsed by `parse_fold_list`.

  Raises ReleaseError for the first problem `parse_fold_list` reports
  (unreadable text, a malformed line), naming the file (and line).
  """
  issues: list[Issue] = []
  entries = parse_fold_list(path, issues)
  if issues:
    raise ReleaseError(issues[0].kind, issues[0].path, issues[0].detail)
  return {name: nframes for name, nframes, _ in entries}


def fold_list_names(dataset: str, fold: int) -> dict[str, str]:
  """{'train': file, 'test': file} of one AV dataset (folder name) and fold."""
  suffix = "fps" if dataset == "DIEM" else f"{fold}_fps"
  return {split: f"{dataset}_list_{split}_{suffix}.txt" for split in ("train", "test")}


def fold_list_path(raw: pathlib.Path, dataset: str, fold: int, split: str) -> pathlib.Path:
  """`<raw>/fold_lists/<file>` of one dataset, fold and split (may not exist)."""
  return pathlib.Path(raw) / FOLD_LISTS_DIR / fold_list_names(dataset, fold)[split]


def fold_list_paths(raw: pathlib.Path, dataset: str) -> list[pathlib.Path]:
  """Every fold list of `dataset` the converter reads (all folds and splits),
  those present, sorted by name (DIEM's one pair counted once)."""
  paths = {fold_list_path(raw, dataset, fold, split)
           for fold in FOLDS for split in ("train", "test")}
  return sorted(p for p in paths if p.is_file())


def _av_source(raw: pathlib.Path, dataset: str, name: str, nframes: int, fps: float):
  annotations = raw / "annotations" / dataset / name
  return VideoSource(
      key=f"{dataset}/{name}", dataset=dataset, name=name, family="av", fps=fps,
      num_frames=nframes, frames_dir=raw / "video_frames" / dataset / name,
      frame_pattern="img_{:05d}.jpg", maps_dir=annotations / "maps",
      map_pattern="eyeMap_{:05d}.jpg", fix_dir=annotations, fix_pattern="fixMap_{:05d}.mat",
      wav_path=raw / "video_audio" / dataset / name / f"{name}.wav")


def _read_av_lists(raw: pathlib.Path, dataset: str, release: Release):
  """Parses the fold lists of one dataset; returns {name: (nframes, fps)}."""
  seen: dict[str, tuple[int, float]] = {}
  for fold in FOLDS:
    for split, file_name in fold_list_names(dataset, fold).items():
      path = fold_list_path(raw, dataset, fold, split)
      if not path.is_file():
        release.issues.append(Issue("missing_file", str(path), "fold list not found"))
        continue
      release.fold_lists[file_name] = hashlib.sha256(path.read_bytes()).hexdigest()
      fold_keys = release.folds.setdefault(str(fold), {"train": [], "test": []})[split]
      for name, nframes, fps in parse_fold_list(path, release.issues):
        if seen.setdefault(name, (nframes, fps)) != (nframes, fps):
          release.issues.append(Issue(
              "fold_list_conflict", str(path), f"{name}: {nframes} frames at {fps} fps, "
              f"elsewhere {seen[name]}", video=f"{dataset}/{name}"))
        fold_keys.append(f"{dataset}/{name}")
  return seen


def discover_av(raw: pathlib.Path, datasets=AV_DATASETS) -> Release:
  """Videos named in the fold lists of the datasets present under video_frames/."""
  if not (raw / FOLD_LISTS_DIR).is_dir() or not (raw / "video_frames").is_dir():
    raise FileNotFoundError(f"{raw}: fold_lists/ and video_frames/ expected (STAViS "
                            "packaging); --src must be the folder that holds them")
  release = Release("av", [])
  conflicted = set()
  for dataset in datasets:
    if not (raw / "video_frames" / dataset).is_dir():
      continue
    listed = _read_av_lists(raw, dataset, release)
    conflicted |= {i.video for i in release.issues if i.kind == "fold_list_conflict"}
    for name in sorted(listed):
      if f"{dataset}/{name}" not in conflicted:
        release.videos.append(_av_source(raw, dataset, name, *listed[name]))
  for fold in release.folds.values():
    for split in fold:
      fold[split] = sorted(set(fold[split]) - conflicted)
  return release


def discover(family: str, raw: pathlib.Path, dhf1k_fps: float = DHF1K_FPS) -> Release:
  raw = pathlib.Path(raw)
  if not raw.is_dir():
    raise FileNotFoundError(f"--src {raw} is not a directory")
  if family == "dhf1k":
    return discover_dhf1k(raw, dhf1k_fps)
  if family == "av":
    return discover_av(raw)
  raise ValueError(f"--dataset must be 'dhf1k' or 'av', got {family!r}")
