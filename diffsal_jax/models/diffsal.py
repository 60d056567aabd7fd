"""The whole DiffSal denoiser: video (+ audio) encoders and the Saliency-UNet.

`encode` runs the encoders once per clip; `denoise` re-runs only the
Saliency-UNet, which is what a multi-step DDIM sampler needs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from diffsal_jax.models.audio_transformer import AudioTransformer
from diffsal_jax.models.config import VARIANTS, num_audio_patches
from diffsal_jax.models import op_paths
from diffsal_jax.models.mvit import MViT
from diffsal_jax.models.saliency_unet import SaliencyUNet
from diffsal_jax.models.vggish import VGGish

Features = dict[str, Any]


def _check(cfg: ml_collections.ConfigDict) -> None:
  if cfg.variant not in VARIANTS:
    raise ValueError(f"model.variant must be one of {VARIANTS}, got {cfg.variant!r}")
  op_paths.resolve(cfg.get("ops", "auto"))   # raises on an unknown name
  h, w = cfg.image_size
  if h % 32 or w % 32:
    raise ValueError(f"model.image_size {tuple(cfg.image_size)} must be multiples of 32")
  if cfg.clip_len % 2:
    raise ValueError(f"model.clip_len must be even (the patch embedding has temporal stride 2), "
                     f"got {cfg.clip_len}")
  m = cfg.mvit
  stage_dims = tuple(m.embed_dim * 2 ** i for i in range(len(m.downscale_blocks), -1, -1))
  if tuple(cfg.unet.widths) != stage_dims:
    raise ValueError(f"model.unet.widths {tuple(cfg.unet.widths)} must be the MViT stage widths "
                     f"{stage_dims}, deepest first (model.mvit.embed_dim={m.embed_dim}, doubled "
                     f"at each of model.mvit.downscale_blocks)")
  ah, aw = cfg.audio_size
  if (ah // 16, aw // 16) != (h // 32, w // 32):
    raise ValueError(f"model.audio_size {tuple(cfg.audio_size)} must give the deepest video grid "
                     f"{(h // 32, w // 32)} after VGGish's /16 (use {(h // 2, w // 2)})")


class DiffSal(nnx.Module):
  """`VideoSaliencyModel`: MViT (+ VGGish + AudioTransformer) + SaliencyUNet."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    _check(cfg)
    dtype = jnp.dtype(cfg.dtype)
    self.variant = cfg.variant
    audio_dim = cfg.audio.vggish_widths[-1]
    self.visual_net = MViT(cfg, rngs=rngs, dtype=dtype)
    if cfg.variant == "av":
      self.audio_net = VGGish(cfg.audio.vggish_widths, rngs=rngs, dtype=dtype)
      self.spatiotemp_net = AudioTransformer(
          audio_dim, cfg.audio.depth, cfg.audio.heads, cfg.audio.dim_head, cfg.audio.mlp_dim,
          num_audio_patches(cfg), fix_quirks=cfg.fix_quirks, rngs=rngs, dtype=dtype)
    self.decoder_net = SaliencyUNet(cfg, audio_dim, rngs=rngs, dtype=dtype)
    self.dtype = dtype
    # One place picks the operations' implementation ("ops" is absent in
    # the config.json of older checkpoints).
    op_paths.use(self, cfg.get("ops", "auto"))

  def encode(self, img: jax.Array, audio: jax.Array | None = None) -> Features:
    """`img (B,T,H,W,3)`, `audio (B,P,h,w)` -> encoder features (a pytree)."""
    vis = self.visual_net(img.astype(self.dtype))
    if self.variant == "visual":
      return {"vis": vis, "audio": None}
    if audio is None:
      raise ValueError("the audio-visual model needs `audio` (B, P, h, w) log-mel patches")
    b, p, h, w = audio.shape
    a = self.audio_net(audio.reshape(b * p, h, w, 1).astype(self.dtype))
    # Published: VGGish frozen. The trainer freezes it (config.frozen_subtrees,
    # which also skips its backward pass); a from-scratch run may train it.
    a = self.spatiotemp_net(a.reshape(b, p, *a.shape[1:]))
    return {"vis": vis, "audio": a}

  def denoise(self, features: Features, x_t: jax.Array, t: jax.Array, *, train: bool = False,
              dropout_key: jax.Array | None = None) -> jax.Array:
    """Saliency-UNet only: `x_t (B,H,W,1)`, `t (B,)` -> x0 `(B,H,W,1)` float32."""
    return self.decoder_net(x_t, t, features["vis"], features["audio"], train=train,
                            dropout_key=dropout_key)

  def __call__(self, img, x_t, t, audio=None, *, train: bool = False, dropout_key=None):
    return self.denoise(self.encode(img, audio), x_t, t, train=train, dropout_key=dropout_key)
