"""Saliency-UNet: the denoiser that maps a noisy map + encoder features to x0.

Noise encoder (DDPM-style ResNet blocks conditioned on the time embedding)
produces one feature map per decoder scale; each is appended as an extra
frame to the matching video feature. Four transformer decoder stages (with
audio-visual fusion) are reduced over time, resized to a common grid, summed
and projected to a sigmoid map.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from diffsal_jax.models import layers
from diffsal_jax.models.unet_blocks import FusionTransformerBlock, ResnetBlock, UpEmbed


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding `[sin(t f_i), cos(t f_i)]`, `f_i = 10000^(-i/(half-1))`."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - 1)))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)


class DecoderStage(nnx.Module):
  """(UpEmbed) -> fusion block -> LayerNorm -> ReduceTemporal conv + ReLU."""

  def __init__(self, in_dim: int | None, dim: int, out_dim: int, cfg: ml_collections.ConfigDict,
               kv_stride: int, audio_dim: int, *, rngs: nnx.Rngs, dtype=None):
    u = cfg.unet
    self.up = UpEmbed(in_dim, dim, rngs=rngs, dtype=dtype) if in_dim else None
    self.block = FusionTransformerBlock(dim, u.num_heads, u.mlp_ratio, kv_stride, audio_dim,
                                        fix_quirks=cfg.fix_quirks, rngs=rngs, dtype=dtype)
    self.norm = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    k = u.temporal_kernel
    self.reduce_temporal = layers.conv(dim, out_dim, (k, 1, 1), stride=(k, 1, 1),
                                       use_bias=False, dtype=dtype, rngs=rngs)


class SaliencyUNet(nnx.Module):
  """`SalUNet` of the published model (image_based=True, 4 decoder stages)."""

  def __init__(self, cfg: ml_collections.ConfigDict, audio_dim: int, *, rngs: nnx.Rngs,
               dtype=None):
    u = cfg.unet
    self.image_size = tuple(cfg.image_size)
    widths = tuple(u.widths)
    ch, temb_ch = u.ch, 4 * u.ch
    self.ch = ch
    self.temb_dense0 = layers.Linear(ch, temb_ch, dtype=dtype, rngs=rngs)
    self.temb_dense1 = layers.Linear(temb_ch, temb_ch, dtype=dtype, rngs=rngs)
    self.conv_in = layers.conv(1, ch, (3, 3), padding=1, dtype=dtype, rngs=rngs)
    self.down1 = layers.conv(ch, ch, (3, 3), stride=4, dtype=dtype, rngs=rngs)
    res, downs, in_c = [], [], ch
    for out_c in widths[:-1][::-1]:
      res.append(ResnetBlock(in_c, out_c, temb_ch, u.groups, u.dropout, rngs=rngs, dtype=dtype))
      downs.append(layers.conv(out_c, out_c, (3, 3), stride=2, dtype=dtype, rngs=rngs))
      in_c = out_c
    self.res_blocks, self.downsamples = nnx.List(res), nnx.List(downs)
    self.stages = nnx.List([
        DecoderStage(widths[i - 1] if i else None, widths[i], widths[0], cfg, u.kv_strides[i],
                     audio_dim, rngs=rngs, dtype=dtype) for i in range(len(widths))])
    self.mt_proj_conv = layers.conv(widths[0], widths[-1], (3, 3), padding=1, dtype=dtype,
                                    rngs=rngs)
    self.mt_proj_bn = layers.batch_norm(widths[-1], rngs=rngs, dtype=dtype)
    self.logits = layers.conv(widths[-1], 1, (1, 1), dtype=dtype, rngs=rngs)

  def time_embedding(self, t: jax.Array) -> jax.Array:
    temb = timestep_embedding(t, self.ch).astype(self.temb_dense0.kernel.dtype)
    return self.temb_dense1(layers.swish(self.temb_dense0(temb)))

  def encode_noise(self, x_t, temb, dropout_key=None, record=lambda k, v: None):
    """Noisy map `(B,H,W,1)` -> one-frame features `(B,1,h,w,C)`, deepest first."""
    h = self.conv_in(x_t)
    record("conv_in", h)
    h = self.down1(layers.pad_right_bottom(h))
    record("down1", h)
    keys = (jax.random.split(dropout_key, len(self.res_blocks)) if dropout_key is not None
            else [None] * len(self.res_blocks))
    feats = []
    for block, down, key in zip(self.res_blocks, self.downsamples, keys):
      h = down(layers.pad_right_bottom(block(h, temb, dropout_key=key)))
      feats.append(h[:, None])
    return feats[::-1]

  def __call__(self, x_t: jax.Array, t: jax.Array, vis: list[jax.Array],
               audio: jax.Array | None = None, *, train: bool = False,
               dropout_key: jax.Array | None = None, intermediates: dict | None = None,
               ) -> jax.Array:
    """Predict x0 `(B, H, W, 1)` from `x_t (B,H,W,1)`, `t (B,)` and encoder features.

    If `intermediates` is a dict, the activations the parity tests track are
    stored in it (the published module names as keys).
    """
    record = intermediates.__setitem__ if intermediates is not None else lambda k, v: None
    temb = self.time_embedding(t)
    noise = self.encode_noise(x_t.astype(temb.dtype), temb, dropout_key, record)
    for v, n in zip(vis, noise):
      if v.shape[2:] != n.shape[2:]:
        raise ValueError(f"video feature {v.shape} and noise feature {n.shape} disagree; "
                         "image_size must be a multiple of 32")
    joined = [jnp.concatenate([v, n.astype(v.dtype)], axis=1) for v, n in zip(vis, noise)]
    x = joined[0]
    h0, w0 = x.shape[2:4]
    grid = (h0 * 2 ** len(self.stages), w0 * 2 ** len(self.stages))
    total = 0.0
    for i, stage in enumerate(self.stages):
      if stage.up is not None:
        x = stage.up(x, train=train)
        if i < len(joined):  # the finest video scale is never joined
          x = x + joined[i]
      x = stage.block(x, audio)
      record(f"mid_stages.{i}", x)
      y = jax.nn.relu(stage.reduce_temporal(stage.norm(x)))
      total = total + layers.resize_bilinear(y[:, 0], grid)
    p = jax.nn.relu(self.mt_proj_bn(self.mt_proj_conv(total), use_running_average=not train))
    record("mt_proj", p)
    p = jax.nn.sigmoid(self.logits(p).astype(jnp.float32))
    record("logits", p)
    return layers.resize_bilinear(p, self.image_size)
