"""When each frame of a user video is shown, and which way up.

FrameTiming: the presentation time of every frame (from the container's
timestamps), constant or variable frame rate, and the span the video covers;
the audio window of a frame is centred on its own time
(`audio.time_sample_bounds`) and the overlay is written with the same
timestamps.

display_transposes: the display matrix (rotation / flip side data of phone
videos) turned into the PIL transposes that show the frame upright, the way
FFmpeg's `autorotate` (fftools/ffmpeg_filter.c) interprets it.
"""

from __future__ import annotations

import dataclasses
import fractions
from typing import Sequence

import av
import numpy as np
from PIL import Image

_T = Image.Transpose

# A video is constant-rate when every frame interval is within this fraction
# of the nominal period (or within 2 ticks of the time base: millisecond time
# bases store 29.97 fps as 33/34 ms intervals).
_CFR_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class FrameTiming:
  """Presentation times of N frames.

  pts: (N,) int64 timestamps in `time_base` units, from the first frame (0).
  end: the end of the last frame (its pts + its duration), same units.
  fps: the nominal rate (constant rate) or N / duration (variable rate).
  vfr: True when the intervals differ (phone, screen capture, dropped frames).
  times: (N,) float64 seconds from the first frame. At constant rate they are
    (f-1) * (1.0/fps), the values the published loaders (and main) use, so
    the audio windows equal main's exactly; otherwise pts * time_base.
  """
  pts: np.ndarray
  time_base: fractions.Fraction
  end: int
  fps: float
  vfr: bool
  times: np.ndarray

  @property
  def num_frames(self) -> int:
    return int(self.pts.shape[0])

  @property
  def duration(self) -> float:
    """Seconds from the start of the first frame to the end of the last."""
    return float(self.end * self.time_base)

  @classmethod
  def constant(cls, num_frames: int,
               fps: fractions.Fraction | float) -> FrameTiming:
    """Frames every 1/fps s (a frame folder, or a stream without timestamps)."""
    rate = fractions.Fraction(fps).limit_denominator(1001)
    return cls(np.arange(num_frames, dtype=np.int64), 1 / rate, num_frames,
               float(fps), False, np.arange(num_frames) * (1.0 / float(fps)))

  @classmethod
  def from_pts(cls, pts: Sequence[int], time_base: fractions.Fraction,
               last_duration: int, nominal_fps: fractions.Fraction | float
               ) -> FrameTiming:
    """From the frames' timestamps (any order; presentation order is sorted).

    last_duration: the last frame's duration in ticks (0 if unknown: the
    median interval, else one nominal period, is used).
    Raises ValueError on repeated timestamps (two frames shown at once).
    """
    pts = np.sort(np.asarray(pts, np.int64))
    if pts.size == 0:
      raise ValueError("no frames")
    if np.any(np.diff(pts) == 0):
      raise ValueError("two frames have the same timestamp")
    pts = pts - pts[0]
    nominal = float(1 / (fractions.Fraction(nominal_fps) * time_base))  # ticks
    steps = np.diff(pts)
    period = float(np.median(steps)) if steps.size else nominal
    tolerance = max(period * _CFR_TOLERANCE, 2.0)
    vfr = bool(steps.size and np.max(np.abs(steps - period)) > tolerance)
    if last_duration <= 0:
      last_duration = round(period)
    end = int(pts[-1] + last_duration)
    if vfr:
      fps = float(pts.size / (end * time_base))
      times = pts * float(time_base)
    else:
      # The container's rate, unless its intervals say otherwise (a rate
      # averaged over a stream header that lies).
      fps = float(nominal_fps) if abs(nominal - period) <= tolerance else (
          float(1 / (period * time_base)))
      times = np.arange(pts.size) * (1.0 / fps)
    return cls(pts, fractions.Fraction(time_base), end, fps, vfr, times)


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
  """The frame's 3x3 display matrix (FFmpeg's 16.16 fixed-point layout), or
  None when it has none (PyAV's side-data buffer, read as 9 int32)."""
  data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
  return None if data is None else np.frombuffer(bytes(data), "<i4").copy()


def display_transposes(frame: av.VideoFrame) -> list[Image.Transpose]:
  """PIL transposes that show `frame` as players do (FFmpeg's autorotate).

  `frame.rotation` is FFmpeg's av_display_rotation_get (counter-clockwise
  degrees); the flips come from the signs of the matrix as in
  fftools/ffmpeg_filter.c: 90 degrees clockwise is transpose=clock (or
  cclock_flip when mirrored), 180 is hflip and/or vflip, 270 is cclock (or
  clock_flip), 0 with a negative y scale is vflip.
  Raises ValueError for angles that are not a multiple of 90 degrees.
  """
  matrix = display_matrix(frame)
  if matrix is None:
    return []
  clockwise = (-frame.rotation) % 360
  if abs(clockwise - 90) < 1:
    return [_T.TRANSPOSE if matrix[3] > 0 else _T.ROTATE_270]
  if abs(clockwise - 180) < 1:
    return ([_T.FLIP_LEFT_RIGHT] if matrix[0] < 0 else []) + (
        [_T.FLIP_TOP_BOTTOM] if matrix[4] < 0 else [])
  if abs(clockwise - 270) < 1:
    return [_T.TRANSVERSE if matrix[3] < 0 else _T.ROTATE_90]
  if clockwise < 1 or clockwise > 359:
    return [_T.FLIP_TOP_BOTTOM] if matrix[4] < 0 else []
  # frame.rotation is truncated to whole degrees; the matrix gives the angle.
  ccw = -np.degrees(np.arctan2(matrix[1], matrix[0]))
  raise ValueError(f"display rotation of {ccw:.0f} degrees counter-clockwise "
                   "(only multiples of 90 are supported)")


def describe_transposes(ops: Sequence[Image.Transpose]) -> str:
  """'rotated 90 clockwise', 'flipped horizontally', ... for the summary."""
  names = {_T.ROTATE_270: "rotated 90 degrees clockwise",
           _T.ROTATE_90: "rotated 90 degrees counter-clockwise",
           _T.TRANSPOSE: "transposed (rotated 90 and mirrored)",
           _T.TRANSVERSE: "transversed (rotated 270 and mirrored)",
           _T.FLIP_LEFT_RIGHT: "flipped horizontally",
           _T.FLIP_TOP_BOTTOM: "flipped vertically"}
  return ", ".join(names[op] for op in ops) or "none"


def apply_transposes(image: Image.Image,
                     ops: Sequence[Image.Transpose]) -> Image.Image:
  for op in ops:
    image = image.transpose(op)
  return image
