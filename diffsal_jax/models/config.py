"""Model hyper-parameters as `ml_collections.ConfigDict`.

`published_model_config` holds the values of the released DiffSal model
(`cfgs/visual.py`, `cfgs/audio_visual.py` and the mmaction2 MViTv2-S
`small` arch); `tiny_model_config` keeps every structural rule but shrinks
widths and sizes so tests and demos run in seconds on a CPU.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("visual", "av")


def num_audio_patches(cfg: ml_collections.ConfigDict) -> int:
  """Audio patches per clip: the fusion's T/2 decoder steps plus the noise
  step (9 for the published 16-frame clips, 5 for the tiny 8-frame ones)."""
  return cfg.clip_len // 2 + 1


def published_model_config(variant: str = "visual") -> ml_collections.ConfigDict:
  """The released DiffSal architecture. `variant`: 'visual' or 'av'."""
  if variant not in VARIANTS:
    raise ValueError(f"model.variant must be one of {VARIANTS}, got {variant!r}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.clip_len = 16                   # frames per clip (published len_snippet=16 for eval)
  c.image_size = (224, 384)         # (H, W); any multiple of 32 works
  c.audio_size = (112, 192)         # each log-mel patch is resized to this
  # Reproduce the published code's bugs (needed to load its weights). Setting
  # this True uses the evidently intended computation instead (new training only):
  # the audio patch/position embedding is applied, and the audio-visual fusion
  # transposes instead of reinterpreting memory.
  c.fix_quirks = False
  c.dtype = "float32"               # compute dtype; parameters stay float32
  # Implementation of the backend-sensitive ops (models/op_paths.py): "auto"
  # takes the XLA:CPU-tuned forms on CPU and the native ones on GPU/TPU;
  # "xla_cpu" or "native" force one. Same function, same parameters.
  c.ops = "auto"

  c.mvit = ml_collections.ConfigDict()
  c.mvit.embed_dim = 96             # MViTv2-S
  c.mvit.depth = 16
  c.mvit.num_heads = 1
  c.mvit.downscale_blocks = (1, 3, 14)   # heads, width double and q is pooled here
  c.mvit.kv_stride = 8              # initial adaptive kv stride (H, W); halves at each downscale
  c.mvit.mlp_ratio = 4.0
  c.mvit.rel_pos_size = (16, 224)   # (frames, side) the Kinetics tables were sized for
  # Recompute the blocks' activations in the backward pass: about 3 GB less
  # for a full-size train step, for one more MViT forward pass (+16% FLOPs).
  c.mvit.remat = True

  c.unet = ml_collections.ConfigDict()
  c.unet.ch = 96                    # time-embedding base width (temb is 4x)
  c.unet.widths = (768, 384, 192, 96)   # decoder stage widths, deepest first
  c.unet.num_heads = 2
  c.unet.mlp_ratio = 2.0
  c.unet.kv_strides = (2, 4, 8, 16)
  c.unet.temporal_kernel = 5        # ReduceTemp kernel and stride
  c.unet.groups = 32                # GroupNorm groups in the noise encoder
  c.unet.dropout = 0.1

  c.audio = ml_collections.ConfigDict()
  c.audio.vggish_widths = (64, 128, 256, 512)
  c.audio.depth = 1
  c.audio.heads = 2
  c.audio.dim_head = 64
  c.audio.mlp_dim = 256
  c.lock()   # an unknown key fails where it is written
  return c


def tiny_model_config(variant: str = "visual") -> ml_collections.ConfigDict:
  """Same structure, small enough for CPU tests (about 1 s per forward)."""
  c = published_model_config(variant)
  c.clip_len = 8
  c.image_size = (64, 96)
  c.audio_size = (32, 48)
  c.mvit.embed_dim = 16
  c.mvit.rel_pos_size = (8, 64)
  c.unet.ch = 16
  c.unet.widths = (128, 64, 32, 16)
  c.unet.groups = 8
  # Keep a 2x3 key grid at every stage (published: 3x6); with a single key
  # token the attention, and so the audio keys, would have no effect.
  c.unet.kv_strides = (1, 2, 4, 8)
  c.audio.vggish_widths = (8, 16, 16, 32)
  c.audio.dim_head = 8
  c.audio.mlp_dim = 32
  return c
