"""Saliency metrics with the MIT saliency benchmark definitions.

NumPy versions (used by `diffsal_jax.evaluate`) of the MATLAB code of the
MIT benchmark, cvzoya/saliency `code_forMetrics/` (CC.m, similarity.m,
KLdiv.m, NSS.m, AUC_Judd.m, AUC_Borji.m, AUC_shuffled.m), edge cases
included; `metrics_jax` holds the jittable float32 twins used for validation
during training. All take one `(H, W)` prediction and one `(H, W)` ground
truth (saliency map, or binary fixation map where named so).

Conventions of the MATLAB code:
  * A prediction of another size is resized to the ground-truth size with
    MATLAB `imresize` (`diffsal_jax.evaluation.imresize`).
  * CC and NSS z-score with the sample standard deviation (ddof = 1, MATLAB
    `std`). SIM min-max then sum normalises each map that is not all zero.
    KLD clips bicubic overshoot below 0 (as imresize does on 8-bit maps),
    sum normalises each map that is not all zero and uses MATLAB's
    eps = 2^-52.
  * AUC-Judd adds uniform jitter of 1e-7 and sweeps thresholds at the
    fixated saliency values. AUC-Borji and shuffled AUC sweep, per split,
    the thresholds `0:step:m` of MATLAB's colon operator (`matlab_colon`),
    m the split's largest value, over the min-max normalised map, and
    average `n_splits` draws of negatives (uniform pixels, or fixated pixels
    of `other_map`).

Values on degenerate inputs (what the MATLAB functions return; NaN means the
frame is skipped in the averages, as the STAViS scripts do):

  | input               | CC  | SIM | KLD         | NSS | AUC-J | AUC-B | sAUC
  |---------------------|-----|-----|-------------|-----|-------|-------|-----
  | all-zero prediction | NaN | 0   | sum g log(g/eps) | NaN | 0.5 | NaN | NaN
  | constant prediction | NaN | NaN | KL to unif. | NaN | 0.5   | NaN   | NaN
  | all-zero map        | NaN | 0   | 0           |  -  |  -    |  -    |  -
  | constant map        | NaN | NaN | finite      |  -  |  -    |  -    |  -
  | no fixated pixel    |  -  |  -  |  -          | NaN | NaN   | NaN   | NaN
  | one fixated pixel   |  -  |  -  |  -          | ok  | ok    | NaN   | ok
  | all pixels fixated  |  -  |  -  |  -          | ~0  | NaN   | ok    | ok
  | empty other map     |  -  |  -  |  -          |  -  |  -    |  -    | NaN
  | NaN in prediction   | NaN | NaN | NaN         | NaN | NaN   | NaN   | NaN

AUC-J of a constant map: MATLAB's jitter makes it the AUC of uniform noise,
a random value around 0.5; we return its expected value, exactly 0.5.
AUC-B needs at least two fixated pixels (AUC_Borji.m returns NaN for one).
"""

from __future__ import annotations

import numpy as np

from diffsal_jax.evaluation.imresize import resize_map, resize_matrix, resize_taps

# MATLAB `eps` (2^-52), the constant KLdiv.m adds.
EPS = float(np.finfo(np.float64).eps)
JUDD_JITTER = 1e-7
METRIC_NAMES = ("cc", "sim", "kld", "nss", "auc_judd", "auc_borji", "sauc")

RngLike = np.random.Generator | int | None

__all__ = ["resize_map", "resize_matrix", "resize_taps"]  # Re-exported.


def _prediction(pred, shape) -> np.ndarray:
  return resize_map(np.asarray(pred, dtype=np.float64), tuple(shape))


def _is_constant(x: np.ndarray) -> bool:
  return bool(x.max() == x.min())


def _has_nan(*maps: np.ndarray) -> bool:
  return any(bool(np.isnan(m).any()) for m in maps)


def _zscore(x: np.ndarray) -> np.ndarray:
  return (x - x.mean()) / x.std(ddof=1)


def _minmax(x: np.ndarray) -> np.ndarray:
  return (x - x.min()) / (x.max() - x.min())


def _rng(rng: RngLike) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else (
      np.random.default_rng(rng))


def cc(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """Pearson correlation of the z-scored maps (CC.m); NaN if one is constant."""
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = _prediction(pred, gt_map.shape)
  if _has_nan(pred, gt_map) or _is_constant(pred) or _is_constant(gt_map):
    return float("nan")
  a, b = _zscore(pred), _zscore(gt_map)
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _sim_distribution(x: np.ndarray) -> np.ndarray | None:
  """similarity.m: min-max then sum; an all-zero map stays all zero."""
  if not x.any():
    return x
  if _is_constant(x):
    return None  # MATLAB divides 0 by 0: every value NaN.
  x = _minmax(x)
  return x / x.sum()


def sim(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """Histogram intersection (similarity.m), in [0, 1].

  An all-zero map counts as an all-zero distribution (SIM 0); a constant
  non-zero map is NaN.
  """
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = _prediction(pred, gt_map.shape)
  if _has_nan(pred, gt_map):
    return float("nan")
  a, b = _sim_distribution(pred), _sim_distribution(gt_map)
  if a is None or b is None:
    return float("nan")
  return float(np.minimum(a, b).sum())


def kld(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """KL divergence of the prediction from the ground truth (KLdiv.m).

  sum g log(eps + g / (p + eps)) with p, g sum-normalised unless all zero
  (an all-zero ground truth gives 0). Negative values left by bicubic
  resizing are set to 0 first: the benchmark's predictions are 8-bit images,
  and MATLAB's imresize saturates uint8 output at 0 (on doubles KLdiv.m
  would take the logarithm of negative numbers and return a complex value).
  """
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = _prediction(pred, gt_map.shape)
  if _has_nan(pred, gt_map):
    return float("nan")
  pred = np.maximum(pred, 0.0)
  if pred.any():
    pred = pred / pred.sum()
  if gt_map.any():
    gt_map = gt_map / gt_map.sum()
  return float((gt_map * np.log(EPS + gt_map / (pred + EPS))).sum())


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
  """Mean of the z-scored prediction at the fixated pixels (NSS.m)."""
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  if not fixations.any() or _has_nan(pred) or _is_constant(pred):
    return float("nan")
  return float(_zscore(pred)[fixations].mean())


def _trapezoid(x: np.ndarray, y: np.ndarray, axis: int = -1):
  dx = np.diff(x, axis=axis)
  y0 = np.take(y, np.arange(y.shape[axis] - 1), axis=axis)
  y1 = np.take(y, np.arange(1, y.shape[axis]), axis=axis)
  return (dx * (y0 + y1) / 2).sum(axis=axis)


def auc_judd(pred: np.ndarray, fixations: np.ndarray, jitter: bool = True,
             rng: RngLike = None) -> float:
  """AUC with thresholds at the saliency values of the fixated pixels.

  AUC_Judd.m: tp_i = i / n_fix and fp_i = (#{S >= t_i} - i) / (n_pixels -
  n_fix) at the i-th largest fixated value t_i, between (0, 0) and (1, 1).
  NaN without fixations or with every pixel fixated; 0.5 for a constant map.
  """
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  n_fix, n_pixels = int(fixations.sum()), fixations.size
  if n_fix == 0 or n_fix == n_pixels or _has_nan(pred):
    return float("nan")
  if _is_constant(pred):
    return 0.5
  if jitter:
    pred = pred + _rng(rng).random(pred.shape) * JUDD_JITTER
  values = _minmax(pred).ravel()
  thresholds = np.sort(values[fixations.ravel()])[::-1]
  above = n_pixels - np.searchsorted(np.sort(values), thresholds, "left")
  rank = np.arange(1, n_fix + 1)
  tp = np.concatenate([[0.0], rank / n_fix, [1.0]])
  fp = np.concatenate([[0.0], (above - rank) / (n_pixels - n_fix), [1.0]])
  return float(_trapezoid(fp, tp))


def _matlab_round(x: float) -> float:
  return float(np.sign(x) * np.floor(abs(x) + 0.5))  # Halves away from 0.


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
  """MATLAB's `a:d:b` as float64, bit for bit.

  Follows MathWorks' `colonop.m` (technical solution 1-4FLI96, "How does the
  COLON operator work?"): n = round((b - a) / d), less one if a + n d
  overshoots b by more than tol = 2 eps max(|a|, |b|); the end point
  c = a + n d snaps to b when within tol; the first half is a + k d, the
  second half c - k d, and the middle of an odd-length vector (a + c) / 2.
  So `0:0.1:0.3` ends exactly at 0.3 and its 0.7 (in 0:0.1:1) is 1 - 0.3,
  one ulp below 7 * 0.1 of `np.arange`.
  """
  a, d, b = float(a), float(d), float(b)
  if not (np.isfinite(a) and np.isfinite(d) and np.isfinite(b)):
    return np.array([np.nan])
  if d == 0 or (a < b and d < 0) or (b < a and d > 0):
    return np.zeros(0)
  tol = 2.0 * EPS * max(abs(a), abs(b))
  sig = float(np.sign(d))
  if a == np.floor(a) and d == 1:
    n = int(np.floor(b) - a)
  elif a == np.floor(a) and d == np.floor(d):
    q = np.floor(a / d)
    n = int(np.floor((b - (a - q * d)) / d) - q)
  else:
    n = int(_matlab_round((b - a) / d))
    if sig * (a + n * d - b) > tol:
      n -= 1
  c = a + n * d
  if sig * (c - b) > -tol:
    c = b
  out = np.empty(n + 1)
  k = np.arange(n // 2 + 1)
  out[k] = a + k * d
  out[n - k] = c - k * d
  if n % 2 == 0:
    out[n // 2] = (a + c) / 2
  return out


def threshold_grid(step: float, top: float = 1.0) -> np.ndarray:
  """Descending thresholds `fliplr(0:step:top)` of AUC_Borji/AUC_shuffled."""
  return matlab_colon(0.0, step, top)[::-1]


def split_thresholds(tops: np.ndarray, step: float) -> np.ndarray:
  """`(T, n_splits)` descending grids `0:step:top` of each split's `top`.

  Shorter grids are padded at the start with +inf: a threshold above every
  value adds only the ROC point (0, 0), which adds no area.
  """
  grids = {top: threshold_grid(step, top) for top in np.unique(tops)}
  length = max(len(grid) for grid in grids.values())
  out = np.full((length, len(tops)), np.inf)
  for top, grid in grids.items():
    out[length - len(grid):, tops == top] = grid[:, None]
  return out


def auc_from_negatives(pred: np.ndarray, fixations: np.ndarray,
                       negative_idx: np.ndarray, step: float = 0.1) -> float:
  """AUC-Borji / sAUC given negatives: `(n_neg, n_splits)` flat pixel ids.

  Per split s (AUC_Borji.m, AUC_shuffled.m): thresholds `0:step:m_s`, m_s
  the largest normalised value among the fixated pixels and the split's
  negatives; tp, fp = fractions of fixated / negative pixels >= threshold;
  trapezoid area from (0, 0) to (1, 1); the mean over splits. NaN without
  fixations or negatives, or for a constant map.
  """
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  negative_idx = np.asarray(negative_idx)
  if (not fixations.any() or negative_idx.shape[0] == 0 or _has_nan(pred)
      or _is_constant(pred)):
    return float("nan")
  values = _minmax(pred).ravel()
  positives = values[fixations.ravel()]
  negatives = values[negative_idx]  # (n_neg, n_splits)
  grid = split_thresholds(np.maximum(positives.max(), negatives.max(axis=0)),
                          step)  # (T, n_splits)
  tp = (positives[None, :, None] >= grid[:, None]).mean(axis=1)
  fp = (negatives[None] >= grid[:, None]).mean(axis=1)
  zeros, ones = np.zeros((1, grid.shape[1])), np.ones((1, grid.shape[1]))
  tp = np.concatenate([zeros, tp, ones])
  fp = np.concatenate([zeros, fp, ones])
  return float(_trapezoid(fp, tp, axis=0).mean())


def borji_negatives(n_pixels: int, n_fix: int, n_splits: int,
                    rng: RngLike = None) -> np.ndarray:
  """Uniform random pixels, as many as fixations, per split (with repeats)."""
  return _rng(rng).integers(0, n_pixels, size=(n_fix, n_splits))


def shuffled_negatives(other_map: np.ndarray, n_fix: int, n_splits: int,
                       rng: RngLike = None) -> np.ndarray:
  """Per split, min(n_fix, n_other) distinct fixated pixels of other_map."""
  rng = _rng(rng)
  other = np.flatnonzero(np.asarray(other_map) > 0)
  count = min(n_fix, other.size)
  picks = [rng.choice(other.size, count, replace=False)
           for _ in range(n_splits)]
  return other[np.stack(picks, axis=1)] if count else (
      np.zeros((0, n_splits), np.int64))


def auc_borji(pred: np.ndarray, fixations: np.ndarray, n_splits: int = 100,
              step: float = 0.1, rng: RngLike = None) -> float:
  """AUC with uniformly sampled negatives, averaged over `n_splits` draws.

  NaN with fewer than two fixated pixels (AUC_Borji.m).
  """
  fixations = np.asarray(fixations) > 0
  n_fix = int(fixations.sum())
  if n_fix <= 1:
    return float("nan")
  negatives = borji_negatives(fixations.size, n_fix, n_splits, rng)
  return auc_from_negatives(pred, fixations, negatives, step)


def auc_shuffled(pred: np.ndarray, fixations: np.ndarray,
                 other_fixations: np.ndarray, n_splits: int = 100,
                 step: float = 0.1, rng: RngLike = None) -> float:
  """Shuffled AUC: negatives drawn from other frames' fixations."""
  fixations = np.asarray(fixations) > 0
  other_fixations = np.asarray(other_fixations)
  if other_fixations.shape != fixations.shape:
    raise ValueError(f"other_fixations shape {other_fixations.shape} differs "
                     f"from fixations shape {fixations.shape}")
  negatives = shuffled_negatives(other_fixations, int(fixations.sum()),
                                 n_splits, rng)
  return auc_from_negatives(pred, fixations, negatives, step)
