"""Tests of the diffusion schedule, training target and DDIM sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffsal_jax.models import diffusion


def test_cosine_schedule_matches_closed_form():
  sched = diffusion.make_schedule()
  assert sched.betas.shape == (1000,) and sched.alphas_cumprod.dtype == np.float32
  # Without clipping, cumprod(1 - beta) telescopes to f(t + 1) / f(0) with
  # f(x) = cos^2(((x / 1001) + s) / (1 + s) * pi / 2) sampled at x * 1001/1000.
  n = 1001
  grid = np.arange(n) * (n / (n - 1))
  f = np.cos(((grid / n) + 0.008) / 1.008 * np.pi / 2) ** 2
  expected = f[1:] / f[0]
  unclipped = diffusion.cosine_betas() < 0.999
  np.testing.assert_allclose(sched.alphas_cumprod[unclipped],
                             expected[unclipped], rtol=2e-4, atol=1e-7)
  assert np.all(np.diff(sched.alphas_cumprod) < 0)
  assert sched.betas.max() <= np.float32(0.999) and sched.betas.min() > 0
  assert sched.betas[-1] == np.float32(0.999)  # the last beta is clipped


def test_ddim_timesteps_follow_published_spacing():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 1), [[0, -1]])
  ten = diffusion.ddim_timesteps(1000, 10)
  assert ten.shape == (10, 2)
  np.testing.assert_array_equal(ten[0], [900, 800])
  np.testing.assert_array_equal(ten[-1], [0, -1])
  # The integer stride 1000 // 3 = 333 visits four steps.
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 3)[:, 0],
                                [999, 666, 333, 0])
  with pytest.raises(ValueError, match="sampling steps"):
    diffusion.ddim_timesteps(1000, 0)


def test_q_sample_and_loss():
  sched = diffusion.make_schedule()
  x0 = jnp.ones((2, 3, 4, 1))
  noise = jnp.zeros_like(x0)
  t = jnp.array([0, 999])
  x_t = diffusion.q_sample(sched, x0, t, noise)
  np.testing.assert_allclose(x_t[:, 0, 0, 0],
                             np.sqrt(sched.alphas_cumprod[[0, 999]]), rtol=1e-6)
  # Summed over the 12 pixels, averaged over the 2 samples.
  pred = jnp.zeros_like(x0).at[0].set(2.0)
  assert float(diffusion.x0_mse_loss(pred, x0)) == pytest.approx(12.0)


def test_timesteps_per_batch_or_per_sample():
  key = jax.random.key(0)
  shared = diffusion.sample_timesteps(key, 64, 1000)
  assert shared.dtype == jnp.int32 and len(set(np.asarray(shared))) == 1
  own = diffusion.sample_timesteps(key, 64, 1000, per_sample=True)
  assert len(set(np.asarray(own))) > 30
  assert 0 <= int(own.min()) and int(own.max()) < 1000
  high = diffusion.sample_timesteps(key, 64, 1000, per_sample=True, t_min=900)
  assert 900 <= int(high.min()) and int(high.max()) < 1000


def test_training_inputs_dequantise_with_std_001():
  maps = jnp.full((4, 32, 32, 1), 0.5)
  inputs = diffusion.training_inputs(jax.random.key(1), diffusion.make_schedule(),
                                     maps)
  deviation = np.asarray(inputs.target - maps)
  assert abs(deviation.std() - 0.01) < 1e-3 and abs(deviation.mean()) < 1e-3
  assert inputs.x_t.shape == maps.shape


@pytest.mark.parametrize("t,t_next", [(900, 800), (500, 0), (10, 5)])
def test_ddim_update_with_exact_x0_stays_on_the_trajectory(t, t_next):
  """eta = 0 and the true x0 map q(x_t | x0, eps) onto q(x_t_next | x0, eps)."""
  sched = diffusion.make_schedule()
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = jax.random.uniform(k1, (2, 8, 8, 1))
  eps = jax.random.normal(k2, x0.shape)
  x_t = diffusion.q_sample(sched, x0, jnp.array([t, t]), eps)
  moved = diffusion._ddim_update(sched, x_t, x0, jnp.int32(t),
                                 jnp.int32(t_next), 0.0, jax.random.key(3))
  expected = diffusion.q_sample(sched, x0, jnp.array([t_next, t_next]), eps)
  np.testing.assert_allclose(moved, expected, atol=2e-4)


def _numpy_ddim(denoise, x, sched, steps, eta, noises):
  """Independent NumPy transcription of the published DDIM loop."""
  skip = 1000 // steps
  seq = list(range(0, 1000, skip))
  abar = sched.alphas_cumprod.astype(np.float64)
  for i, (t, t_next) in enumerate(zip(reversed(seq), reversed([-1] + seq[:-1]))):
    x0 = denoise(x, t)
    if t_next < 0:
      x = x0
      continue
    a, a_next = abar[t], abar[t_next]
    eps = (np.sqrt(1 / a) * x - x0) / np.sqrt(1 / a - 1)
    c1 = eta * np.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
    c2 = np.sqrt((1 - a_next) - c1 ** 2)
    x = np.sqrt(a_next) * x0 + c1 * noises[i] + c2 * eps
  return np.clip(x, 0, 1)


class _FakeModel:
  """Counts encoder calls; the denoiser depends on features, x_t and t."""

  def __init__(self):
    self.encode_calls = 0

  def encode(self, img, audio=None):
    self.encode_calls += 1
    return jnp.mean(img, axis=(1, 4))[..., None]

  def denoise(self, features, x_t, t, *, train=False):
    return jax.nn.sigmoid(0.5 * x_t + features - t[:, None, None, None] / 1000.0)


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (4, 0.0), (5, 1.0)])
def test_sample_saliency_matches_published_loop(steps, eta):
  sched = diffusion.make_schedule()
  model = _FakeModel()
  img = jax.random.uniform(jax.random.key(4), (2, 3, 8, 12, 3))
  key = jax.random.key(5)
  out = diffusion.sample_saliency(model, img, key, schedule=sched, steps=steps,
                                  eta=eta)
  assert model.encode_calls == 1 and out.shape == (2, 8, 12, 1)
  # Recreate the sampler's random draws to feed the NumPy loop.
  k_init, k_steps = jax.random.split(key)
  x = np.asarray(jax.random.normal(k_init, (2, 8, 12, 1)), np.float64)
  n_pairs = len(diffusion.ddim_timesteps(1000, steps))
  noises = [np.asarray(jax.random.normal(k, x.shape))
            for k in jax.random.split(k_steps, n_pairs)]
  feats = np.asarray(jnp.mean(img, axis=(1, 4))[..., None], np.float64)
  denoise = lambda x_t, t: 1 / (1 + np.exp(-(0.5 * x_t + feats - t / 1000)))
  expected = _numpy_ddim(denoise, x, sched, steps, eta, noises)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_one_step_is_one_call_at_t0_on_pure_noise():
  sched = diffusion.make_schedule()
  seen = []

  def denoise(features, x_t, t):
    seen.append(t)
    return x_t * 10.0

  key = jax.random.key(6)
  out = diffusion.sample_ddim(denoise, None, key, (1, 4, 4, 1), sched)
  assert len(seen) == 1
  k_init, _ = jax.random.split(key)
  noise = jax.random.normal(k_init, (1, 4, 4, 1))
  np.testing.assert_allclose(out, jnp.clip(noise * 10.0, 0, 1), atol=1e-6)
  # The single call ran at t = 0.
  t_at_call = jax.jit(lambda: diffusion.sample_ddim(
      lambda f, x, t: jnp.broadcast_to(t[:, None, None, None] / 1.0, x.shape),
      None, key, (1, 2, 2, 1), sched))()
  np.testing.assert_array_equal(t_at_call, 0.0)
