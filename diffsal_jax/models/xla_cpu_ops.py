"""Operations with hand-written gradients, for training speed and memory.

Forward passes compute exactly what the plain jnp code would (so the parity
with the published model is untouched); the backward passes keep fewer and
smaller residuals than autodiff does, and avoid the patterns XLA:CPU handles
badly (grouped convolutions, long fused gradient chains, hoisted windows).
All arrays are channels-last. The model uses them on the "xla_cpu" op path
(`op_paths`, the default on CPU).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------- GELU --


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU; its backward keeps only `x` (autodiff keeps three)."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  # d/dx [x Phi(x)] = Phi(x) + x phi(x).
  x32 = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(x32 * np.float32(1 / math.sqrt(2))))
  pdf = jnp.exp(-0.5 * x32 * x32) * np.float32(1 / math.sqrt(2 * math.pi))
  return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)

# -------------------------------------------------------------- attention --


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              bias: jax.Array | None, bias_offset: int = 0) -> jax.Array:
  """softmax(q k^T + bias) v over `(B, heads, tokens, d)` arrays.

  `q` is already scaled. `bias (B, heads, Nq - o, Nk - o)` is added to the
  logits from row and column `o = bias_offset` on (MViT leaves its cls token
  out of the relative positions). The softmax runs in float32. The backward
  keeps only the attention probabilities (autodiff keeps three matrices of
  that size, up to 230 MB each at full size).
  """
  return _attention_fwd(q, k, v, bias, bias_offset)[0]


def _attention_fwd(q, k, v, bias, bias_offset):
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  if bias is not None:
    o = bias_offset
    logits = logits.at[:, :, o:, o:].add(bias.astype(logits.dtype))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  return out, (q, k, v, probs, bias is not None)


def _attention_bwd(bias_offset, residuals, g):
  q, k, v, probs, has_bias = residuals
  g = g.astype(v.dtype)
  dv = jnp.einsum("bhqk,bhqd->bhkd", probs, g)
  dprobs = jnp.einsum("bhqd,bhkd->bhqk", g, v).astype(jnp.float32)
  p32 = probs.astype(jnp.float32)
  dlogits = p32 * (dprobs - jnp.sum(dprobs * p32, axis=-1, keepdims=True))
  dlogits = dlogits.astype(q.dtype)
  dq = jnp.einsum("bhqk,bhkd->bhqd", dlogits, k)
  dk = jnp.einsum("bhqk,bhqd->bhkd", dlogits, q)
  o = bias_offset
  dbias = dlogits[:, :, o:, o:] if has_bias else None
  return dq, dk, dv, dbias


attention.defvjp(_attention_fwd, _attention_bwd)

# -------------------------------------------------------- gradient barrier --


@jax.custom_vjp
def gradient_barrier(x: jax.Array) -> jax.Array:
  """Identity whose gradient is materialised here.

  Without it XLA:CPU fuses the elementwise chain of a residual stream's
  gradient (LayerNorm backward after LayerNorm backward) into every consumer,
  recomputing it once per block: quadratic work, compile time and memory.
  XLA:CPU drops optimization barriers before fusion, but does not fuse
  across a conditional, so the CPU backward passes through a `lax.cond`.
  The "native" op path (accelerators, where a conditional may cost a host
  sync) skips it.
  """
  return x


def _barrier_bwd(_, g):
  # Both branches return g; the predicate only has to be opaque to XLA.
  return (jax.lax.cond(jnp.isnan(g.reshape(-1)[0]), lambda v: v * 1.0,
                       lambda v: v, g),)


gradient_barrier.defvjp(lambda x: (x, None), _barrier_bwd)

# ------------------------------------------------ recompute in the backward --


def recompute_in_backward(fn):
  """`fn(params, x)` that keeps only its inputs for the backward pass.

  Like `jax.checkpoint`, the backward runs `fn` again to get its residuals.
  XLA:CPU, though, schedules such a recomputation as early as its inputs
  allow (during the forward pass), so the residuals were all alive at once
  and the peak memory did not move. Here the recomputation sits inside a
  conditional whose predicate reads the incoming gradient: it cannot start
  before that gradient exists, and its temporaries live only while it runs.
  The predicate is "the gradient's first element is NaN", and that branch
  returns NaN gradients (what a NaN gradient gives anyway), so XLA compiles
  the block's backward once: with it in both branches the demo train step
  had 4,696 kernels and compiled in 38-41 s, now 3,984 and 35-36 s (same
  gradients bit for bit; docs/performance.md, "Start-up").
  The "native" op path uses `jax.checkpoint` instead (`op_paths.recompute`).
  """

  @jax.custom_vjp
  def wrapped(params, x):
    return fn(params, x)

  def forward(params, x):
    return fn(params, x), (params, x)

  def backward(residuals, g):
    def gradients(operands):
      params, x, g = operands
      return jax.vjp(fn, params, x)[1](g)

    def not_a_number(operands):
      params, x, _ = operands
      return jax.tree.map(lambda v: jnp.full_like(v, jnp.nan), (params, x))

    operands = (*residuals, g)
    return jax.lax.cond(jnp.isnan(g.reshape(-1)[0]), not_a_number, gradients,
                        operands)

  wrapped.defvjp(forward, backward)
  return wrapped

# --------------------------------------------------- depthwise convolution --


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]]) -> jax.Array:
  """`x (N, *spatial, C)`, `kernel (*k, C)` -> `(N, *out_spatial, C)`.

  XLA:CPU runs grouped convolutions through a generic loop 100x+ slower than
  one fused multiply-add per kernel tap; on accelerators the fused form is
  as fast. Sums follow the tap order: float32 rounding differences only.
  """
  ks = kernel.shape[:-1]
  if tuple(ks) == tuple(strides) and all(tuple(p) == (0, 0) for p in padding):
    # Non-overlapping windows: one reshape and a weighted window sum (the
    # rows and columns that no window covers are dropped, as by the conv).
    n, c = x.shape[0], x.shape[-1]
    x = x[(slice(None), *(slice(0, size - size % k)
                          for size, k in zip(x.shape[1:-1], ks)))]
    split = [d for size, k in zip(x.shape[1:-1], ks) for d in (size // k, k)]
    # In at least float32: the kernel's gradient sums over every window and
    # example, and XLA sums a bfloat16 reduction in bfloat16 (see
    # layers._BiasInFloat32). A no-op in float32 runs.
    wide = jnp.promote_types(kernel.dtype, jnp.float32)
    y = x.reshape(n, *split, c) * kernel.astype(wide).reshape(
        *[d for k in ks for d in (1, k)], c)
    return y.sum(axis=tuple(range(2, 2 * len(ks) + 1, 2))).astype(x.dtype)
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  return _shifted_conv(padded, kernel, tuple(strides),
                       tuple(tuple(p) for p in padding))


def _windows(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int]):
  """Yields (tap, the strided window of `x` that kernel tap multiplies)."""
  out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], kernel_size, strides)]
  for tap in np.ndindex(*kernel_size):
    limit = (t + (o - 1) * s + 1 for t, o, s in zip(tap, out, strides))
    yield tap, jax.lax.slice(x, (0, *tap, 0), (x.shape[0], *limit, x.shape[-1]),
                             (1, *strides, 1))


def _valid_conv(x: jax.Array, kernel: jax.Array, strides) -> jax.Array:
  total = None
  for tap, window in _windows(x, kernel.shape[:-1], strides):
    term = window * kernel[tap]
    total = term if total is None else total + term
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_conv(padded, kernel, strides, padding):
  del padding  # Only the backward needs it, to crop the input gradient.
  return _valid_conv(padded, kernel, strides)


def _shifted_conv_fwd(padded, kernel, strides, padding):
  return _shifted_conv(padded, kernel, strides, padding), (padded, kernel)


def _shifted_conv_bwd(strides, padding, residuals, g):
  """dx: one stride-1 conv of the dilated gradient with the flipped kernel.

  dk: a loop over the taps with one window in memory at a time (unrolled,
  XLA:CPU computes every tap's window early and keeps them all alive).
  The gradient flows to the padded input; the caller's pad crops it.
  """
  padded, kernel = residuals
  ks = kernel.shape[:-1]
  dilate = [(0, 0, 0)]
  for n, k, s, o in zip(padded.shape[1:-1], ks, strides, g.shape[1:-1]):
    # g[o] lands at padded position o*s, shifted right by k-1.
    dilate.append((k - 1, n - (o - 1) * s - 1, s - 1))
  g_full = jax.lax.pad(g, jnp.zeros((), g.dtype), (*dilate, (0, 0, 0)))
  dx = _valid_conv(g_full, kernel[tuple(slice(None, None, -1) for _ in ks)],
                   (1,) * len(ks))
  size = tuple((o - 1) * s + 1 for o, s in zip(g.shape[1:-1], strides))
  every = (slice(None), *(slice(None, None, s) for s in strides))

  def tap_gradient(tap):
    window = jax.lax.dynamic_slice(padded, (0, *tap, 0),
                                   (padded.shape[0], *size, padded.shape[-1]))
    return jnp.sum(window[every] * g, axis=tuple(range(g.ndim - 1)))

  taps = jnp.asarray(list(np.ndindex(*ks)), jnp.int32)
  return dx, jax.lax.map(tap_gradient, taps).reshape(kernel.shape)


_shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)

# ------------------------------------------- dilated convolution, dk by tap --

# Below about this many FLOPs the kernel gradient is a negligible part of the
# step (demo and test models: under 1%), so XLA's own form stays there, and
# with it the rounding the demos were tuned with. The published UpEmbed
# convolutions need 8-29 GFLOP each.
TAP_GRADIENT_MIN_FLOP = 1e9


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`jax.lax.conv_general_dilated`, for `nnx.Conv(conv_general_dilated=...)`.

  The forward pass and the input gradient are always XLA's. A 2-D
  stride-1 convolution with kernel dilation and at least
  `TAP_GRADIENT_MIN_FLOP` gets its kernel gradient as one matrix product per
  tap (the tap's input window against the output gradient, over N*H'*W'
  rows; taps in a loop, so one window is in memory at a time). XLA:CPU
  computes that gradient as a convolution whose window is the whole output
  image: 11-40 GFLOP/s against 74 for the step's matrix products (published
  AV step, the UpEmbed convolutions: 5.1 s of 28). Same run, calls
  alternated: published AV train step 28.4 -> 25.9 s (median of 5).
  """
  n, h, w, _ = lhs.shape if lhs.ndim == 4 else (0, 0, 0, 0)
  if (lhs.ndim != 4 or kwargs.get("out_sharding")
      or feature_group_count != 1 or tuple(window_strides) != (1, 1)
      or tuple(lhs_dilation or (1, 1)) != (1, 1)
      or tuple(rhs_dilation or (1, 1)) == (1, 1)
      or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        ("NHWC", "HWIO", "NHWC"))
      or 2 * n * h * w * rhs.size < TAP_GRADIENT_MIN_FLOP):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  return _tap_grad_conv(lhs, rhs, tuple(tuple(p) for p in padding),
                        tuple(rhs_dilation), precision)


def _conv_nhwc(x, kernel, padding, dilation, precision):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_grad_conv(x, kernel, padding, dilation, precision):
  return _conv_nhwc(x, kernel, padding, dilation, precision)


def _tap_grad_fwd(x, kernel, padding, dilation, precision):
  return _conv_nhwc(x, kernel, padding, dilation, precision), (x, kernel)


def _tap_grad_bwd(padding, dilation, precision, residuals, g):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _conv_nhwc(x, kernel, padding, dilation, precision),
               x)[1](g)[0]
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  rows = g.shape[0] * g.shape[1] * g.shape[2]
  g_rows = g.reshape(rows, g.shape[3])

  def tap_gradient(tap):
    start = (0, tap[0] * dilation[0], tap[1] * dilation[1], 0)
    window = jax.lax.dynamic_slice(padded, start, (*g.shape[:3], x.shape[3]))
    return jnp.dot(window.reshape(rows, x.shape[3]).T, g_rows, precision=precision)

  taps = jnp.asarray(list(np.ndindex(*kernel.shape[:2])), jnp.int32)
  dk = jax.lax.map(tap_gradient, taps).reshape(kernel.shape)
  return dx, dk.astype(kernel.dtype)


_tap_grad_conv.defvjp(_tap_grad_fwd, _tap_grad_bwd)
