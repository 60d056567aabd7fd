"""MViTv2-S video encoder (mmaction2 flavour), channels-last.

Tokens are `(B, 1 + T*H*W, C)` with the cls token first and the grid in
(T, H, W) C-order, exactly as the PyTorch model flattens `(B, C, T, H, W)`.
Returns the four stage outputs, deepest first, as `(B, T, H, W, C)`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from diffsal_jax.models import layers
from diffsal_jax.models import op_paths

_trunc02 = nnx.initializers.truncated_normal(stddev=0.02)


@functools.lru_cache(maxsize=None)
def rel_pos_gather(table_len: int, q_size: int, k_size: int) -> np.ndarray:
  """(q, k, table_len) weights so that `R = G @ table` gives rel-pos rows.

  The table is first linearly resized (align_corners=False) to
  `2*max(q, k) - 1` when its length differs, then indexed at
  `floor(i*q_ratio - j*k_ratio + (k-1)*k_ratio)`; both steps are linear in
  the table, so they fold into one static matrix. Coordinates are computed
  in float32 like the reference.
  """
  target = int(2 * max(q_size, k_size) - 1)
  resize = (np.eye(table_len) if target == table_len else
            layers.linear_resize_matrix(table_len, target))
  q_ratio = np.float32(max(k_size / q_size, 1.0))
  k_ratio = np.float32(max(q_size / k_size, 1.0))
  q_coords = np.arange(q_size, dtype=np.float32)[:, None] * q_ratio
  k_coords = np.arange(k_size, dtype=np.float32)[None, :] * k_ratio
  idx = ((q_coords - k_coords) + np.float32(k_size - 1) * k_ratio).astype(np.int64)
  return resize[idx]


class MultiScaleAttention(nnx.Module):
  """Pooling attention with decomposed relative positions and residual pooling."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int,
               stride_q: Sequence[int], stride_kv: Sequence[int],
               rel_pos_len: tuple[int, int], *, rngs: nnx.Rngs, dtype=None):
    self.num_heads = num_heads
    self.out_dim = out_dim
    hd = out_dim // num_heads
    self.qkv = layers.Linear(in_dim, 3 * out_dim, kernel_init=_trunc02, dtype=dtype, rngs=rngs)
    self.proj = layers.Linear(out_dim, out_dim, kernel_init=_trunc02, dtype=dtype, rngs=rngs)

    def pool(stride):
      return layers.conv(hd, hd, (3, 3, 3), stride=stride, padding=1, groups=hd,
                         use_bias=False, dtype=dtype, rngs=rngs)

    self.pool_q, self.norm_q = pool(stride_q), layers.layer_norm(hd, rngs=rngs, dtype=dtype)
    self.pool_k, self.norm_k = pool(stride_kv), layers.layer_norm(hd, rngs=rngs, dtype=dtype)
    self.pool_v, self.norm_v = pool(stride_kv), layers.layer_norm(hd, rngs=rngs, dtype=dtype)
    spatial_len, temporal_len = rel_pos_len
    key = rngs.params()
    kh, kw, kt = jax.random.split(key, 3)
    self.rel_pos_h = nnx.Param(_trunc02(kh, (spatial_len, hd)))
    self.rel_pos_w = nnx.Param(_trunc02(kw, (spatial_len, hd)))
    self.rel_pos_t = nnx.Param(_trunc02(kt, (temporal_len, hd)))
    self.op_path = op_paths.resolve("auto")

  def _pool(self, x, thw, pool, norm):
    """Pool the grid tokens of `(B, heads, N, hd)`, keeping the cls token."""
    b, h, _, hd = x.shape
    cls_tok, grid = x[:, :, :1], x[:, :, 1:]
    grid = pool(grid.reshape(b * h, *thw, hd))
    out_thw = grid.shape[1:4]
    grid = grid.reshape(b, h, -1, hd)
    return norm(jnp.concatenate([cls_tok, grid], axis=2)), out_thw

  def _rel_pos_bias(self, q, q_thw, k_thw):
    """Decomposed (t, h, w) relative-position logits for the grid tokens."""
    b, h, _, hd = q.shape
    r_q = q[:, :, 1:].reshape(b, h, *q_thw, hd)
    tables = (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)
    rel = []
    for axis, table in enumerate(tables):
      g = rel_pos_gather(table.shape[0], q_thw[axis], k_thw[axis])
      r = jnp.einsum("qkl,lc->qkc", jnp.asarray(g, q.dtype), table[...].astype(q.dtype))
      rel.append(r)
    rel_t = jnp.einsum("bythwc,tkc->bythwk", r_q, rel[0])
    rel_h = jnp.einsum("bythwc,hkc->bythwk", r_q, rel[1])
    rel_w = jnp.einsum("bythwc,wkc->bythwk", r_q, rel[2])
    bias = (rel_t[..., :, None, None] + rel_h[..., None, :, None] +
            rel_w[..., None, None, :])
    n_q, n_k = int(np.prod(q_thw)), int(np.prod(k_thw))
    return bias.reshape(b, h, n_q, n_k)

  def __call__(self, x: jax.Array, thw: tuple[int, int, int]):
    b, n, _ = x.shape
    hd = self.out_dim // self.num_heads
    # Split (not index) the fused projection: the gradient of a split is one
    # concatenation, of three indexings three zero-padded full copies.
    heads = [t.reshape(b, n, self.num_heads, hd).transpose(0, 2, 1, 3)
             for t in jnp.split(self.qkv(x), 3, axis=-1)]
    q, q_thw = self._pool(heads[0], thw, self.pool_q, self.norm_q)
    k, k_thw = self._pool(heads[1], thw, self.pool_k, self.norm_k)
    v, _ = self._pool(heads[2], thw, self.pool_v, self.norm_v)
    # The bias uses the pooled q before scaling, and skips the cls row/column.
    out = op_paths.attention(self.op_path, q * hd**-0.5, k, v,
                             self._rel_pos_bias(q, q_thw, k_thw), 1)
    out = out.at[:, :, 1:].add(q[:, :, 1:])  # residual pooling, not on cls
    out = out.transpose(0, 2, 1, 3).reshape(b, -1, self.out_dim)
    return self.proj(out), q_thw


class MultiScaleBlock(nnx.Module):
  """Pre-norm block; width and q-pooling change in the attention (MViTv2)."""

  def __init__(self, in_dim: int, out_dim: int, num_heads: int, mlp_ratio: float,
               stride_q: Sequence[int], stride_kv: Sequence[int],
               rel_pos_len: tuple[int, int], *, rngs: nnx.Rngs, dtype=None):
    self.stride_q = tuple(stride_q)
    self.norm1 = layers.layer_norm(in_dim, rngs=rngs, dtype=dtype)
    self.attn = MultiScaleAttention(in_dim, out_dim, num_heads, stride_q, stride_kv,
                                    rel_pos_len, rngs=rngs, dtype=dtype)
    self.norm2 = layers.layer_norm(out_dim, rngs=rngs, dtype=dtype)
    self.mlp = layers.Mlp(out_dim, int(out_dim * mlp_ratio), rngs=rngs, dtype=dtype)
    self.proj = (layers.Linear(in_dim, out_dim, kernel_init=_trunc02, dtype=dtype, rngs=rngs)
                 if in_dim != out_dim else None)

  def output_grid(self, thw: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) after the q pooling (3x3x3 kernel, padding 1, `stride_q`)."""
    return tuple(-(-n // s) for n, s in zip(thw, self.stride_q))

  def _pool_skip(self, x, thw):
    if max(self.stride_q) == 1:
      return x
    b, _, c = x.shape
    kernel = [s + 1 if s > 1 else s for s in self.stride_q]
    grid = layers.max_pool(x[:, 1:].reshape(b, *thw, c), kernel, self.stride_q,
                           [k // 2 for k in kernel])
    return jnp.concatenate([x[:, :1], grid.reshape(b, -1, c)], axis=1)

  def __call__(self, x, thw):
    x_norm = self.norm1(x)
    attn, out_thw = self.attn(x_norm, thw)
    skip = self.proj(x_norm) if self.proj is not None else x
    x = self._pool_skip(skip, thw) + attn
    return x + self.mlp(self.norm2(x)), out_thw


def block_plan(cfg: ml_collections.ConfigDict) -> list[dict]:
  """Per-block widths, heads, strides and rel-pos table lengths.

  Table lengths follow the pretraining grid (`rel_pos_size`, 16x224x224 for
  the Kinetics checkpoint); at run time they are resized to the actual grid.
  """
  m = cfg.mvit
  frames, side = m.rel_pos_size
  size = side // 4
  t_len = 2 * (frames // 2) - 1
  dim, heads, kv = m.embed_dim, m.num_heads, m.kv_stride
  plan = []
  for i in range(m.depth):
    sq = 1
    out = dim
    if i in m.downscale_blocks:
      heads, out, sq, kv = heads * 2, dim * 2, 2, max(kv // 2, 1)
    plan.append(dict(in_dim=dim, out_dim=out, num_heads=heads,
                     stride_q=(1, sq, sq), stride_kv=(1, kv, kv),
                     rel_pos_len=(2 * max(size // sq, size // kv) - 1, t_len)))
    size //= sq
    dim = out
  return plan


class MViT(nnx.Module):
  """MViTv2-S: conv patch embedding, 16 pooling-attention blocks, 4 scales."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype=None):
    m = cfg.mvit
    c = m.embed_dim
    self.patch_embed = layers.conv(3, c, (3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3),
                                   dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(_trunc02(rngs.params(), (1, 1, c)))
    plan = block_plan(cfg)
    self.blocks = nnx.List([
        MultiScaleBlock(p["in_dim"], p["out_dim"], p["num_heads"], m.mlp_ratio,
                        p["stride_q"], p["stride_kv"], p["rel_pos_len"],
                        rngs=rngs, dtype=dtype) for p in plan])
    self.stage_ends = tuple(d - 1 for d in m.downscale_blocks) + (m.depth - 1,)
    self.norms = nnx.List([layers.layer_norm(plan[i]["out_dim"], rngs=rngs, dtype=dtype)
                           for i in self.stage_ends])
    # Recompute each block in the backward pass rather than keep its
    # activations: 3 of the 6.6 GB a full-size train step needs on a CPU.
    self.remat = bool(m.get("remat", False))  # absent in older config.json
    self.op_path = op_paths.resolve("auto")

  def __call__(self, img: jax.Array) -> list[jax.Array]:
    """`img (B, T, H, W, 3)` -> stage outputs deepest first, `(B, T', H', W', C)`."""
    x = self.patch_embed(img)
    b, *thw, c = x.shape
    thw = tuple(thw)
    x = x.reshape(b, -1, c)
    cls_tok = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, c))
    x = jnp.concatenate([cls_tok, x], axis=1)
    outs = []
    for i, block in enumerate(self.blocks):
      x = op_paths.block_barrier(self.op_path, x)
      if self.remat:
        graphdef, state = nnx.split(block)
        x = op_paths.recompute(
            self.op_path, lambda s, v, g=graphdef, t=thw: nnx.merge(g, s)(v, t)[0])(state, x)
        thw = block.output_grid(thw)
      else:
        x, thw = block(x, thw)
      if i in self.stage_ends:
        # The stage norm is applied to the residual stream itself.
        x = self.norms[self.stage_ends.index(i)](x)
        outs.append(x[:, 1:].reshape(b, *thw, x.shape[-1]))
    return outs[::-1]
