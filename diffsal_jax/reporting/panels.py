"""Pictures of saliency: jet heat maps, overlays, fixation dots, thumbnails.

Shared by the overlay video (`inference/overlay.py`) and the HTML reports.
Frames are RGB uint8 `(H, W, 3)`; maps are `(H, W)`, uint8 or float in
[0, 1]; fixations are bool `(H, W)`.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from diffsal_jax.data import atomic_files


def _jet_table() -> np.ndarray:
  """(256, 3) uint8 jet colour map: blue (0) to red (255)."""
  x = np.linspace(0.0, 1.0, 256)[:, None]
  centres = np.array([0.75, 0.5, 0.25])  # red, green, blue
  rgb = np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


_JET = _jet_table()


def to_uint8(saliency: np.ndarray) -> np.ndarray:
  """A map as uint8 (H, W): uint8 unchanged, floats in [0, 1] scaled by 255
  (values outside [0, 1] clipped)."""
  if saliency.dtype == np.uint8:
    return saliency
  return np.round(np.clip(saliency, 0.0, 1.0) * 255).astype(np.uint8)


def blend_heatmap(frame: np.ndarray, saliency: np.ndarray,
                  alpha: float = 0.6) -> np.ndarray:
  """Jet heat map of uint8 `saliency` (H, W) over RGB `frame`, map-weighted:
  where the map is 0 the frame shows unchanged, at 255 with opacity
  `alpha`."""
  weight = (alpha / 255.0) * saliency.astype(np.float32)[..., None]
  heat = _JET[saliency].astype(np.float32)
  out = frame.astype(np.float32) * (1.0 - weight) + heat * weight
  return np.round(out).astype(np.uint8)


def resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """uint8 (H, W) or (H, W, 3) resized to `size_hw` (bilinear)."""
  if image.shape[:2] == tuple(size_hw):
    return image
  resized = Image.fromarray(image).resize((size_hw[1], size_hw[0]),
                                          Image.BILINEAR)
  return np.asarray(resized)


def grey_rgb(saliency: np.ndarray) -> np.ndarray:
  """A map as a grey RGB picture (white = salient)."""
  return np.repeat(to_uint8(saliency)[..., None], 3, axis=-1)


def with_fixations(picture: np.ndarray, fixations: np.ndarray,
                   radius: int = 1) -> np.ndarray:
  """RGB `picture` with a red square of half-width `radius` at every
  fixated pixel of `fixations` (any size: points are rescaled)."""
  out = picture.copy()
  h, w = out.shape[:2]
  rows, cols = np.nonzero(fixations)
  rows = rows * h // fixations.shape[0]
  cols = cols * w // fixations.shape[1]
  for dr in range(-radius, radius + 1):
    for dc in range(-radius, radius + 1):
      out[np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1)] = (255, 0, 0)
  return out


def evenly_spaced(frame_ids: Sequence[int], count: int) -> list[int]:
  """Up to `count` (>= 1) of `frame_ids` spread from first to last: the
  frames a report's strip shows."""
  if len(frame_ids) <= count:
    return list(frame_ids)
  picks = np.linspace(0, len(frame_ids) - 1, count).round().astype(int)
  return [frame_ids[i] for i in sorted(set(picks.tolist()))]


def thumbnail_size(shape_hw: tuple[int, int], width: int) -> tuple[int, int]:
  """(height, width) of a `width`-wide thumbnail keeping the aspect ratio."""
  h, w = shape_hw
  return max(1, round(h * width / w)), width


def save_jpeg(path: pathlib.Path, picture: np.ndarray, quality: int = 85) -> None:
  """Writes RGB uint8 `picture` as a JPEG, atomically (without fsync: a
  report writes many; a crash may lose the last ones, never half of one)."""
  buffer = io.BytesIO()
  Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
  atomic_files.write_bytes(path, buffer.getvalue(), fsync=False)
