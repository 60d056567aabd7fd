"""Layer-level checks where ports usually go wrong, against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special

from diffsal_jax.models import layers, mvit, unet_blocks, xla_cpu_ops


def _torch_bilinear_1d(in_size, out_size):
  """Per-output-pixel torch formula (align_corners=False, no antialias)."""
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = min(int(np.floor(src)), in_size - 1)
    hi = min(lo + 1, in_size - 1)
    m[i, lo] += 1 - (src - lo)
    m[i, hi] += src - lo
  return m


@pytest.mark.parametrize("size_in,size_out", [((7, 12), (112, 192)), ((14, 24), (28, 48)),
                                              ((56, 96), (28, 48)), ((20, 30), (7, 11))])
def test_bilinear_resize_matches_torch_formula(size_in, size_out):
  x = np.random.default_rng(0).standard_normal((2, *size_in, 3)).astype(np.float32)
  want = np.einsum("oh,bhwc,pw->bopc", _torch_bilinear_1d(size_in[0], size_out[0]), x,
                   _torch_bilinear_1d(size_in[1], size_out[1]))
  got = layers.resize_bilinear(jnp.asarray(x), size_out)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bilinear_downscale_has_no_antialias():
  x = np.random.default_rng(1).standard_normal((1, 56, 96, 1)).astype(np.float32)
  ours = layers.resize_bilinear(jnp.asarray(x), (14, 24))
  antialiased = jax.image.resize(x, (1, 14, 24, 1), "linear", antialias=True)
  # Stride-4 sampling of two neighbours, not an averaging kernel.
  np.testing.assert_allclose(ours[0, 0, 0, 0], 0.5 * (x[0, 1, 1, 0] + x[0, 1, 2, 0]) * 0.5 +
                             0.5 * (x[0, 2, 1, 0] + x[0, 2, 2, 0]) * 0.5, rtol=1e-5)
  assert np.abs(np.asarray(ours) - np.asarray(antialiased)).max() > 1e-2


def _np_conv2d(x, w, stride, pad):
  """Direct NumPy conv: x (H,W,I), w torch (O,I,k,k), explicit (top,bottom,left,right)."""
  x = np.pad(x, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
  o, _, k, _ = w.shape
  out_h = (x.shape[0] - k) // stride + 1
  out_w = (x.shape[1] - k) // stride + 1
  y = np.zeros((out_h, out_w, o))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[i * stride:i * stride + k, j * stride:j * stride + k]
      y[i, j] = np.einsum("hwi,oihw->o", patch, w)
  return y


@pytest.mark.parametrize("stride", [2, 4])
def test_strided_conv_with_right_bottom_padding(stride):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 13, 18, 3)).astype(np.float32)
  w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
  c = layers.conv(3, 5, (3, 3), stride=stride, use_bias=False, rngs=nnx.Rngs(0))
  c.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0))
  got = c(layers.pad_right_bottom(jnp.asarray(x)))[0]
  want = _np_conv2d(x[0], w, stride, (0, 1, 0, 1))
  np.testing.assert_allclose(got, want, atol=1e-4)
  # Symmetric padding would give a different (shifted) result.
  assert np.abs(np.asarray(got) - _np_conv2d(x[0], w, stride, (1, 1, 1, 1))[:got.shape[0], :got.shape[1]]).max() > 1e-2


def test_dilated_conv_padding_two():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((1, 6, 7, 2)).astype(np.float32)
  w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
  c = layers.conv(2, 4, (3, 3), padding=2, dilation=2, use_bias=False, rngs=nnx.Rngs(0))
  c.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0))
  w_dil = np.zeros((4, 2, 5, 5), np.float32)
  w_dil[:, :, ::2, ::2] = w
  np.testing.assert_allclose(c(jnp.asarray(x))[0], _np_conv2d(x[0], w_dil, 1, (2, 2, 2, 2)),
                             atol=1e-4)


def test_depthwise_conv3d_strided():
  rng = np.random.default_rng(4)
  ch, t, h, w = 4, 4, 9, 10
  x = rng.standard_normal((1, t, h, w, ch)).astype(np.float32)
  k = rng.standard_normal((ch, 1, 3, 3, 3)).astype(np.float32)  # torch (C, 1, kT, kH, kW)
  c = layers.conv(ch, ch, (3, 3, 3), stride=(1, 2, 2), padding=1, groups=ch, use_bias=False,
                  rngs=nnx.Rngs(0))
  c.kernel[...] = jnp.asarray(k.transpose(2, 3, 4, 1, 0))
  got = np.asarray(c(jnp.asarray(x)))[0]
  xp = np.pad(x[0], ((1, 1), (1, 1), (1, 1), (0, 0)))
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  want = np.zeros((t, out_h, out_w, ch))
  for ti in range(t):
    for i in range(out_h):
      for j in range(out_w):
        patch = xp[ti:ti + 3, 2 * i:2 * i + 3, 2 * j:2 * j + 3]  # (3,3,3,C)
        want[ti, i, j] = np.einsum("thwc,cthw->c", patch, k[:, 0])
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_layer_norm_and_group_norm_eps():
  rng = np.random.default_rng(5)
  x = (1e-3 * rng.standard_normal((2, 4, 4, 64))).astype(np.float32)  # variance ~ eps scale
  ln = layers.layer_norm(64, rngs=nnx.Rngs(0))
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(ln(jnp.asarray(x)), (x - mu) / np.sqrt(var + 1e-5), atol=1e-4)
  wrong_eps = (x - mu) / np.sqrt(var + 1e-6)
  assert np.abs(np.asarray(ln(jnp.asarray(x))) - wrong_eps).max() > 1e-2
  block = unet_blocks.ResnetBlock(64, 64, 8, groups=32, dropout=0.0, rngs=nnx.Rngs(0))
  g = x.reshape(2, 4, 4, 32, 2)
  gm, gv = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
  want = ((g - gm) / np.sqrt(gv + 1e-6)).reshape(x.shape)
  np.testing.assert_allclose(block.norm1(jnp.asarray(x)), want, atol=1e-4)


def test_exact_gelu():
  x = np.linspace(-4, 4, 101).astype(np.float32)
  exact = 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
  np.testing.assert_allclose(layers.gelu(jnp.asarray(x), "xla_cpu"), exact, atol=1e-6)
  assert np.abs(np.asarray(jax.nn.gelu(x, approximate=True)) - exact).max() > 1e-4


def test_batch_norm_uses_running_statistics_in_eval_and_updates_in_train():
  rng = np.random.default_rng(6)
  bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
  bn.mean[...] = jnp.array([0.5, -1.0, 2.0])
  bn.var[...] = jnp.array([4.0, 0.25, 1.0])
  bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
  bn.bias[...] = jnp.array([0.0, 0.1, -0.2])
  x = rng.standard_normal((8, 5, 5, 3)).astype(np.float32)
  want = (x - [0.5, -1.0, 2.0]) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5) * [1, 2, 0.5] + [0, .1, -.2]
  np.testing.assert_allclose(bn(jnp.asarray(x), use_running_average=True), want, atol=1e-5)
  bn(jnp.asarray(x), use_running_average=False)
  # torch momentum 0.1: running = 0.9 * running + 0.1 * batch statistic.
  np.testing.assert_allclose(bn.mean[...], 0.9 * np.array([0.5, -1.0, 2.0]) +
                             0.1 * x.mean((0, 1, 2)), atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
  x = -np.abs(np.random.default_rng(7).standard_normal((1, 1, 5, 6, 2))).astype(np.float32) - 1
  got = np.asarray(layers.max_pool(jnp.asarray(x), (1, 3, 3), (1, 2, 2), (0, 1, 1)))
  assert got.shape == (1, 1, 3, 3, 2)
  np.testing.assert_allclose(got[0, 0, 0, 0], x[0, 0, :2, :2].max((0, 1)))  # not 0 from padding


def test_rel_pos_gather_matches_reference_algorithm():
  table = np.random.default_rng(8).standard_normal((111, 4))
  q, k = 96, 12
  target = 2 * max(q, k) - 1
  resized = np.stack([np.interp((np.arange(target) + 0.5) * 111 / target - 0.5,
                                np.arange(111), table[:, c]) for c in range(4)], axis=1)
  idx = (np.arange(q)[:, None] * 1.0 - np.arange(k)[None, :] * (q / k) + (k - 1) * (q / k))
  want = resized[idx.astype(int)]
  got = np.einsum("qkl,lc->qkc", mvit.rel_pos_gather(111, q, k), table)
  np.testing.assert_allclose(got, want, atol=1e-6)


def _numpy_published_fusion(x_cf, audio_cf, w_align, b_align):
  """The published fusion in torch layout: x (B,C,T,H,W), audio (B,Ca,T,h,w)."""
  a = np.einsum("bithw,oi->bothw", audio_cf, w_align) + b_align[None, :, None, None, None]
  f = x_cf.shape[3] // a.shape[3]
  a = a.repeat(f, axis=3).repeat(f, axis=4)
  m = (a * x_cf).mean(axis=2, keepdims=True)
  m = np.exp(m - m.max(-1, keepdims=True))
  a = a * (m / m.sum(-1, keepdims=True))
  b, c, t, h, w = a.shape
  return a.reshape(b * t, h * w, c)  # raw reinterpretation of the buffer


@pytest.mark.parametrize("fix_quirks", [False, True])
def test_audio_fusion_raw_reshape_scramble(fix_quirks):
  rng = np.random.default_rng(9)
  b, t, h, w, c, ca = 2, 3, 4, 6, 8, 5
  block = unet_blocks.FusionTransformerBlock(c, 2, 2.0, 2, ca, fix_quirks=fix_quirks,
                                             rngs=nnx.Rngs(0))
  x = rng.standard_normal((b, t, h, w, c)).astype(np.float32)
  audio = rng.standard_normal((b, t, h // 2, w // 2, ca)).astype(np.float32)
  got = np.asarray(block.audio_keys(jnp.asarray(x), jnp.asarray(audio))).reshape(b * t, h * w, c)
  w_align = np.asarray(block.align_conv.kernel[...])[0, 0].T
  want = _numpy_published_fusion(x.transpose(0, 4, 1, 2, 3), audio.transpose(0, 4, 1, 2, 3),
                                 w_align, np.asarray(block.align_conv.bias[...]))
  if fix_quirks:  # per-frame tokens, channels last: a proper transpose of the same values
    b_, ct, hw = b * t, c, h * w
    proper = want.reshape(b, c, t, h, w).transpose(0, 2, 3, 4, 1).reshape(b_, hw, ct)
    np.testing.assert_allclose(got, proper, atol=1e-5)
    assert np.abs(got - want).max() > 1e-3
  else:
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_dilated_conv_tap_kernel_gradient_equals_xlas(monkeypatch):
  """The tap-by-tap kernel gradient of the published-size UpEmbed convs
  (forced on here at a small size) against XLA's autodiff of nnx.Conv."""
  monkeypatch.setattr(xla_cpu_ops, "TAP_GRADIENT_MIN_FLOP", 0)
  dilated = layers.conv(6, 5, (3, 3), padding=2, dilation=2, use_bias=False,
                        rngs=nnx.Rngs(0))
  plain = nnx.Conv(6, 5, (3, 3), padding=[(2, 2), (2, 2)], kernel_dilation=2,
                   use_bias=False, rngs=nnx.Rngs(1))
  plain.kernel[...] = dilated.kernel[...]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 12, 20, 6)),
                  jnp.float32)
  g = jnp.asarray(np.random.default_rng(1).standard_normal((3, 12, 20, 5)),
                  jnp.float32)

  def grads(module):
    graphdef, params = nnx.split(module)
    loss = lambda params, x: jnp.sum(g * nnx.merge(graphdef, params)(x))
    d_params, dx = jax.grad(loss, argnums=(0, 1))(params, x)
    text = jax.jit(jax.grad(loss)).lower(params, x).as_text()
    return module(x), (d_params["kernel"][...], dx), text

  (y_tap, (dk_tap, dx_tap), tap_text) = grads(dilated)
  (y_xla, (dk_xla, dx_xla), xla_text) = grads(plain)
  assert "while" in tap_text and "while" not in xla_text   # the tap loop ran
  np.testing.assert_array_equal(y_tap, y_xla)          # the forward is XLA's
  np.testing.assert_array_equal(dx_tap, dx_xla)        # so is the input gradient
  np.testing.assert_allclose(dk_tap, dk_xla, rtol=1e-5, atol=1e-5 * float(
      jnp.max(jnp.abs(dk_xla))))


_BF16_MAKERS = {
    "linear": lambda dt: layers.Linear(16, 16, dtype=dt, rngs=nnx.Rngs(0)),
    "conv": lambda dt: layers.conv(16, 16, (3, 3), padding=1, dtype=dt, rngs=nnx.Rngs(0)),
    "depthwise_conv": lambda dt: layers.conv(16, 16, (3, 3), padding=1, groups=16,
                                             dtype=dt, rngs=nnx.Rngs(0)),
    "batch_norm": lambda dt: layers.batch_norm(16, dtype=dt, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("name", sorted(_BF16_MAKERS))
def test_bfloat16_bias_gradient_sums_in_float32(name):
  """The bias gradient sums 16,384 terms of about 6e-4 (sum about 9.85). In
  bfloat16 the sum stalls at 1.0 (nnx's own bias add, and nnx.BatchNorm with
  running statistics); it must stay within bfloat16 rounding of the float32
  one, and the output must be bfloat16."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 64, 16))
  weight = jax.random.uniform(jax.random.PRNGKey(1), x.shape) * 1e-3 + 1e-4

  def bias_grad(dtype):
    module = _BF16_MAKERS[name](dtype)

    def loss(m):
      y = m(x.astype(dtype))
      assert y.dtype == dtype
      return jnp.sum((y * weight.astype(dtype)).astype(jnp.float32))
    return np.asarray(nnx.jit(nnx.grad(loss))(module)["bias"][...])

  want, got = bias_grad(jnp.float32), bias_grad(jnp.bfloat16)
  assert 9 < want.min() and want.max() < 11
  np.testing.assert_allclose(got, want, rtol=0.01)


def test_bfloat16_strided_depthwise_kernel_gradient_sums_in_float32():
  """The XLA:CPU form of a depthwise conv with kernel == stride (the UNet's
  k/v reductions): each tap's gradient sums 4,096 positive terms of about
  5e-4 (about 2.0); in bfloat16 that sum stalled well below it."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 32, 64, 16)) + 0.5
  weight = jax.random.uniform(jax.random.PRNGKey(1), (8, 16, 32, 16)) * 1e-3

  def kernel_grad(dtype):
    module = layers.conv(16, 16, (2, 2), stride=2, groups=16, dtype=dtype,
                         rngs=nnx.Rngs(0))
    assert module.op_path == "xla_cpu"

    def loss(m):
      y = m(x.astype(dtype))
      assert y.dtype == dtype
      return jnp.sum((y * weight.astype(dtype)).astype(jnp.float32))
    return np.asarray(nnx.jit(nnx.grad(loss))(module)["kernel"][...])

  want, got = kernel_grad(jnp.float32), kernel_grad(jnp.bfloat16)
  assert want.min() > 1
  np.testing.assert_allclose(got, want, rtol=0.01)


def test_recompute_in_backward_holds_one_copy_of_the_gradient():
  """The recomputation's conditional has the gradient in one branch only
  (the other fills NaN), so XLA compiles each MViT block's backward once,
  not twice; the gradients equal plain autodiff's and a NaN incoming
  gradient still gives NaN gradients."""
  def block(params, x):
    return jnp.sin(x @ params["w"])

  recomputed = xla_cpu_ops.recompute_in_backward(block)

  def loss(f, scale):
    return lambda p, v: jnp.sum(f(p, v)) * scale

  params = {"w": jnp.eye(3) * 0.5 + 0.1}
  x = jnp.arange(6.0).reshape(2, 3) / 6
  grad = jax.grad(loss(recomputed, 1.0), argnums=(0, 1))
  # The forward computes no cosine; the backward's one branch does.
  assert jax.jit(grad).lower(params, x).as_text().count("stablehlo.cosine") == 1
  want = jax.grad(loss(block, 1.0), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(grad(params, x)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  nan_grads = jax.grad(loss(recomputed, jnp.nan), argnums=(0, 1))(params, x)
  assert all(np.isnan(np.asarray(g)).all() for g in jax.tree.leaves(nan_grads))
