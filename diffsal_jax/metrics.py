"""Saliency metrics with the MIT saliency benchmark definitions.

NumPy reference versions (used by `diffsal_jax.evaluate`) and jittable,
vmappable JAX versions (`*_jax`, used for validation during training). All
functions take one `(H, W)` prediction and one `(H, W)` ground truth.

Conventions, following the MATLAB code of the MIT benchmark:
  * A prediction of another size is resized to the ground-truth size with
    MATLAB `imresize` semantics: bicubic (Keys, a = -0.5), antialiased when
    shrinking, mirrored borders. See `resize_map`.
  * CC and NSS z-score with the sample standard deviation (ddof = 1, MATLAB
    `std`); SIM min-max then sum normalises; KLD sum normalises and uses
    eps = 2.2204e-16 (negative values left by bicubic overshoot are clipped
    to 0 so the logarithm stays real).
  * AUC-Judd adds uniform jitter of 1e-7 and sweeps thresholds at the
    fixated saliency values. AUC-Borji and shuffled AUC sweep the fixed grid
    0, step, 2 step, ... <= 1 over min-max normalised maps and average
    `n_splits` draws of negatives (uniform pixels, or pixels of `other_map`).
Undefined cases return NaN (the evaluation skips and counts them):
  * empty fixation map -> NSS, AUC-Judd, AUC-Borji, sAUC are NaN;
  * constant prediction -> CC, SIM, NSS, AUC-Borji, sAUC are NaN; AUC-Judd is
    exactly 0.5 (the expected value of the MIT jittered result, which is
    noise around 0.5); KLD is finite (a uniform distribution);
  * constant ground-truth map -> CC and SIM NaN; all-zero map -> KLD NaN;
  * empty `other_map` -> sAUC NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

EPS = 2.2204e-16
JUDD_JITTER = 1e-7
METRIC_NAMES = ("cc", "sim", "kld", "nss", "auc_judd", "auc_borji", "sauc")

RngLike = np.random.Generator | int | None


# --- Resizing (MATLAB imresize, bicubic) -----------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
  absx = np.abs(x)
  absx2, absx3 = absx**2, absx**3
  return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) +
          (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) *
          ((absx > 1) & (absx <= 2)))


@functools.lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-output-pixel weights and 0-based source indices along one axis.

  MATLAB imresize `contributions` for the cubic kernel: output pixel i maps
  to input coordinate i / scale + (1 - 1 / scale) / 2 (1-based), taps beyond
  the border are mirrored.
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
  """Dense `(out, in)` matrix: resize_map(x) = R_rows @ x @ R_cols.T."""
  return _sparse_resize_matrix(in_size, out_size).toarray()


def resize_map(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Resizes a 2-D map like MATLAB `imresize(map, shape)` on doubles."""
  saliency = np.asarray(saliency, dtype=np.float64)
  if saliency.shape == tuple(shape):
    return saliency
  rows = _sparse_resize_matrix(saliency.shape[0], shape[0]) @ saliency
  cols = _sparse_resize_matrix(saliency.shape[1], shape[1])
  return np.ascontiguousarray((cols @ rows.T).T)


# --- NumPy reference metrics -----------------------------------------------


def _prediction(pred, shape) -> np.ndarray:
  return resize_map(np.asarray(pred, dtype=np.float64), tuple(shape))


def _is_constant(x: np.ndarray) -> bool:
  return bool(x.max() == x.min())


def _zscore(x: np.ndarray) -> np.ndarray:
  return (x - x.mean()) / x.std(ddof=1)


def _minmax(x: np.ndarray) -> np.ndarray:
  return (x - x.min()) / (x.max() - x.min())


def _rng(rng: RngLike) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else (
      np.random.default_rng(rng))


def cc(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """Pearson correlation of the z-scored maps."""
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = _prediction(pred, gt_map.shape)
  if _is_constant(pred) or _is_constant(gt_map):
    return float("nan")
  a, b = _zscore(pred), _zscore(gt_map)
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def sim(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """Histogram intersection of the min-max then sum normalised maps."""
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = _prediction(pred, gt_map.shape)
  if _is_constant(pred) or _is_constant(gt_map):
    return float("nan")
  # Min-max then sum normalisation = shift to 0 then divide by the sum.
  a, b = pred - pred.min(), gt_map - gt_map.min()
  return float(np.minimum(a / a.sum(), b / b.sum()).sum())


def kld(pred: np.ndarray, gt_map: np.ndarray) -> float:
  """KL divergence of the prediction from the ground-truth distribution."""
  gt_map = np.asarray(gt_map, dtype=np.float64)
  pred = np.maximum(_prediction(pred, gt_map.shape), 0.0)
  if not gt_map.any():
    return float("nan")
  if pred.any():
    pred = pred / pred.sum()
  gt_map = gt_map / gt_map.sum()
  return float((gt_map * np.log(EPS + gt_map / (pred + EPS))).sum())


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
  """Mean of the z-scored prediction at the fixated pixels."""
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  if not fixations.any() or _is_constant(pred):
    return float("nan")
  return float(_zscore(pred)[fixations].mean())


def _trapezoid(x: np.ndarray, y: np.ndarray, axis: int = -1):
  dx = np.diff(x, axis=axis)
  y0 = np.take(y, np.arange(y.shape[axis] - 1), axis=axis)
  y1 = np.take(y, np.arange(1, y.shape[axis]), axis=axis)
  return (dx * (y0 + y1) / 2).sum(axis=axis)


def auc_judd(pred: np.ndarray, fixations: np.ndarray, jitter: bool = True,
             rng: RngLike = None) -> float:
  """AUC with thresholds at the saliency values of the fixated pixels."""
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  n_fix, n_pixels = int(fixations.sum()), fixations.size
  if n_fix == 0 or n_fix == n_pixels:
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


def threshold_grid(step: float) -> np.ndarray:
  """Descending thresholds k * step <= 1 used by AUC-Borji and sAUC.

  Thresholds above a split's maximum add only (0, 0) points to its ROC curve,
  so one grid up to 1 (the max of a min-max normalised map) gives the same
  area as the per-split grids `0:step:max` of the MATLAB code.
  """
  count = int(np.floor(1.0 / step + 1e-9)) + 1
  return (np.arange(count) * step)[::-1]


def auc_from_negatives(pred: np.ndarray, fixations: np.ndarray,
                       negative_idx: np.ndarray, step: float = 0.1) -> float:
  """AUC-Borji / sAUC given negatives: `(n_neg, n_splits)` flat pixel ids."""
  fixations = np.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  negative_idx = np.asarray(negative_idx)
  if not fixations.any() or _is_constant(pred) or negative_idx.shape[0] == 0:
    return float("nan")
  values = _minmax(pred).ravel()
  grid = threshold_grid(step)
  positives = values[fixations.ravel()]
  tp = (positives[None] >= grid[:, None]).mean(axis=1)  # (T,)
  negatives = values[negative_idx]  # (n_neg, n_splits)
  fp = (negatives[None] >= grid[:, None, None]).mean(axis=1)  # (T, splits)
  n_splits = fp.shape[1]
  zeros, ones = np.zeros((1, n_splits)), np.ones((1, n_splits))
  tp = np.concatenate([zeros, np.repeat(tp[:, None], n_splits, 1), ones])
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
  """AUC with uniformly sampled negatives, averaged over `n_splits` draws."""
  fixations = np.asarray(fixations) > 0
  negatives = borji_negatives(fixations.size, int(fixations.sum()),
                              n_splits, rng)
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


# --- JAX versions (jittable, static shapes, vmappable over a batch) ---------


def _prediction_jax(pred: jax.Array, shape) -> jax.Array:
  """Resizes with the same bicubic matrices (shapes are static)."""
  pred = jnp.asarray(pred, jnp.float32)
  if pred.shape != tuple(shape):
    rows = jnp.asarray(resize_matrix(pred.shape[0], shape[0]), jnp.float32)
    cols = jnp.asarray(resize_matrix(pred.shape[1], shape[1]), jnp.float32)
    # Full float32 matmuls: accelerators default to lower precision.
    matmul = functools.partial(jnp.matmul, precision="highest")
    pred = matmul(matmul(rows, pred), cols.T)
  return pred


def _range_jax(x: jax.Array) -> jax.Array:
  return x.max() - x.min()


def _zscore_jax(x: jax.Array) -> jax.Array:
  return (x - x.mean()) / jnp.std(x, ddof=1)


def _minmax_jax(x: jax.Array) -> jax.Array:
  return (x - x.min()) / jnp.where(_range_jax(x) > 0, _range_jax(x), 1.0)


def cc_jax(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """JAX `cc`."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = _prediction_jax(pred, gt_map.shape)
  a, b = pred - pred.mean(), gt_map - gt_map.mean()
  denom = jnp.sqrt((a * a).sum() * (b * b).sum())
  defined = (_range_jax(pred) > 0) & (_range_jax(gt_map) > 0)
  return jnp.where(defined, (a * b).sum() / jnp.where(defined, denom, 1.0),
                   jnp.nan)


def sim_jax(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """JAX `sim`."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = _prediction_jax(pred, gt_map.shape)
  a, b = _minmax_jax(pred), _minmax_jax(gt_map)
  a = a / jnp.maximum(a.sum(), EPS)
  b = b / jnp.maximum(b.sum(), EPS)
  defined = (_range_jax(pred) > 0) & (_range_jax(gt_map) > 0)
  return jnp.where(defined, jnp.minimum(a, b).sum(), jnp.nan)


def kld_jax(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """JAX `kld`."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = jnp.maximum(_prediction_jax(pred, gt_map.shape), 0.0)
  pred = pred / jnp.where(pred.sum() > 0, pred.sum(), 1.0)
  gt_sum = gt_map.sum()
  gt_map = gt_map / jnp.where(gt_sum > 0, gt_sum, 1.0)
  score = (gt_map * jnp.log(EPS + gt_map / (pred + EPS))).sum()
  return jnp.where(gt_sum > 0, score, jnp.nan)


def nss_jax(pred: jax.Array, fixations: jax.Array) -> jax.Array:
  """JAX `nss`."""
  fixations = jnp.asarray(fixations) > 0
  pred = _prediction_jax(pred, fixations.shape)
  n_fix = fixations.sum()
  z = _zscore_jax(pred)
  score = jnp.where(fixations, z, 0.0).sum() / jnp.maximum(n_fix, 1)
  return jnp.where((n_fix > 0) & (_range_jax(pred) > 0), score, jnp.nan)


def _trapezoid_jax(x: jax.Array, y: jax.Array) -> jax.Array:
  return (jnp.diff(x, axis=0) * (y[1:] + y[:-1]) / 2).sum(axis=0)


def auc_judd_jax(pred: jax.Array, fixations: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
  """JAX `auc_judd`; jitter only when a PRNG `key` is given."""
  fixations = jnp.asarray(fixations) > 0
  pred = _prediction_jax(pred, fixations.shape)
  fixations = fixations.ravel()
  constant = _range_jax(pred) == 0
  if key is not None:
    pred = pred + jax.random.uniform(key, pred.shape) * JUDD_JITTER
  values = _minmax_jax(pred).ravel()
  n_pixels, n_fix = values.size, fixations.sum()
  # Fixated values in descending order first; the rest map to the end point.
  thresholds = -jnp.sort(-jnp.where(fixations, values, -jnp.inf))
  above = n_pixels - jnp.searchsorted(jnp.sort(values), thresholds, "left")
  rank = jnp.arange(1, n_pixels + 1)
  valid = rank <= n_fix
  tp = jnp.where(valid, rank / jnp.maximum(n_fix, 1), 1.0)
  fp = jnp.where(valid, (above - rank) / jnp.maximum(n_pixels - n_fix, 1),
                 1.0)
  tp = jnp.concatenate([jnp.zeros(1), tp, jnp.ones(1)])
  fp = jnp.concatenate([jnp.zeros(1), fp, jnp.ones(1)])
  score = jnp.where(constant, 0.5, _trapezoid_jax(fp, tp))
  return jnp.where((n_fix > 0) & (n_fix < n_pixels), score, jnp.nan)


def auc_from_negatives_jax(pred: jax.Array, fixations: jax.Array,
                           negative_idx: jax.Array,
                           negative_valid: jax.Array | None = None,
                           step: float = 0.1) -> jax.Array:
  """JAX `auc_from_negatives`; `negative_valid` masks padded negatives."""
  fixations = (jnp.asarray(fixations) > 0)
  pred = _prediction_jax(pred, fixations.shape)
  values = _minmax_jax(pred).ravel()
  fixations = fixations.ravel()
  grid = jnp.asarray(threshold_grid(step), jnp.float32)
  n_fix = fixations.sum()
  tp = ((values[None] >= grid[:, None]) & fixations[None]).sum(1)
  tp = tp / jnp.maximum(n_fix, 1)
  if negative_valid is None:
    negative_valid = jnp.ones(negative_idx.shape, bool)
  negative_valid = jnp.broadcast_to(negative_valid, negative_idx.shape)
  n_neg = negative_valid.sum(axis=0)  # (n_splits,)
  hits = (values[negative_idx][None] >= grid[:, None, None]) & negative_valid
  fp = hits.sum(axis=1) / jnp.maximum(n_neg, 1)  # (T, n_splits)
  n_splits = negative_idx.shape[1]
  zeros, ones = jnp.zeros((1, n_splits)), jnp.ones((1, n_splits))
  tp = jnp.concatenate([zeros, jnp.repeat(tp[:, None], n_splits, 1), ones])
  fp = jnp.concatenate([zeros, fp, ones])
  score = _trapezoid_jax(fp, tp).mean()
  defined = (n_fix > 0) & (_range_jax(pred) > 0) & jnp.all(n_neg > 0)
  return jnp.where(defined, score, jnp.nan)


def validation_metrics_jax(pred: jax.Array, gt_map: jax.Array,
                           fixations: jax.Array | None = None
                           ) -> dict[str, jax.Array]:
  """Per-sample metrics of a batch, for validation inside a jitted step.

  pred and gt_map: (B, H, W) or (B, H, W, 1) (pred may have another H, W);
  fixations: binary, like gt_map, or None to skip NSS and AUC-Judd.
  Returns {name: (B,)} with NaN where a metric is undefined.
  """
  squeeze = lambda x: x[..., 0] if x.ndim == 4 else x  # noqa: E731
  pred, gt_map = squeeze(jnp.asarray(pred)), squeeze(jnp.asarray(gt_map))
  scores = {"cc": jax.vmap(cc_jax)(pred, gt_map),
            "sim": jax.vmap(sim_jax)(pred, gt_map),
            "kld": jax.vmap(kld_jax)(pred, gt_map)}
  if fixations is not None:
    fixations = squeeze(jnp.asarray(fixations))
    scores["nss"] = jax.vmap(nss_jax)(pred, fixations)
    scores["auc_judd"] = jax.vmap(auc_judd_jax)(pred, fixations)
  return scores
