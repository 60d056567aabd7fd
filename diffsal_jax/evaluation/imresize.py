"""MATLAB `imresize` (bicubic) on 2-D maps, as the saliency benchmarks use it.

The MIT benchmark (cvzoya/saliency `code_forMetrics/*.m`) and the STAViS
evaluation (`eval_code/eval_*.m`) bring a prediction to the ground-truth size
with `imresize(map, size(gt))`. This module follows MATLAB's `imresize.m`:
  * scale = out / in per axis; output pixel i (1-based) maps to input
    coordinate u = i / scale + (1 - 1 / scale) / 2;
  * Keys cubic kernel (a = -0.5), 4 taps wide; when shrinking (scale < 1) it
    is stretched to 4 / scale taps and scaled by `scale` (antialiasing);
  * taps start at floor(u - width / 2), there are ceil(width) + 2 of them,
    weights are normalised to sum 1 per output pixel;
  * out-of-range taps are mirrored through the index table
    [1:in, in:-1:1] (modulo 2 in), i.e. the border pixel is repeated;
  * the axis with the smaller scale is resized first (`dimensionOrder`).
Inputs are resized as float64 (MATLAB's path for `double` maps, which is what
STAViS passes after `im2double`).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse


def _cubic(x: np.ndarray) -> np.ndarray:
  absx = np.abs(x)
  absx2, absx3 = absx**2, absx**3
  return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) +
          (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) *
          ((absx > 1) & (absx <= 2)))


@functools.lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-output-pixel weights and 0-based source indices along one axis.

  Returns (weights, index), both `(out_size, taps)`: float64 weights summing
  to 1 per row and int64 source indices (mirrored at the borders), MATLAB
  `imresize` `contributions` for the cubic kernel.
  """
  scale = out_size / in_size
  width = 4.0
  kernel = _cubic
  if scale < 1:  # Antialiasing: stretch the kernel when shrinking.
    kernel = lambda x: scale * _cubic(scale * x)  # noqa: E731
    width /= scale
  centres = np.arange(1, out_size + 1) / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(centres - width / 2)
  taps = int(np.ceil(width)) + 2
  index = left[:, None] + np.arange(taps)[None, :]
  weights = kernel(centres[:, None] - index)
  weights /= weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
  index = mirror[np.mod(index - 1, 2 * in_size).astype(np.int64)]
  return weights, index


@functools.lru_cache(maxsize=64)
def _sparse_resize_matrix(in_size: int,
                          out_size: int) -> scipy.sparse.csr_array:
  weights, index = resize_taps(in_size, out_size)
  rows = np.broadcast_to(np.arange(out_size)[:, None], index.shape)
  # Duplicate (row, index) pairs from mirrored taps are summed on conversion.
  return scipy.sparse.coo_array(
      (weights.ravel(), (rows.ravel(), index.ravel())),
      shape=(out_size, in_size)).tocsr()


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Dense float64 `(out, in)` matrix: resize_map(x) = R_rows @ x @ R_cols.T."""
  return _sparse_resize_matrix(in_size, out_size).toarray()


def resize_map(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """`imresize(map, shape)` of a 2-D map, as float64 `(shape)`.

  A map already of `shape` is returned as float64 unchanged. The sparse
  matrix products sum a pixel's taps in another order than MATLAB's loop, so
  values may differ from MATLAB's in the last bit (about 1e-16).
  """
  saliency = np.asarray(saliency, dtype=np.float64)
  if saliency.ndim != 2:
    raise ValueError(f"resize_map takes a 2-D map, got shape {saliency.shape}")
  if saliency.shape == tuple(shape):
    return saliency
  rows = _sparse_resize_matrix(saliency.shape[0], shape[0])
  cols = _sparse_resize_matrix(saliency.shape[1], shape[1])
  # MATLAB resizes the axis with the smaller scale first; in float64 the
  # order only moves the last bits, kept to stay as close as cheaply possible.
  if shape[1] / saliency.shape[1] < shape[0] / saliency.shape[0]:
    return np.ascontiguousarray(rows @ (cols @ saliency.T).T)
  return np.ascontiguousarray((cols @ (rows @ saliency).T).T)
