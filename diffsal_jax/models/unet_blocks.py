"""Blocks of the Saliency-UNet: noise-encoder ResNet block, `UpEmbed`, and the
audio-visual fusion transformer block with its efficient (strided kv) attention.

All tensors are channels-last; clips are `(B, T, H, W, C)` with the time axis
folded into the batch where the published code works per frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffsal_jax.models import layers


def per_sample_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """Inverted dropout whose mask for sample i depends only on (key, i).

  Drawing one mask per sample from its own key keeps a sample's mask
  independent of how the batch is split over devices.
  """
  keys = jax.random.split(key, x.shape[0])
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[1:]))(keys)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class ResnetBlock(nnx.Module):
  """GroupNorm-swish-conv twice, time embedding added in between (DDPM style)."""

  def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int, dropout: float,
               *, rngs: nnx.Rngs, dtype=None):
    gn = lambda c: nnx.GroupNorm(c, num_groups=groups, epsilon=1e-6, use_fast_variance=False,
                                 dtype=dtype, rngs=rngs)
    self.norm1 = gn(in_ch)
    self.conv1 = layers.conv(in_ch, out_ch, (3, 3), padding=1, dtype=dtype, rngs=rngs)
    self.temb_proj = layers.Linear(temb_ch, out_ch, dtype=dtype, rngs=rngs)
    self.norm2 = gn(out_ch)
    self.dropout_rate = dropout
    self.conv2 = layers.conv(out_ch, out_ch, (3, 3), padding=1, dtype=dtype, rngs=rngs)
    self.nin_shortcut = (layers.conv(in_ch, out_ch, (1, 1), dtype=dtype, rngs=rngs)
                         if in_ch != out_ch else None)

  def __call__(self, x, temb, *, dropout_key=None):
    h = self.conv1(layers.swish(self.norm1(x)))
    h = h + self.temb_proj(layers.swish(temb))[:, None, None, :]
    h = layers.swish(self.norm2(h))
    if dropout_key is not None and self.dropout_rate > 0:
      h = per_sample_dropout(h, self.dropout_rate, dropout_key)
    h = self.conv2(h)
    if self.nin_shortcut is not None:
      x = self.nin_shortcut(x)
    return x + h


class UpEmbed(nnx.Module):
  """Per frame: bilinear x2, then two (dilated 3x3 conv, BatchNorm, ReLU)."""

  def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs, dtype=None):
    dil = lambda i, o: layers.conv(i, o, (3, 3), padding=2, dilation=2, use_bias=False,
                                   dtype=dtype, rngs=rngs)
    self.conv1, self.bn1 = dil(in_ch, out_ch), layers.batch_norm(out_ch, rngs=rngs, dtype=dtype)
    self.conv2, self.bn2 = dil(out_ch, out_ch), layers.batch_norm(out_ch, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    b, t, h, w, c = x.shape
    y = layers.resize_bilinear(x.reshape(b * t, h, w, c), (2 * h, 2 * w))
    y = jax.nn.relu(self.bn1(self.conv1(y), use_running_average=not train))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=not train))
    return y.reshape(b, t, *y.shape[1:])


class EfficientAttention(nnx.Module):
  """Depthwise-conv projections; keys and values pooled with stride s.

  q: depthwise 3x3x3 conv (on a one-frame grid, padding 1) + LayerNorm;
  k, v: depthwise (1, s, s) conv with stride s + LayerNorm; then Linear
  projections, `heads` heads, and the full-width scale `C ** -0.5`.
  """

  def __init__(self, dim: int, heads: int, kv_stride: int, *, rngs: nnx.Rngs, dtype=None):
    self.heads, self.dim = heads, dim
    dw = lambda k, s, p: layers.conv(dim, dim, k, stride=s, padding=p, groups=dim,
                                     use_bias=False, dtype=dtype, rngs=rngs)
    ln = lambda: layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    s = kv_stride
    self.q_conv, self.q_norm = dw((3, 3, 3), 1, 1), ln()
    self.k_conv, self.k_norm = dw((1, s, s), (1, s, s), 0), ln()
    self.v_conv, self.v_norm = dw((1, s, s), (1, s, s), 0), ln()
    lin = lambda: layers.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.proj_q, self.proj_k, self.proj_v, self.proj = lin(), lin(), lin(), lin()

  def _tokens(self, conv, norm, grid):
    y = conv(grid[:, None])  # a one-frame 3-D grid, as in the published Conv3d
    return norm(y.reshape(y.shape[0], -1, self.dim))

  def _heads(self, x):
    n, l, _ = x.shape
    return x.reshape(n, l, self.heads, -1).transpose(0, 2, 1, 3)

  def __call__(self, grid: jax.Array, key_grid: jax.Array | None = None) -> jax.Array:
    """`grid (N, H, W, C)` -> tokens `(N, H*W, C)`; keys from `key_grid` if given."""
    q = self._heads(self.proj_q(self._tokens(self.q_conv, self.q_norm, grid)))
    k_src = grid if key_grid is None else key_grid
    k = self._heads(self.proj_k(self._tokens(self.k_conv, self.k_norm, k_src)))
    v = self._heads(self.proj_v(self._tokens(self.v_conv, self.v_norm, grid)))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q, k) * self.dim**-0.5
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("nhqk,nhkd->nhqd", attn, v).transpose(0, 2, 1, 3)
    return self.proj(out.reshape(out.shape[0], out.shape[1], self.dim))


class FusionTransformerBlock(nnx.Module):
  """Transformer block per frame whose keys come from audio-gated features.

  Audio fusion (audio-visual model): project the audio features to C, upsample
  to the frame grid, gate them by a softmax (over width) of their time-averaged
  product with the visual tokens, and use the result as the key source.
  """

  def __init__(self, dim: int, heads: int, mlp_ratio: float, kv_stride: int, audio_dim: int,
               *, fix_quirks: bool = False, rngs: nnx.Rngs, dtype=None):
    self.fix_quirks = fix_quirks
    self.norm = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.attn = EfficientAttention(dim, heads, kv_stride, rngs=rngs, dtype=dtype)
    self.norm2 = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = layers.Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
    # Present (and in the checkpoints) for the visual model too, where it is unused.
    self.align_conv = layers.conv(audio_dim, dim, (1, 1), dtype=dtype, rngs=rngs)

  def audio_keys(self, x: jax.Array, audio: jax.Array) -> jax.Array:
    """Audio-gated key grid `(B*T, H, W, C)` from `x (B,T,H,W,C)`, `audio (B,T,h,w,Ca)`."""
    b, t, h, w, c = x.shape
    a = self.align_conv(audio)
    if a.shape[2] != h and a.shape[3] != w:
      a = layers.upsample_nearest(a, h // a.shape[2])
    # Softmax over W, in float32 also when the model computes in bfloat16.
    gate = jax.nn.softmax(jnp.mean(a * x, axis=1, keepdims=True).astype(jnp.float32),
                          axis=3).astype(a.dtype)
    a = a * gate
    if self.fix_quirks:
      return a.reshape(b * t, h, w, c)
    # Published quirk: the channels-first buffer (B, C, T, H, W) is reinterpreted
    # as (B*T, H*W, C) tokens without a transpose, mixing channels and positions.
    return a.transpose(0, 4, 1, 2, 3).reshape(b * t, h, w, c)

  def __call__(self, x: jax.Array, audio: jax.Array | None = None) -> jax.Array:
    b, t, h, w, c = x.shape
    key_grid = None if audio is None else self.audio_keys(x, audio)
    y = x.reshape(b * t, h * w, c)
    y = y + self.attn(self.norm(y).reshape(b * t, h, w, c), key_grid)
    y = y + self.mlp(self.norm2(y))
    return y.reshape(b, t, h, w, c)
