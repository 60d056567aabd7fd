"""Problems found in a raw release, reported with the file they concern.

A problem is either fatal for its video (the video is left out of the output,
every other video still converts) or only flags one frame (an all-zero map:
the frame is stored but never used as a target). Both kinds make `convert`
exit non-zero unless `--skip_bad` is given.
"""

from __future__ import annotations

import dataclasses

# kind -> advice printed in the summary.
FIXES = {
    "corrupt_image": "re-extract or re-download the file",
    "missing_frame": "re-extract the frames of this video",
    "count_mismatch": "frames, maps and fixation files must come one per frame",
    "missing_file": "restore the file from the release",
    "bad_audio": "re-extract the wav (mono PCM) of this video",
    "bad_fixations": "restore the fixation file from the release",
    "empty_map": "frame kept, never used as a target (the published loader skips it too)",
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
