"""Gaussian diffusion over saliency maps: schedule, training target, DDIM.

DiffSal predicts the clean map x0 directly (published `training_target: x0`).
Everything here follows the released `cfgs/diffusion.yml` and
`diffusion_trainer.py`:

* 1000 steps with the cosine schedule (s = 0.008) evaluated on
  `linspace(0, T+1, T+1)` (note: T+1 points spanning T+1, not T), betas
  clipped to 0.999; the cumulative product is taken in float32 like the
  published code, which casts the betas to float32 first.
* Training: gaussian dequantisation `x = map + 0.01 * N(0, 1)`, one t per
  batch, `x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`, loss
  `sum_pixels (x0_pred - x)^2` averaged over the batch.
* Sampling: DDIM over `range(0, T, T // steps)` visited in reverse, starting
  from pure standard-normal noise; the last visited step is always t = 0 and
  its x0 prediction is the result (so 1 step = one denoiser call at t = 0).
  No clamping between steps; the final map is clamped to [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

NUM_TIMESTEPS = 1000
COSINE_S = 0.008
MAX_BETA = 0.999
DEQUANTIZATION_STD = 0.01

# denoise_fn(features, x_t (B,H,W,1), t (B,) int32) -> x0 prediction (B,H,W,1).
DenoiseFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def cosine_betas(num_timesteps: int = NUM_TIMESTEPS,
                 s: float = COSINE_S) -> np.ndarray:
  """Published cosine betas (float64), shape (num_timesteps,)."""
  n = num_timesteps + 1
  x = np.linspace(0, n, n, dtype=np.float64)
  abar = np.cos(((x / n) + s) / (1 + s) * np.pi * 0.5) ** 2
  abar = abar / abar[0]
  return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, MAX_BETA)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Per-timestep constants (float32 NumPy, indexable inside jit)."""
  betas: np.ndarray
  alphas_cumprod: np.ndarray

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def make_schedule(num_timesteps: int = NUM_TIMESTEPS) -> Schedule:
  """Cosine schedule; abar = cumprod(1 - beta) in float32 as published."""
  betas = cosine_betas(num_timesteps).astype(np.float32)
  alphas_cumprod = np.cumprod(np.float32(1.0) - betas, dtype=np.float32)
  return Schedule(betas=betas, alphas_cumprod=alphas_cumprod)


def _per_sample(values: jax.Array, t: jax.Array) -> jax.Array:
  """Gathers values[t] and shapes it (B,1,1,1) to broadcast over maps."""
  return jnp.asarray(values)[t].reshape(-1, 1, 1, 1)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """Forward diffusion x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  abar = _per_sample(schedule.alphas_cumprod, t)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def dequantize(key: jax.Array, maps: jax.Array,
               std: float = DEQUANTIZATION_STD) -> jax.Array:
  """Gaussian dequantisation of the target maps (published `data_transform`)."""
  return maps + std * jax.random.normal(key, maps.shape, maps.dtype)


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int,
                     per_sample: bool = False, t_min: int = 0) -> jax.Array:
  """Training timesteps (B,) int32 in [t_min, T): one shared t (published)
  or one per sample."""
  shape = (batch_size,) if per_sample else ()
  t = jax.random.randint(key, shape, t_min, num_timesteps, jnp.int32)
  return jnp.broadcast_to(t, (batch_size,))


def x0_mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Squared error summed over pixels, averaged over the batch."""
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.mean(jnp.sum(err.reshape(err.shape[0], -1), axis=1))


@dataclasses.dataclass(frozen=True)
class TrainingInputs:
  """What one training step feeds the denoiser and compares against."""
  x_t: jax.Array      # noisy dequantised map (B,H,W,1)
  t: jax.Array        # (B,) int32
  target: jax.Array   # dequantised clean map (B,H,W,1), the x0 target


def training_inputs(key: jax.Array, schedule: Schedule, maps: jax.Array,
                    per_sample_t: bool = False, t_min: int = 0
                    ) -> TrainingInputs:
  """Dequantises `maps` (B,H,W,1), draws t and noise, and diffuses."""
  k_deq, k_t, k_noise = jax.random.split(key, 3)
  target = dequantize(k_deq, maps)
  t = sample_timesteps(k_t, maps.shape[0], schedule.num_timesteps,
                       per_sample_t, t_min)
  noise = jax.random.normal(k_noise, maps.shape, maps.dtype)
  return TrainingInputs(q_sample(schedule, target, t, noise), t, target)


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """(t, t_next) pairs in visiting order, exactly as the published sampler.

  Timesteps are `range(0, T, T // steps)` visited from the largest; t_next is
  the previous entry, -1 after t = 0. Because of the integer stride the count
  can exceed `steps` by one (e.g. steps=3 visits 999, 666, 333, 0).
  """
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f"sampling steps must be in [1, {num_timesteps}], "
                     f"got {steps}")
  seq = list(range(0, num_timesteps, num_timesteps // steps))
  seq_next = [-1] + seq[:-1]
  return np.array(list(zip(reversed(seq), reversed(seq_next))), np.int32)


def _ddim_update(schedule: Schedule, x_t: jax.Array, x0: jax.Array,
                 t: jax.Array, t_next: jax.Array, eta: float,
                 key: jax.Array) -> jax.Array:
  """One DDIM move from x_t at t to x at t_next given the x0 prediction."""
  abar = jnp.asarray(schedule.alphas_cumprod)
  a = abar[t]
  a_next = abar[jnp.maximum(t_next, 0)]
  # Noise implied by the x0 prediction (published `predict_noise_from_start`).
  eps = (jnp.sqrt(1.0 / a) * x_t - x0) / jnp.sqrt(1.0 / a - 1.0)
  c1 = eta * jnp.sqrt((1.0 - a / a_next) * (1.0 - a_next) / (1.0 - a))
  c2 = jnp.sqrt((1.0 - a_next) - c1 ** 2)
  noise = jax.random.normal(key, x_t.shape, x_t.dtype)
  moved = jnp.sqrt(a_next) * x0 + c1 * noise + c2 * eps
  return jnp.where(t_next < 0, x0, moved)


def sample_ddim(denoise_fn: DenoiseFn, features: Any, key: jax.Array,
                map_shape: tuple[int, ...], schedule: Schedule, *,
                steps: int = 1, eta: float = 0.0) -> jax.Array:
  """DDIM sampling of saliency maps, clamped to [0, 1].

  Args:
    denoise_fn: the Saliency-UNet only; `features` (the encoders' output,
      computed once per clip by the caller) is passed through unchanged.
    features: encoder features for the batch.
    key: PRNG key for the initial noise (and the eta > 0 noise).
    map_shape: (B, H, W, 1).
    schedule: from `make_schedule`.
    steps: number of sampling steps (published: 1).
    eta: DDIM stochasticity (published: 0).

  Returns:
    (B, H, W, 1) float32 maps in [0, 1].
  """
  pairs = jnp.asarray(ddim_timesteps(schedule.num_timesteps, steps))
  k_init, k_steps = jax.random.split(key)
  x = jax.random.normal(k_init, map_shape, jnp.float32)
  batch = map_shape[0]

  def step(x_t, inputs):
    (t, t_next), k = inputs
    x0 = denoise_fn(features, x_t, jnp.full((batch,), t, jnp.int32))
    x0 = x0.astype(jnp.float32)
    return _ddim_update(schedule, x_t, x0, t, t_next, eta, k), None

  keys = jax.random.split(k_steps, pairs.shape[0])
  x, _ = jax.lax.scan(step, x, ((pairs[:, 0], pairs[:, 1]), keys))
  return jnp.clip(x, 0.0, 1.0)


def sample_saliency(model: Any, img: jax.Array, key: jax.Array,
                    audio: jax.Array | None = None, *,
                    schedule: Schedule | None = None, steps: int = 1,
                    eta: float = 0.0) -> jax.Array:
  """Predicts (B,H,W,1) maps for clips `img` (B,T,H,W,3) with a DiffSal model.

  Runs `model.encode` once and `model.denoise` once per DDIM step.
  """
  schedule = schedule or make_schedule()
  features = model.encode(img, audio)
  batch, _, height, width, _ = img.shape
  denoise = lambda f, x_t, t: model.denoise(f, x_t, t, train=False)
  return sample_ddim(denoise, features, key, (batch, height, width, 1),
                     schedule, steps=steps, eta=eta)
