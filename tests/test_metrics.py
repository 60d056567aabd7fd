"""Tests of the saliency metrics (NumPy reference and JAX versions)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import scipy.ndimage

from diffsal_jax import metrics

NAN = float("nan")


def _smooth_map(rng, shape=(40, 56), sigma=3.0):
  return scipy.ndimage.gaussian_filter(rng.random(shape), sigma)


def _random_fixations(rng, shape=(40, 56), count=25):
  fixations = np.zeros(shape, bool)
  fixations.ravel()[rng.choice(fixations.size, count, replace=False)] = True
  return fixations


# --- Hand-computed cases ---------------------------------------------------


def test_identical_maps_give_cc_1_sim_1_kld_0():
  gt = _smooth_map(np.random.default_rng(0))
  assert metrics.cc(gt, gt) == pytest.approx(1.0, abs=1e-12)
  assert metrics.sim(gt, gt) == pytest.approx(1.0, abs=1e-12)
  assert metrics.kld(gt, gt) == pytest.approx(0.0, abs=1e-9)


def test_cc_of_negated_map_is_minus_1():
  gt = _smooth_map(np.random.default_rng(1))
  assert metrics.cc(-gt, gt) == pytest.approx(-1.0, abs=1e-12)


def test_nss_by_hand_uses_sample_std():
  # z-scores of [0, 0, 0, 1]: mean 1/4, std (ddof=1) 1/2 -> fixated z = 1.5.
  pred = np.array([[0.0, 0.0], [0.0, 1.0]])
  fixations = np.array([[0, 0], [0, 1]])
  assert metrics.nss(pred, fixations) == pytest.approx(1.5)


def test_sim_by_hand():
  half = metrics.sim(np.array([[1.0, 1.0], [0.0, 0.0]]),
                     np.array([[1.0, 0.0], [0.0, 0.0]]))
  disjoint = metrics.sim(np.array([[1.0, 0.0], [0.0, 0.0]]),
                         np.array([[0.0, 1.0], [0.0, 0.0]]))
  assert (half, disjoint) == (pytest.approx(0.5), pytest.approx(0.0))


def test_kld_of_uniform_prediction_by_hand():
  gt = np.zeros((3, 4))
  gt[0, 0] = gt[2, 3] = 1.0  # Two pixels of mass 1/2 among 12.
  assert metrics.kld(np.ones((3, 4)), gt) == pytest.approx(math.log(6),
                                                           abs=1e-9)


def test_auc_judd_by_hand_follows_the_mit_roc_points():
  # Normalised [0, 1/3, 2/3, 1]; fixated 1 and 1/3. Points (0,0), (0,.5),
  # (.5,1), (1,1) -> area .875 (not the rank statistic .75).
  pred = np.array([[0.1, 0.2, 0.3, 0.4]])
  fixations = np.array([[0, 1, 0, 1]])
  assert metrics.auc_judd(pred, fixations, jitter=False) == pytest.approx(
      0.875)


def test_auc_from_negatives_by_hand():
  pred = np.array([[0.0, 0.2, 0.6, 1.0]])
  fixations = np.array([[0, 0, 1, 1]])
  # Grid (1, .5, 0). Split 1 negatives (0, .2): area 1. Split 2 (.2, .6):
  # points (0,0), (0,.5), (.5,1), (1,1) -> .875. Mean .9375.
  negatives = np.array([[0, 1], [1, 2]])
  assert metrics.auc_from_negatives(pred, fixations, negatives,
                                    step=0.5) == pytest.approx(0.9375)
  assert float(metrics.auc_from_negatives_jax(
      pred, fixations, jnp.asarray(negatives), step=0.5)) == pytest.approx(
          0.9375)


def test_threshold_grid_includes_both_ends():
  grid = metrics.threshold_grid(0.1)
  assert len(grid) == 11 and grid[0] == pytest.approx(1.0) and grid[-1] == 0


def test_map_peaking_at_fixations_has_auc_near_1():
  rng = np.random.default_rng(2)
  fixations = _random_fixations(rng, count=12)
  assert metrics.auc_judd(fixations.astype(float), fixations,
                          rng=0) == pytest.approx(1.0)
  blobs = scipy.ndimage.gaussian_filter(fixations.astype(float), 1.0)
  assert metrics.auc_judd(blobs, fixations, rng=0) > 0.99
  assert metrics.auc_borji(blobs, fixations, rng=0) > 0.95


def test_constant_prediction_rules():
  rng = np.random.default_rng(3)
  gt, fixations = _smooth_map(rng), _random_fixations(rng)
  flat = np.full(gt.shape, 0.3)
  assert metrics.auc_judd(flat, fixations) == 0.5
  for value in (metrics.cc(flat, gt), metrics.sim(flat, gt),
                metrics.nss(flat, fixations),
                metrics.auc_borji(flat, fixations),
                metrics.auc_shuffled(flat, fixations, ~fixations)):
    assert math.isnan(value)
  assert math.isfinite(metrics.kld(flat, gt))


def test_empty_fixations_give_nan():
  rng = np.random.default_rng(4)
  pred, empty = _smooth_map(rng), np.zeros((40, 56), bool)
  other = _random_fixations(rng)
  for value in (metrics.nss(pred, empty), metrics.auc_judd(pred, empty),
                metrics.auc_borji(pred, empty),
                metrics.auc_shuffled(pred, empty, other)):
    assert math.isnan(value)
  assert math.isnan(metrics.auc_shuffled(pred, other, empty))
  assert math.isnan(metrics.kld(pred, np.zeros((40, 56))))


# --- Invariances and sAUC --------------------------------------------------


def test_invariances():
  rng = np.random.default_rng(5)
  pred, gt, fixations = _smooth_map(rng), _smooth_map(rng), (
      _random_fixations(rng))
  assert metrics.cc(3.0 * pred + 2.0, gt) == pytest.approx(
      metrics.cc(pred, gt), abs=1e-12)
  assert metrics.nss(5.0 * pred, fixations) == pytest.approx(
      metrics.nss(pred, fixations), abs=1e-12)
  assert metrics.auc_judd(4 * pred + 1, fixations, jitter=False) == (
      pytest.approx(metrics.auc_judd(pred, fixations, jitter=False)))
  assert metrics.auc_borji(2 * pred, fixations, rng=7) == pytest.approx(
      metrics.auc_borji(pred, fixations, rng=7))


def test_shuffled_negatives_come_from_other_map_without_repeats():
  other = np.zeros((6, 7), bool)
  other.ravel()[[3, 9, 20, 33, 40]] = True
  few = metrics.shuffled_negatives(other, n_fix=3, n_splits=20, rng=0)
  assert few.shape == (3, 20)
  assert np.isin(few, [3, 9, 20, 33, 40]).all()
  assert all(len(set(column)) == 3 for column in few.T)
  many = metrics.shuffled_negatives(other, n_fix=8, n_splits=4, rng=0)
  assert many.shape == (5, 4)
  assert all(sorted(column) == [3, 9, 20, 33, 40] for column in many.T)


def test_sauc_discounts_centre_bias_that_auc_borji_rewards():
  rng = np.random.default_rng(6)
  shape = (60, 80)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  centre = np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 120.0)

  def centre_biased_fixations(count):
    fixations = np.zeros(shape, bool)
    points = rng.normal([30, 40], 6, size=(count, 2)).round().astype(int)
    fixations[points[:, 0], points[:, 1]] = True
    return fixations

  fixations, other = centre_biased_fixations(60), centre_biased_fixations(600)
  assert metrics.auc_borji(centre, fixations, rng=0) > 0.85
  assert abs(metrics.auc_shuffled(centre, fixations, other, rng=0)
             - 0.5) < 0.1


# --- Resizing --------------------------------------------------------------


@pytest.mark.parametrize("in_shape, out_shape", [
    ((24, 40), (36, 64)), ((60, 80), (24, 40)), ((45, 32), (45, 50))])
def test_resize_interior_matches_pil_bicubic(in_shape, out_shape):
  # PIL's bicubic uses the same Keys kernel (a = -0.5) and antialiasing; it
  # only treats borders differently (renormalised, MATLAB mirrors).
  values = np.random.default_rng(7).random(in_shape).astype(np.float32)
  ours = metrics.resize_map(values, out_shape)
  pil = np.asarray(Image.fromarray(values, mode="F").resize(
      out_shape[::-1], Image.BICUBIC))
  assert ours.shape == out_shape
  np.testing.assert_allclose(ours[6:-6, 6:-6], pil[6:-6, 6:-6], atol=1e-5)


def test_resize_keeps_constants_and_antialiases():
  assert np.allclose(metrics.resize_map(np.full((7, 9), 0.4), (20, 3)), 0.4)
  checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(float)
  # Without antialiasing the interior would alias to 0 or 1 stripes.
  shrunk = metrics.resize_map(checker, (16, 16))
  np.testing.assert_allclose(shrunk[2:-2, 2:-2], 0.5, atol=1e-9)


def test_prediction_of_another_size_is_resized_to_ground_truth():
  rng = np.random.default_rng(8)
  small, gt, fixations = (_smooth_map(rng, (20, 28)), _smooth_map(rng),
                          _random_fixations(rng))
  big = metrics.resize_map(small, gt.shape)
  assert metrics.cc(small, gt) == metrics.cc(big, gt)
  assert metrics.nss(small, fixations) == metrics.nss(big, fixations)
  matrix_version = (metrics.resize_matrix(20, 40) @ small
                    @ metrics.resize_matrix(28, 56).T)
  np.testing.assert_allclose(matrix_version, big, atol=1e-12)


# --- NumPy / JAX agreement -------------------------------------------------


@pytest.fixture(scope="module")
def random_batch():
  rng = np.random.default_rng(9)
  preds = np.stack([_smooth_map(rng) for _ in range(3)])
  gts = np.stack([_smooth_map(rng) for _ in range(3)])
  fixations = np.stack([_random_fixations(rng) for _ in range(3)])
  others = np.stack([_random_fixations(rng, count=200) for _ in range(3)])
  return preds.astype(np.float32), gts.astype(np.float32), fixations, others


@pytest.mark.parametrize("name, target", [
    ("cc", "gt"), ("sim", "gt"), ("kld", "gt"), ("nss", "fix"),
    ("auc_judd", "fix")])
def test_jax_matches_numpy_jitted_and_vmapped(random_batch, name, target):
  preds, gts, fixations, _ = random_batch
  targets = gts if target == "gt" else fixations
  reference = getattr(metrics, name)
  kwargs = {"jitter": False} if name == "auc_judd" else {}
  expected = [reference(p.astype(np.float64), t, **kwargs)
              for p, t in zip(preds, targets)]
  batched = jax.jit(jax.vmap(getattr(metrics, f"{name}_jax")))
  np.testing.assert_allclose(batched(preds, targets), expected, atol=1e-5)


def test_jax_sampled_aucs_match_numpy_given_the_same_negatives(random_batch):
  preds, _, fixations, others = random_batch
  jitted = jax.jit(metrics.auc_from_negatives_jax)
  for pred, fix, other in zip(preds, fixations, others):
    for negatives in (
        metrics.borji_negatives(fix.size, int(fix.sum()), 100, rng=0),
        metrics.shuffled_negatives(other, int(fix.sum()), 100, rng=0)):
      expected = metrics.auc_from_negatives(pred.astype(np.float64), fix,
                                            negatives)
      assert float(jitted(pred, fix, negatives)) == pytest.approx(
          expected, abs=1e-5)


def test_jax_resizes_predictions_of_another_size():
  rng = np.random.default_rng(10)
  small, gt = _smooth_map(rng, (20, 28)), _smooth_map(rng)
  assert float(jax.jit(metrics.cc_jax)(small, gt)) == pytest.approx(
      metrics.cc(small, gt), abs=1e-5)


def test_jax_edge_cases_follow_the_numpy_rules():
  rng = np.random.default_rng(11)
  gt, fixations = _smooth_map(rng), _random_fixations(rng)
  flat, empty = jnp.full(gt.shape, 0.3), np.zeros(gt.shape, bool)
  negatives = metrics.borji_negatives(gt.size, 25, 10, rng=0)
  for value in (metrics.cc_jax(flat, gt), metrics.sim_jax(flat, gt),
                metrics.nss_jax(flat, fixations),
                metrics.auc_from_negatives_jax(flat, fixations, negatives),
                metrics.nss_jax(gt, empty), metrics.auc_judd_jax(gt, empty),
                metrics.auc_from_negatives_jax(gt, empty, negatives),
                metrics.kld_jax(gt, jnp.zeros(gt.shape))):
    assert jnp.isnan(value)
  assert float(metrics.auc_judd_jax(flat, fixations)) == 0.5
  assert jnp.isfinite(metrics.kld_jax(flat, gt))
  jittered = metrics.auc_judd_jax(gt, fixations, jax.random.key(0))
  assert float(jittered) == pytest.approx(
      metrics.auc_judd(gt, fixations, jitter=False), abs=1e-3)


def test_validation_metrics_jax_accepts_channel_last_batches(random_batch):
  preds, gts, fixations, _ = random_batch
  scores = jax.jit(metrics.validation_metrics_jax)(
      preds[..., None], gts[..., None], fixations[..., None])
  assert sorted(scores) == ["auc_judd", "cc", "kld", "nss", "sim"]
  np.testing.assert_allclose(
      scores["cc"], [metrics.cc(p, g) for p, g in zip(preds, gts)],
      atol=1e-5)
  assert scores["nss"].shape == (3,)
