"""`AudioAttnNet`: one pre-norm transformer layer over VGGish feature tokens.

The published forward builds a patch and position embedding and then throws
them away, running the transformer on the raw VGGish features. That is the
default here (`fix_quirks=False`) so the released weights give the released
outputs; `fix_quirks=True` applies the embedding as evidently intended.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffsal_jax.models import layers


class AudioAttention(nnx.Module):
  """LayerNorm -> bias-free qkv -> multi-head softmax attention -> out proj."""

  def __init__(self, dim: int, heads: int, dim_head: int, *, rngs: nnx.Rngs, dtype=None):
    self.heads, self.dim_head = heads, dim_head
    inner = heads * dim_head
    self.norm = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.to_qkv = layers.Linear(dim, 3 * inner, use_bias=False, dtype=dtype, rngs=rngs)
    self.to_out = layers.Linear(inner, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, _ = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.dim_head)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * self.dim_head**-0.5
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3)
    return self.to_out(out.reshape(b, n, -1))


class FeedForward(nnx.Module):
  """LayerNorm -> Linear -> exact GELU -> Linear."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
    self.norm = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    self.mlp = layers.Mlp(dim, hidden, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.mlp(self.norm(x))


class AudioTransformer(nnx.Module):
  """Transformer over `(B, T, h, w, C)` VGGish features, same shape out."""

  def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
               num_patches: int, *, fix_quirks: bool = False, rngs: nnx.Rngs, dtype=None):
    self.fix_quirks = fix_quirks
    self.attn = nnx.List([AudioAttention(dim, heads, dim_head, rngs=rngs, dtype=dtype)
                          for _ in range(depth)])
    self.ff = nnx.List([FeedForward(dim, mlp_dim, rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.norm = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
    if fix_quirks:
      self.embed_norm_in = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
      self.embed_proj = layers.Linear(dim, dim, dtype=dtype, rngs=rngs)
      self.embed_norm_out = layers.layer_norm(dim, rngs=rngs, dtype=dtype)
      self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (num_patches,)))

  def __call__(self, feats: jax.Array) -> jax.Array:
    b, t, h, w, c = feats.shape
    x = feats.reshape(b, t * h * w, c)
    if self.fix_quirks:
      x = self.embed_norm_out(self.embed_proj(self.embed_norm_in(x)))
      # Added in float32 (its gradient sums over the batch and channels:
      # see layers._BiasInFloat32).
      pos = jnp.repeat(self.pos_embedding[...], h * w)
      x = (x + pos[None, :, None]).astype(x.dtype)
    for attn, ff in zip(self.attn, self.ff):
      x = attn(x) + x
      x = ff(x) + x
    return self.norm(x).reshape(b, t, h, w, c)
