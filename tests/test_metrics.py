"""Tests of the saliency metrics (NumPy reference and JAX versions)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import scipy.ndimage

from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import metrics_jax

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
  assert float(metrics_jax.auc_from_negatives(
      pred, fixations, jnp.asarray(negatives), step=0.5)) == pytest.approx(
          0.9375)


def test_matlab_colon_reproduces_matlabs_documented_output():
  # MATLAB R2012 (MathWorks Answers "How does the COLON operator work?"):
  # (0:0.1:0.3) - (0:0.1:0.4)(1:4) = 1e-16 * [0 0 -0.2776 -0.5551].
  x, y = metrics.matlab_colon(0, 0.1, 0.3), metrics.matlab_colon(0, 0.1, 0.4)
  np.testing.assert_array_equal(
      x - y[:4], [0.0, 0.0, -2.7755575615628914e-17, -5.551115123125783e-17])
  assert x[-1] == 0.3  # The end point snaps to b.
  grid = metrics.matlab_colon(0, 0.1, 1)
  # Second half counted down from 1: 1 - 3 * 0.1, one ulp below 7 * 0.1.
  assert grid[7] == 1 - 3 * 0.1 == 0.7 and grid[7] < 7 * 0.1
  assert grid[3] == 3 * 0.1 > 0.3
  assert grid[5] == 0.5 and len(grid) == 11
  assert len(metrics.matlab_colon(0, 0.1, 0.97)) == 10  # 0 .. 0.9
  np.testing.assert_array_equal(metrics.matlab_colon(0, 0.1, 0), [0.0])
  np.testing.assert_array_equal(metrics.matlab_colon(0, 1, 2.5), [0, 1, 2])


def test_auc_grid_per_split_counts_ties_at_the_split_maximum():
  # Normalised values 0, .65, .7, 1; fixated .7, one negative of .65. The
  # split's grid is 0:0.1:0.7, whose top is exactly 0.7: the positive is
  # above it alone -> ROC (0, 0), (0, 1), (1, 1), area 1. A grid k * 0.1 up
  # to 1 has 0.7000000000000001 and 0.6000000000000001 instead: area 0.5.
  pred = np.array([[0.0, 13.0, 14.0, 20.0]])
  fixations = np.array([[0, 0, 1, 0]])
  assert metrics.auc_from_negatives(pred, fixations, np.array([[1]])) == 1.0
  # Grids differ per split: a second split with the negative 1.0 (grid
  # 0:0.1:1) has ROC (0, 0), (1, 0), (1, 1): area 0 -> mean 0.5.
  assert metrics.auc_from_negatives(
      pred, fixations, np.array([[1, 3]])) == 0.5


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


def test_constant_and_blank_predictions_score_as_the_mit_code():
  # g = (1/4, 0, 0, 3/4). Blank prediction: KLdiv.m keeps it all zero, so
  # KLD = 1/4 log(2^-52 + 2^50) + 3/4 log(3/4 2^52) = 51.5 log 2 + .75 log .75
  # (eps = 2^-52 exactly; it vanishes next to 2^50); similarity.m gives 0.
  gt = np.array([[1.0, 0.0], [0.0, 3.0]])
  fixations = np.array([[1, 0], [0, 1]])
  other = np.array([[0, 1], [1, 0]])
  blank, flat = np.zeros((2, 2)), np.full((2, 2), 0.3)
  assert metrics.sim(blank, gt) == 0.0
  assert metrics.kld(blank, gt) == pytest.approx(
      51.5 * math.log(2) + 0.75 * math.log(0.75), rel=1e-15)
  # Constant 0.3: uniform p = 1/4 -> KLD = 3/4 log 3; SIM divides 0 by 0.
  assert metrics.kld(flat, gt) == pytest.approx(0.75 * math.log(3), abs=1e-12)
  assert math.isnan(metrics.sim(flat, gt))
  for pred in (blank, flat):
    assert metrics.auc_judd(pred, fixations) == 0.5
    for value in (metrics.cc(pred, gt), metrics.nss(pred, fixations),
                  metrics.auc_borji(pred, fixations),
                  metrics.auc_shuffled(pred, fixations, other)):
      assert math.isnan(value)


def test_all_zero_and_constant_ground_truth_maps():
  pred = _smooth_map(np.random.default_rng(3))
  zero = np.zeros(pred.shape)
  # similarity.m keeps the zero map: min(p, 0) sums to 0; KLdiv.m: 0 log = 0.
  assert metrics.sim(pred, zero) == 0.0
  assert metrics.kld(pred, zero) == 0.0
  assert math.isnan(metrics.cc(pred, zero))
  flat = np.full(pred.shape, 0.5)
  assert math.isnan(metrics.cc(pred, flat))
  assert math.isnan(metrics.sim(pred, flat))
  assert math.isfinite(metrics.kld(pred, flat))


def test_single_fixated_pixel():
  # Normalised map [0, 1/3; 2/3, 1], the pixel of 2/3 fixated.
  pred = np.array([[0.1, 0.2], [0.3, 0.4]])
  fixations = np.array([[0, 0], [1, 0]])
  # ROC (0, 0), (1/3, 1), (1, 1): area 1/6 + 2/3 = 5/6.
  assert metrics.auc_judd(pred, fixations, jitter=False) == pytest.approx(
      5 / 6, abs=1e-15)
  # z = (0.3 - 0.25) / sqrt(0.05 / 3) = sqrt(0.15) (sample std).
  assert metrics.nss(pred, fixations) == pytest.approx(math.sqrt(0.15),
                                                       abs=1e-15)
  # AUC_Borji.m returns NaN for fewer than two fixated pixels ...
  assert math.isnan(metrics.auc_borji(pred, fixations, rng=0))
  # ... AUC_shuffled.m does not: the negative (value 0) is below the
  # positive (2/3) at every threshold of 0:0.1:2/3 but 0 -> area 1.
  other = np.array([[1, 0], [0, 0]])
  assert metrics.auc_shuffled(pred, fixations, other, rng=0) == 1.0


def test_empty_fixations_give_nan():
  rng = np.random.default_rng(4)
  pred, empty = _smooth_map(rng), np.zeros((40, 56), bool)
  other = _random_fixations(rng)
  for value in (metrics.nss(pred, empty), metrics.auc_judd(pred, empty),
                metrics.auc_borji(pred, empty),
                metrics.auc_shuffled(pred, empty, other)):
    assert math.isnan(value)
  assert math.isnan(metrics.auc_shuffled(pred, other, empty))


def test_nan_prediction_gives_nan_everywhere():
  # What the STAViS post-processing makes of a blank map (0 / 0).
  pred = np.full((4, 5), np.nan)
  gt = np.arange(20.0).reshape(4, 5)
  fixations = gt > 15
  for value in (metrics.cc(pred, gt), metrics.sim(pred, gt),
                metrics.kld(pred, gt), metrics.nss(pred, fixations),
                metrics.auc_judd(pred, fixations),
                metrics.auc_borji(pred, fixations),
                metrics.auc_shuffled(pred, fixations, ~fixations)):
    assert math.isnan(value)


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


def _imresize_reference(x: np.ndarray, out_len: int) -> np.ndarray:
  """Loop version of MATLAB imresize.m along axis 0 (bicubic, float64)."""
  in_len = x.shape[0]
  scale = out_len / in_len

  def cubic(t):
    t = abs(t)
    if t <= 1:
      return 1.5 * t**3 - 2.5 * t**2 + 1
    return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0

  width = 4.0 / scale if scale < 1 else 4.0
  kernel = (lambda t: scale * cubic(scale * t)) if scale < 1 else cubic
  aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
  out = np.zeros((out_len,) + x.shape[1:])
  for i in range(1, out_len + 1):
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = math.floor(u - width / 2)
    taps = [left + p for p in range(math.ceil(width) + 2)]
    weights = [kernel(u - j) for j in taps]
    total = sum(weights)
    for j, w in zip(taps, weights):
      out[i - 1] += w / total * x[aux[(j - 1) % len(aux)] - 1]
  return out


@pytest.mark.parametrize("in_shape, out_shape", [
    ((5, 7), (3, 11)), ((4, 4), (9, 2)), ((6, 3), (6, 8)), ((2, 9), (7, 4))])
def test_resize_matches_a_loop_reference_of_matlab_imresize(in_shape,
                                                            out_shape):
  values = np.random.default_rng(12).random(in_shape)
  expected = _imresize_reference(
      _imresize_reference(values, out_shape[0]).T, out_shape[1]).T
  np.testing.assert_allclose(metrics.resize_map(values, out_shape), expected,
                             rtol=0, atol=1e-14)


def test_resize_by_hand_mirrors_the_border():
  # [0, 1] to 4 columns: pixel 1 sits at u = 0.75, taps -2..3 mirror to
  # x2, x1, x1, x1, x2, x2 with cubic weights 0, -0.0234375, 0.2265625,
  # 0.8671875, -0.0703125, 0 -> -0.0234375 - 0.0703125 = -0.09375.
  row = metrics.resize_map(np.array([[0.0, 1.0]]), (1, 4))
  assert row[0, 0] == -0.09375 and row[0, 3] == 1.09375


def test_kld_clips_bicubic_overshoot_like_8bit_imresize():
  # imresize saturates uint8 output at 0, so the overshoot is clipped before
  # the sum normalisation; eps is MATLAB's 2^-52.
  small = np.zeros((4, 4))
  small[1, 1] = 1.0
  gt = np.ones((8, 8))
  resized = metrics.resize_map(small, (8, 8))
  assert resized.min() < 0
  p = np.maximum(resized, 0) / np.maximum(resized, 0).sum()
  g = gt / gt.sum()
  expected = (g * np.log(2.0**-52 + g / (p + 2.0**-52))).sum()
  assert metrics.kld(small, gt) == expected
  assert metrics.EPS == 2.0**-52


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
  batched = jax.jit(jax.vmap(getattr(metrics_jax, name)))
  np.testing.assert_allclose(batched(preds, targets), expected, atol=1e-5)


def test_jax_sampled_aucs_match_numpy_given_the_same_negatives(random_batch):
  preds, _, fixations, others = random_batch
  jitted = jax.jit(metrics_jax.auc_from_negatives)
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
  assert float(jax.jit(metrics_jax.cc)(small, gt)) == pytest.approx(
      metrics.cc(small, gt), abs=1e-5)


def test_jax_edge_cases_follow_the_numpy_rules():
  rng = np.random.default_rng(11)
  gt, fixations = _smooth_map(rng), _random_fixations(rng)
  flat, empty = jnp.full(gt.shape, 0.3), np.zeros(gt.shape, bool)
  negatives = metrics.borji_negatives(gt.size, 25, 10, rng=0)
  for value in (metrics_jax.cc(flat, gt), metrics_jax.sim(flat, gt),
                metrics_jax.nss(flat, fixations),
                metrics_jax.auc_from_negatives(flat, fixations, negatives),
                metrics_jax.nss(gt, empty), metrics_jax.auc_judd(gt, empty),
                metrics_jax.auc_from_negatives(gt, empty, negatives),
                metrics_jax.sim(gt, jnp.full(gt.shape, 0.5))):
    assert jnp.isnan(value)
  assert float(metrics_jax.auc_judd(flat, fixations)) == 0.5
  assert float(metrics_jax.kld(flat, gt)) == pytest.approx(
      metrics.kld(np.full(gt.shape, 0.3), gt), abs=1e-5)
  # The MIT conventions for all-zero maps, as in the NumPy versions.
  blank, zero = jnp.zeros(gt.shape), jnp.zeros(gt.shape)
  assert float(metrics_jax.sim(blank, gt)) == 0.0
  assert float(metrics_jax.sim(gt, zero)) == 0.0
  assert float(metrics_jax.kld(gt, zero)) == 0.0
  assert float(metrics_jax.kld(blank, gt)) == pytest.approx(
      metrics.kld(np.zeros(gt.shape), gt), rel=1e-5)
  jittered = metrics_jax.auc_judd(gt, fixations, jax.random.key(0))
  assert float(jittered) == pytest.approx(
      metrics.auc_judd(gt, fixations, jitter=False), abs=1e-3)


def test_validation_metrics_jax_accepts_channel_last_batches(random_batch):
  preds, gts, fixations, _ = random_batch
  scores = jax.jit(metrics_jax.validation_metrics)(
      preds[..., None], gts[..., None], fixations[..., None])
  assert sorted(scores) == ["auc_judd", "cc", "kld", "nss", "sim"]
  np.testing.assert_allclose(
      scores["cc"], [metrics.cc(p, g) for p, g in zip(preds, gts)],
      atol=1e-5)
  assert scores["nss"].shape == (3,)
