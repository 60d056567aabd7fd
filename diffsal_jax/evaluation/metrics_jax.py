"""The saliency metrics of `metrics`, in JAX for validation inside jit.

Float32, static shapes, one `(H, W)` map per call (vmap for a batch); each
follows its NumPy twin in `diffsal_jax.evaluation.metrics` (the MIT
benchmark's MATLAB definitions) and its degenerate-input table, and agrees
with it to about 1e-5 (tests/test_metrics.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation.imresize import resize_matrix


def _prediction(pred: jax.Array, shape) -> jax.Array:
  """Resizes with the same bicubic matrices (shapes are static)."""
  pred = jnp.asarray(pred, jnp.float32)
  if pred.shape != tuple(shape):
    rows = jnp.asarray(resize_matrix(pred.shape[0], shape[0]), jnp.float32)
    cols = jnp.asarray(resize_matrix(pred.shape[1], shape[1]), jnp.float32)
    # Full float32 matmuls: accelerators default to lower precision.
    matmul = functools.partial(jnp.matmul, precision="highest")
    pred = matmul(matmul(rows, pred), cols.T)
  return pred


def _range(x: jax.Array) -> jax.Array:
  return x.max() - x.min()


def _zscore(x: jax.Array) -> jax.Array:
  return (x - x.mean()) / jnp.std(x, ddof=1)


def _minmax(x: jax.Array) -> jax.Array:
  return (x - x.min()) / jnp.where(_range(x) > 0, _range(x), 1.0)


def cc(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """`metrics.cc` in JAX."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = _prediction(pred, gt_map.shape)
  a, b = pred - pred.mean(), gt_map - gt_map.mean()
  denom = jnp.sqrt((a * a).sum() * (b * b).sum())
  defined = (_range(pred) > 0) & (_range(gt_map) > 0)
  return jnp.where(defined, (a * b).sum() / jnp.where(defined, denom, 1.0),
                   jnp.nan)


def _sim_distribution(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`metrics._sim_distribution`: (distribution, defined)."""
  nonzero = jnp.any(x != 0)
  y = _minmax(x)
  y = y / jnp.where(y.sum() > 0, y.sum(), 1.0)
  return jnp.where(nonzero, y, 0.0), ~nonzero | (_range(x) > 0)


def sim(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """`metrics.sim` in JAX (all-zero maps give 0, constant non-zero maps NaN)."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = _prediction(pred, gt_map.shape)
  a, a_defined = _sim_distribution(pred)
  b, b_defined = _sim_distribution(gt_map)
  return jnp.where(a_defined & b_defined, jnp.minimum(a, b).sum(), jnp.nan)


def kld(pred: jax.Array, gt_map: jax.Array) -> jax.Array:
  """`metrics.kld` in JAX (an all-zero ground truth gives 0)."""
  gt_map = jnp.asarray(gt_map, jnp.float32)
  pred = jnp.maximum(_prediction(pred, gt_map.shape), 0.0)
  pred = pred / jnp.where(jnp.any(pred != 0), pred.sum(), 1.0)
  gt_map = gt_map / jnp.where(jnp.any(gt_map != 0), gt_map.sum(), 1.0)
  return (gt_map * jnp.log(metrics.EPS + gt_map / (pred + metrics.EPS))).sum()


def nss(pred: jax.Array, fixations: jax.Array) -> jax.Array:
  """`metrics.nss` in JAX."""
  fixations = jnp.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  n_fix = fixations.sum()
  z = _zscore(pred)
  score = jnp.where(fixations, z, 0.0).sum() / jnp.maximum(n_fix, 1)
  return jnp.where((n_fix > 0) & (_range(pred) > 0), score, jnp.nan)


def _trapezoid(x: jax.Array, y: jax.Array) -> jax.Array:
  return (jnp.diff(x, axis=0) * (y[1:] + y[:-1]) / 2).sum(axis=0)


def auc_judd(pred: jax.Array, fixations: jax.Array,
                 key: jax.Array | None = None) -> jax.Array:
  """`metrics.auc_judd` in JAX; jitter only when a PRNG `key` is given."""
  fixations = jnp.asarray(fixations) > 0
  pred = _prediction(pred, fixations.shape)
  fixations = fixations.ravel()
  constant = _range(pred) == 0
  if key is not None:
    pred = pred + jax.random.uniform(key, pred.shape) * metrics.JUDD_JITTER
  values = _minmax(pred).ravel()
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
  score = jnp.where(constant, 0.5, _trapezoid(fp, tp))
  return jnp.where((n_fix > 0) & (n_fix < n_pixels), score, jnp.nan)


def auc_from_negatives(pred: jax.Array, fixations: jax.Array,
                           negative_idx: jax.Array,
                           negative_valid: jax.Array | None = None,
                           step: float = 0.1) -> jax.Array:
  """`metrics.auc_from_negatives` in JAX; `negative_valid` masks padded negatives.

  One threshold grid `0:step:1` for every split instead of `0:step:m_s`: the
  same area except where a value ties a threshold to the last bit, which
  float32 maps cannot reproduce anyway (8-bit maps may differ by ~1e-3).
  """
  fixations = (jnp.asarray(fixations) > 0)
  pred = _prediction(pred, fixations.shape)
  values = _minmax(pred).ravel()
  fixations = fixations.ravel()
  grid = jnp.asarray(metrics.threshold_grid(step), jnp.float32)
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
  score = _trapezoid(fp, tp).mean()
  defined = (n_fix > 0) & (_range(pred) > 0) & jnp.all(n_neg > 0)
  return jnp.where(defined, score, jnp.nan)


def validation_metrics(pred: jax.Array, gt_map: jax.Array,
                           fixations: jax.Array | None = None
                           ) -> dict[str, jax.Array]:
  """Per-sample metrics of a batch, for validation inside a jitted step.

  pred and gt_map: (B, H, W) or (B, H, W, 1) (pred may have another H, W);
  fixations: binary, like gt_map, or None to skip NSS and AUC-Judd.
  Returns {name: (B,)} with NaN where a metric is undefined.
  """
  squeeze = lambda x: x[..., 0] if x.ndim == 4 else x  # noqa: E731
  pred, gt_map = squeeze(jnp.asarray(pred)), squeeze(jnp.asarray(gt_map))
  scores = {"cc": jax.vmap(cc)(pred, gt_map),
            "sim": jax.vmap(sim)(pred, gt_map),
            "kld": jax.vmap(kld)(pred, gt_map)}
  if fixations is not None:
    fixations = squeeze(jnp.asarray(fixations))
    scores["nss"] = jax.vmap(nss)(pred, fixations)
    scores["auc_judd"] = jax.vmap(auc_judd)(pred, fixations)
  return scores
