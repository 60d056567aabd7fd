"""Which implementation the model's backend-sensitive operations use.

Two paths compute the same function in float32 (outputs and gradients
within 1e-5, tests/test_op_paths.py; in bfloat16 they round differently):

- `"xla_cpu"`: the forms tuned for XLA:CPU in `xla_cpu_ops`: depthwise
  convolutions as shifted products, hand-written attention and GELU
  gradients, MViT blocks recomputed inside a conditional on the incoming
  gradient, gradient barriers between blocks, per-tap kernel gradients of
  large dilated convolutions.
- `"native"`: what accelerators compile well: grouped convolutions,
  `jax.nn.dot_product_attention`, autodiff GELU, and `jax.checkpoint`
  (nothing saved) for the MViT recomputation.

`config.model.ops` picks one: `"auto"` (the default) takes `"xla_cpu"` on the
CPU backend and `"native"` elsewhere, from `jax.default_backend()` when the
model is built. `DiffSal` applies it (`use`); a component built on its own
(an `MViT`, a `layers.conv`) takes `"auto"`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from diffsal_jax.models import xla_cpu_ops

PATHS = ("auto", "xla_cpu", "native")


def resolve(name: str) -> str:
  """`"auto"` -> the path for `jax.default_backend()`; others are checked.

  Raises ValueError naming `model.ops` for an unknown name.
  """
  if name not in PATHS:
    raise ValueError(f"model.ops must be one of {PATHS}, got {name!r}")
  if name == "auto":
    return "xla_cpu" if jax.default_backend() == "cpu" else "native"
  return name


def use(model: nnx.Module, path: str) -> None:
  """Sets `path` (resolved) on every module of `model` that has a choice.

  Modules with a choice carry an `op_path` attribute; every `nnx.Conv` also
  gets the matching `conv_general_dilated`. Parameters are untouched, so a
  checkpoint or converted weights load into either path.
  """
  path = resolve(path)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "op_path"):
      module.op_path = path
    if isinstance(module, nnx.Conv):
      module.conv_general_dilated = conv_general_dilated(path)


def conv_general_dilated(path: str) -> Callable:
  """The `conv_general_dilated` an `nnx.Conv` of this path calls."""
  if path == "xla_cpu":
    return xla_cpu_ops.conv_general_dilated
  return jax.lax.conv_general_dilated


def gelu(path: str, x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as torch.nn.GELU()."""
  if path == "xla_cpu":
    return xla_cpu_ops.gelu(x)
  return jax.nn.gelu(x, approximate=False)


def attention(path: str, q: jax.Array, k: jax.Array, v: jax.Array,
              bias: jax.Array | None, bias_offset: int = 0) -> jax.Array:
  """softmax(q k^T + bias) v over `(B, heads, tokens, d)`; see
  `xla_cpu_ops.attention` for `bias` and `bias_offset`. `q` is pre-scaled;
  the softmax runs in float32 on both paths."""
  if path == "xla_cpu":
    return xla_cpu_ops.attention(q, k, v, bias, bias_offset)
  if bias is not None and bias_offset:
    o = bias_offset
    bias = jnp.pad(bias, ((0, 0), (0, 0), (o, 0), (o, 0)))
  heads_second = lambda t: t.transpose(0, 2, 1, 3)   # (B, N, heads, d)
  out = jax.nn.dot_product_attention(
      heads_second(q), heads_second(k), heads_second(v),
      bias, scale=1.0)
  return heads_second(out)


def block_barrier(path: str, x: jax.Array) -> jax.Array:
  """`xla_cpu_ops.gradient_barrier` on the CPU path, the identity otherwise."""
  return xla_cpu_ops.gradient_barrier(x) if path == "xla_cpu" else x


def recompute(path: str, fn: Callable) -> Callable:
  """`fn(params, x)` whose activations are recomputed in the backward pass.

  CPU: `xla_cpu_ops.recompute_in_backward` (XLA:CPU would otherwise run the
  recomputation during the forward pass). Native: `jax.checkpoint` saving
  nothing, the same memory model (only each block's input is kept).
  """
  if path == "xla_cpu":
    return xla_cpu_ops.recompute_in_backward(fn)
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
