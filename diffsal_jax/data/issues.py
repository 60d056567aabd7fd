"""Problems found in a raw release, reported with the file they concern.

A problem is either fatal for its video (the video is left out of the output,
every other video still converts, and `convert` exits 1 unless `--skip_bad`)
or a note (`fatal=False`): something the converter corrected or flagged the
way the published loaders do (an all-zero map, frame counts a frame or two
apart, files numbered from 0). Notes are reported but never fail a run.
"""

from __future__ import annotations

import dataclasses

# kind -> advice printed in the summary.
FIXES = {
    "corrupt_image": "re-extract or re-download the file",
    "missing_frame": "re-extract the frames of this video",
    "count_mismatch": "frames, maps, fixation files and the fold list must agree to "
                      "within 2 frames; restore the missing files",
    "frame_count_adjusted": "none needed: only the frames that all files have are used",
    "renumbered": "none needed: files numbered from 0 are read as frames 1..N",
    "ambiguous_name": "keep one file per frame number (e.g. 1.png or 0001.png, not both)",
    "bad_text": "save the list as UTF-8 (or UTF-16 with BOM)",
    "bad_image_mode": "save the image as 8- or 16-bit grey/RGB (PNG or JPEG)",
    "missing_file": "restore the file from the release",
    "bad_audio": "re-extract the wav (mono PCM) of this video",
    "bad_fixations": "restore the fixation file from the release (MATLAB v4-v7.3 .mat "
                     "with variable eyeMap, or a PNG)",
    "missing_annotations": "put the video's maps (and fixations) where the layout expects "
                           "them, or remove the video",
    "empty_map": "none needed: frame kept, never used as a target (the published loader skips it "
                 "too)",
    "bad_fold_line": "lines must read `name nframes fps`",
    "fold_list_conflict": "one video must have the same nframes/fps in every list",
    "bad_video": "re-download the video file",
}


@dataclasses.dataclass(frozen=True)
class Issue:
  """One problem: `kind` (a key of FIXES), the file, and what is wrong."""
  kind: str
  path: str
  detail: str
  video: str = ""
  fatal: bool = True

  def __str__(self) -> str:
    where = f"[{self.video}] " if self.video else ""
    return f"{where}{self.kind}: {self.path}: {self.detail} (fix: {FIXES[self.kind]})"


class BadInput(Exception):
  """Raised while converting a video; carries the issue that stops it."""

  def __init__(self, issue: Issue):
    super().__init__(str(issue))
    self.issue = issue
