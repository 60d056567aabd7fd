"""Clip sampling of the published loaders (frame numbers are 1-based).

DHF1K (datasets/dhf1k_data.py, len_snippet=32 of which 16 frames are used):
clips of T frames start at s = 0, T, 2T, ... < N - 2T for training and at
every s < N - 2T for validation; test adds the start N - 2T. The target is
the frame in the middle, s + T//2 + 1 (the 9th of 16).

AV (datasets/saliency_db.py + STAViS temporal transforms): windows of up to
90 frames start at j = 1, 1 + (90 - T), ... (train and val) or at every j
(test, "exhaustive"); each is centre-cropped to T frames, looped when short;
the target is the rounded-half-up median of the clip's frame numbers.
"""

from __future__ import annotations

import decimal

import numpy as np

AV_WINDOW = 90          # published step_duration


def dhf1k_clips(num_frames: int, clip_len: int, split: str) -> list[tuple[list[int], int]]:
  """(frame numbers, target frame) of the published DHF1K loader."""
  stop = num_frames - 2 * clip_len
  starts = list(range(0, stop, clip_len if split == "train" else 1))
  if split == "test" and stop >= 0:
    starts.append(stop)   # published: the extra start N - len_snippet
  clips = []
  for start in starts:
    frames = list(range(start + 1, start + clip_len + 1))
    clips.append((frames, frames[clip_len // 2]))
  return clips


def _centre_crop_looped(frames: list[int], size: int) -> list[int]:
  """STAViS TemporalCenterCrop: centre `size` frames, looped when short."""
  begin = max(0, len(frames) // 2 - size // 2)
  out = frames[begin:begin + size]
  for frame in out:           # extends while iterating: loops the sequence
    if len(out) >= size:
      break
    out.append(frame)
  return out


def _median_round_half_up(frames: list[int]) -> int:
  median = decimal.Decimal(float(np.median(frames)))
  return int(median.to_integral_value(rounding=decimal.ROUND_HALF_UP))


def av_clips(num_frames: int, clip_len: int, exhaustive: bool) -> list[tuple[list[int], int]]:
  """(frame numbers, target frame) of the published saliency_db loader."""
  if num_frames <= 1:
    return []
  step, window = (1, clip_len) if exhaustive else (max(1, AV_WINDOW - clip_len), AV_WINDOW)
  clips = []
  for j in range(1, num_frames, step):
    frames = _centre_crop_looped(list(range(j, min(num_frames + 1, j + window))), clip_len)
    clips.append((frames, _median_round_half_up(frames)))
  return clips
