"""Building blocks with PyTorch semantics, channels-last.

The published model is PyTorch; these helpers pin down the details that ports
usually get wrong: LayerNorm/GroupNorm epsilons and exact variance, exact
(erf) GELU, torch-style explicit conv padding, BatchNorm momentum, and
bilinear resizing with `align_corners=False` and no antialiasing.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes

from diffsal_jax.models import op_paths
from diffsal_jax.models import xla_cpu_ops

# torch.nn.LayerNorm / BatchNorm default epsilon.
TORCH_NORM_EPS = 1e-5


def layer_norm(dim: int, *, rngs: nnx.Rngs, eps: float = TORCH_NORM_EPS,
               dtype=None) -> nnx.LayerNorm:
  # Two-pass variance: the fast E[x^2]-E[x]^2 form loses the 1e-4 parity.
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype,
                       rngs=rngs)


def _promote_to_float32(args, /, *, dtype=None, inexact=True):
  """BatchNorm's input, statistics, scale and bias, all in float32."""
  del dtype, inexact
  return tuple(None if x is None else jnp.asarray(x, jnp.float32) for x in args)


def batch_norm(dim: int, *, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
  """torch.nn.BatchNorm, normalising in float32 and returning `dtype`.

  nnx.BatchNorm casts its input, running statistics, scale and bias to
  `dtype`, so with running statistics (evaluation and sampling) it would
  normalise in bfloat16 and sum its bias gradient in bfloat16 (see `_BiasInFloat32`; measured: 1.0 where float32
  gives 9.85). With batch statistics flax already computes in float32, as
  LayerNorm and GroupNorm do.
  """
  # torch momentum 0.1 updates running = 0.9 * running + 0.1 * batch; flax's
  # `momentum` is the weight of the old value.
  return nnx.BatchNorm(dim, momentum=0.9, epsilon=TORCH_NORM_EPS,
                       use_fast_variance=False, use_running_average=True,
                       dtype=dtype, promote_dtype=_promote_to_float32, rngs=rngs)


def gelu(x: jax.Array, op_path: str) -> jax.Array:
  """torch.nn.GELU(): the exact erf form, not the tanh approximation;
  `op_path` as in `op_paths`."""
  return op_paths.gelu(op_path, x)


def swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)


def _promote_keeping_bias_float32(args, /, *, dtype=None, inexact=True):
  """flax's `promote_dtype` for the inputs and the kernel; the bias is left
  in its own dtype (float32), so `_BiasInFloat32` adds it in float32."""
  inputs, kernel, bias = args
  inputs, kernel = dtypes.promote_dtype((inputs, kernel), dtype=dtype,
                                        inexact=inexact)
  return inputs, kernel, bias


class _BiasInFloat32:
  """Mixed precision for nnx.Linear / nnx.Conv: the product in `dtype`
  (bfloat16), the bias added in float32, the output cast back to `dtype`.

  Why: the bias gradient sums the output gradient over every position and
  example, and XLA sums a bfloat16 reduction in bfloat16. Measured on
  XLA:CPU, 16,384 terms of about 6e-4: the bfloat16 sum stops at 1.0 (each
  term is below half a unit in the last place there), the float32 one is
  9.85 (tests/test_layers.py). With the add in float32 the sum's cotangent
  arrives as float32 (the cast's transpose) and is summed in float32. In
  float32 runs this is the same program as nnx's (the casts are no-ops).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, promote_dtype=_promote_keeping_bias_float32,
                     **kwargs)

  def __call__(self, inputs: jax.Array, *args, **kwargs) -> jax.Array:
    y = super().__call__(inputs, *args, **kwargs)
    return y.astype(self.dtype) if self.dtype is not None else y


class Linear(_BiasInFloat32, nnx.Linear):
  """nnx.Linear (same parameters) with the bias added in float32."""


class Conv(_BiasInFloat32, nnx.Conv):
  """nnx.Conv (same parameters) with the bias added in float32."""


def conv(in_ch: int, out_ch: int, kernel: Sequence[int], *, rngs: nnx.Rngs,
         stride: int | Sequence[int] = 1,
         padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0,
         dilation: int | Sequence[int] = 1, groups: int = 1,
         use_bias: bool = True, dtype=None) -> Conv:
  """A conv with torch's explicit zero padding (symmetric ints or pairs)."""
  nd = len(kernel)
  if isinstance(padding, int):
    padding = [(padding, padding)] * nd
  else:
    padding = [p if isinstance(p, tuple) else (p, p) for p in padding]
  depthwise = groups == in_ch == out_ch and groups > 1 and dilation == 1
  return (DepthwiseConv if depthwise else Conv)(
      in_ch, out_ch, tuple(kernel), strides=stride, padding=padding,
      kernel_dilation=dilation, feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, rngs=rngs,
      conv_general_dilated=op_paths.conv_general_dilated(op_paths.resolve("auto")))


class DepthwiseConv(Conv):
  """A depthwise `Conv` (same parameters). On the "xla_cpu" op path it is
  computed as shifted products (see `xla_cpu_ops.depthwise_conv`: XLA:CPU
  grouped convolutions are slow); on "native" it is nnx.Conv's grouped one."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.op_path = op_paths.resolve("auto")

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if self.op_path != "xla_cpu":
      return super().__call__(inputs)
    nd = len(self.kernel_size)
    batch_shape = inputs.shape[:-nd - 1]
    x = inputs.reshape(-1, *inputs.shape[-nd - 1:])
    kernel = self.kernel[...].reshape(*self.kernel_size, -1)
    dtype = self.dtype or jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(
        self.strides or (1,) * nd)
    y = xla_cpu_ops.depthwise_conv(x, kernel, strides, tuple(self.padding))
    if self.bias is not None:   # added in float32: see `_BiasInFloat32`
      y = (y + self.bias[...]).astype(dtype)
    return y.reshape(*batch_shape, *y.shape[1:])


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2 (timm/mmcv `Mlp`)."""

  def __init__(self, dim: int, hidden: int, out: int | None = None, *,
               rngs: nnx.Rngs, dtype=None):
    self.fc1 = Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = Linear(hidden, out or dim, dtype=dtype, rngs=rngs)
    self.op_path = op_paths.resolve("auto")

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(gelu(self.fc1(x), self.op_path))


@functools.lru_cache(maxsize=None)
def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of torch's linear interpolation, align_corners=False.

  Source coordinate `(i + 0.5) * in / out - 0.5`, clamped below at 0; the
  right neighbour index is clamped to `in - 1`. No antialiasing, so
  downscaling samples exactly like torch.nn.functional.interpolate. float64
  (out, in). The audio patches' `data.audio._resize_matrix` builds the same
  matrix (models/ may not import data/; tests/test_audio.py checks it).
  """
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of `(..., H, W, C)` to `size`, torch semantics.

  Implemented as two small matmuls with static interpolation matrices, which
  is exact (no renormalised kernels at the borders) and fast on accelerators.
  """
  h, w = x.shape[-3], x.shape[-2]
  out_h, out_w = size
  if (h, w) == (out_h, out_w):
    return x
  mh = jnp.asarray(linear_resize_matrix(h, out_h), x.dtype)
  mw = jnp.asarray(linear_resize_matrix(w, out_w), x.dtype)
  x = jnp.einsum("oh,...hwc->...owc", mh, x)
  return jnp.einsum("pw,...owc->...opc", mw, x)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """Nearest upsampling of `(..., H, W, C)` by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


def max_pool(x: jax.Array, kernel: Sequence[int], stride: Sequence[int],
             padding: Sequence[int]) -> jax.Array:
  """torch MaxPoolNd on `(B, *spatial, C)`; padding counts as -inf."""
  window = (1, *kernel, 1)
  strides = (1, *stride, 1)
  pads = ((0, 0), *((p, p) for p in padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)


def pad_right_bottom(x: jax.Array) -> jax.Array:
  """Zero pad `(B, H, W, C)` by one row at the bottom and one column right.

  The published noise encoder does this before its stride-2/4 convs (torch has
  no asymmetric conv padding).
  """
  return jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
