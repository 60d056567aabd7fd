"""How the files of a raw release are read, shared by the converter
(`data_prep convert`) and the evaluator's raw readers
(`evaluation.release_ground_truth`), so that converted and raw ground truth
hold the same videos, frames and values.

- Text lists (STAViS fold lists) as editors save them: UTF-8 with or without
  BOM, UTF-16 with BOM, CRLF / CR / LF line ends, trailing blanks.
- Numbered files (`img_00001.jpg`, `0001.png`, `1.png`): matched by the
  integer value of their number whatever its zero padding (as the published
  `util/dhf1k_frames.py` matches annotation folders, `int(name)`); numbering
  from 0 is shifted to 1-based and reported; two files with one number, or a
  gap inside the numbering, are refused by name.
- Frame counts: a fold list, the frame files (or decoded AVI frames), the
  maps and the fixation files may disagree by up to `SYNC_SLACK_FRAMES`
  (audio/video sync of the original STAViS and DHF1K releases): frames 1..N
  that all of them have are kept and the difference is reported; more is
  refused. The published STAViS loader reads frames 1..nframes of the fold
  list and stops at the first missing frame file (`video_loader`), so it too
  only ever uses frames that exist.
- `.mat` fixation maps: MATLAB v4/v5/v7 via `scipy.io.loadmat`, v7.3 (HDF5)
  via h5py, dense or sparse, logical/uint8/double.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
import re

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from diffsal_jax.data.issues import FIXES

# Largest disagreement between the frame counts of one video that is taken as
# the audio/video sync slack of the releases (the STAViS fold lists and DHF1K
# AVIs differ from their annotations by 1-2 frames); more means a truncated
# or mixed-up video and is refused.
SYNC_SLACK_FRAMES = 2
FIXATION_VARIABLE = "eyeMap"   # of the STAViS fixation .mat files
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


class ReleaseError(ValueError):
  """A release file that cannot be used as is: kind (a key of
  `issues.FIXES`), the file and what is wrong. Picklable (raised in workers)."""

  def __init__(self, kind: str, path, detail: str):
    super().__init__(kind, str(path), detail)
    self.kind, self.path, self.detail = kind, str(path), detail

  def __str__(self) -> str:
    return f"{self.path}: {self.detail} (fix: {FIXES[self.kind]})"


def read_text_lines(path: pathlib.Path, data: bytes | None = None) -> list[str]:
  """Lines of a text file, right-stripped (blank lines kept, for line numbers).

  Decodes by BOM (UTF-8, UTF-16 LE/BE), else UTF-8; splits on LF, CRLF or CR.
  Raises ReleaseError('bad_text') for anything else (e.g. UTF-16 without BOM).
  """
  data = pathlib.Path(path).read_bytes() if data is None else data
  encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError as e:
    raise ReleaseError("bad_text", path, f"not UTF-8 or UTF-16 with BOM ({e})") from None
  if "\0" in text:   # valid UTF-8, but no list has NULs: UTF-16 saved without BOM
    raise ReleaseError("bad_text", path, "holds NUL characters (UTF-16 without BOM?)")
  return [line.rstrip() for line in text.lstrip("\ufeff").splitlines()]


# --- numbered files -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Numbered:
  """Files of one folder by 1-based frame number."""
  directory: pathlib.Path
  files: dict[int, pathlib.Path]
  zero_based: bool = False       # files were numbered from 0 (shifted by 1)

  @property
  def count(self) -> int:
    return len(self.files)

  def path(self, k: int) -> pathlib.Path:
    return self.files[k]

  def note(self) -> str:
    return (f"files numbered from 0: file 0 is frame 1 ({self.files[1].name})"
            if self.zero_based else "")


def index_numbered(directory: pathlib.Path, pattern: str,
                   missing_kind: str = "missing_file") -> Numbered:
  """Indexes `directory` for files named like `pattern` ('img_{:05d}.jpg').

  The number may have any zero padding; the extension is matched without
  case. Raises ReleaseError: 'ambiguous_name' (two files, one number),
  `missing_kind` (a gap inside the numbering, naming the first missing file).
  A missing folder gives no files.
  """
  directory = pathlib.Path(directory)
  prefix, suffix = pattern.split("{")[0], pattern.split("}")[-1]
  regex = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix), re.IGNORECASE)
  found: dict[int, pathlib.Path] = {}
  if directory.is_dir():
    for path in directory.iterdir():
      if not (m := regex.fullmatch(path.name)):
        continue
      number = int(m.group(1))
      if number in found:
        raise ReleaseError("ambiguous_name", path, f"{found[number].name} and {path.name} "
                           f"both name frame {number}")
      found[number] = path
  zero_based = 0 in found
  files = {n + zero_based: p for n, p in sorted(found.items())}
  missing = sorted(set(range(1, max(files, default=0) + 1)) - files.keys())
  if missing:
    digits = {len(regex.fullmatch(p.name).group(1)) for p in files.values()}
    width = digits.pop() if len(digits) == 1 else 0
    name = f"{prefix}{missing[0] - zero_based:0{width}d}{suffix}"
    raise ReleaseError(missing_kind, directory / name,
                       f"{len(missing)} of frames 1..{max(files)} missing in the numbering")
  return Numbered(directory, files, zero_based)


def reconcile_frame_counts(counts: dict[str, int], where) -> tuple[int, str]:
  """Frames 1..N that every source has: returns (N, note).

  `counts`: source label ('fold list', 'frames', 'maps', ...) -> its number
  of frames. The note is '' when all agree, else says what was dropped.
  Raises ReleaseError('count_mismatch') when they differ by more than
  `SYNC_SLACK_FRAMES` (or a source has none).
  """
  kept, most = min(counts.values()), max(counts.values())
  listing = ", ".join(f"{n} {label}" for label, n in counts.items())
  if kept == 0:
    empty = [label for label, n in counts.items() if n == 0]
    raise ReleaseError("count_mismatch", where, f"{listing}: no {', no '.join(empty)}")
  if most - kept > SYNC_SLACK_FRAMES:
    raise ReleaseError("count_mismatch", where, f"{listing}: more than "
                       f"{SYNC_SLACK_FRAMES} frames apart")
  if kept == most:
    return kept, ""
  return kept, f"{listing}: kept frames 1..{kept}, which all have"


# --- MATLAB files -------------------------------------------------------------

def _h5_array(item, path, name) -> np.ndarray:
  """One MATLAB variable of a v7.3 file. HDF5 stores MATLAB's column-major
  arrays with the dimensions reversed, hence the transposes."""
  attrs = item.attrs
  if isinstance(item, h5py.Group):
    if "MATLAB_sparse" not in attrs:
      raise ReleaseError("bad_fixations", path, f"variable {name} is a struct/cell, "
                         "not a numeric array")
    rows, jc = int(attrs["MATLAB_sparse"]), np.asarray(item["jc"])
    data = np.asarray(item["data"]) if "data" in item else np.zeros(0)
    ir = np.asarray(item["ir"]) if "ir" in item else np.zeros(0, np.int64)
    return scipy.sparse.csc_matrix((data, ir, jc), shape=(rows, len(jc) - 1)).toarray()
  if attrs.get("MATLAB_empty", 0):
    return np.zeros(tuple(np.asarray(item).astype(int)), np.uint8)   # data = MATLAB dims
  array = np.asarray(item)
  return array.T if array.ndim >= 2 else array


def read_mat_variable(source, name: str, path=None) -> np.ndarray:
  """Variable `name` of a MATLAB .mat file as a dense ndarray.

  `source`: a path or the file's bytes (`path` then names it in errors).
  v4/v5/v7 through `scipy.io.loadmat`, v7.3 (HDF5) through h5py; sparse
  matrices are densified. Raises ReleaseError('bad_fixations') naming the
  file for an unreadable file or a missing variable.
  """
  path = str(path or source)
  data = pathlib.Path(source).read_bytes() if not isinstance(source, bytes) else source
  try:
    major, _ = scipy.io.matlab.matfile_version(io.BytesIO(data))
    if major == 2:   # v7.3: an HDF5 file behind a 512-byte MATLAB header
      with h5py.File(io.BytesIO(data), "r") as f:
        if name not in f:
          raise ReleaseError("bad_fixations", path, f"no variable {name!r} "
                             f"(has {sorted(k for k in f if not k.startswith('#'))})")
        return _h5_array(f[name], path, name)
    content = scipy.io.loadmat(io.BytesIO(data), variable_names=[name])
  except ReleaseError:
    raise
  except Exception as e:   # scipy and h5py raise many types for damaged files
    raise ReleaseError("bad_fixations", path,
                       f"cannot read as a MATLAB file ({type(e).__name__}: {e})") from None
  if name not in content:
    raise ReleaseError("bad_fixations", path, f"no variable {name!r}")
  value = content[name]
  return value.toarray() if scipy.sparse.issparse(value) else np.asarray(value)


def read_fixation_mat(source, path=None) -> np.ndarray:
  """Binary fixation map of a STAViS `fixMap_%05d.mat`: bool (H, W), True
  where variable `FIXATION_VARIABLE` is nonzero (`read_mat_variable`: any
  MATLAB version, dense or sparse; same `source`/`path` and errors)."""
  return read_mat_variable(source, FIXATION_VARIABLE, path) > 0


def decoded_frames(path: pathlib.Path, frame_ids) -> list[np.ndarray]:
  """RGB uint8 frames of 1-based `frame_ids` as PyAV decodes the first video
  stream (decoding stops after the last one asked for). Raises ReleaseError
  for an undecodable file or a frame past its end."""
  import av   # pylint: disable=g-import-not-at-top (only DHF1K AVIs need it)
  wanted, found = set(frame_ids), {}
  try:
    with av.open(str(path)) as container:
      for index, frame in enumerate(
          container.decode(container.streams.video[0]), 1):
        if index in wanted:
          found[index] = frame.to_ndarray(format="rgb24")
        if len(found) == len(wanted):
          break
  except av.error.FFmpegError as e:
    raise ReleaseError("bad_video", path, f"cannot decode ({e})") from None
  if len(found) < len(wanted):
    raise ReleaseError("bad_video", path, f"has no frame "
                       f"{min(wanted - set(found))}")
  return [found[f] for f in frame_ids]


def decoded_frame_count(path: pathlib.Path) -> int:
  """Frames PyAV decodes from the first video stream (what the converter
  writes; container headers are not trusted for AVIs)."""
  import av   # pylint: disable=g-import-not-at-top (only DHF1K AVIs need it)
  try:
    with av.open(str(path)) as container:
      return sum(1 for _ in container.decode(container.streams.video[0]))
  except av.error.FFmpegError as e:
    raise ReleaseError("bad_video", path, f"cannot decode ({e})") from None
