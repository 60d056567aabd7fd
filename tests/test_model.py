"""Model behaviour on the demo model cut to two stages (configs/demo.py:
check_model_config, the smallest with every published layer kind; the
demos train the four-stage one): shapes, encode/denoise split, train mode,
gradients, remat, bfloat16 sampling; config errors on the tiny config.
60.7 s alone, 166.8 s on the four-stage model (2-core AMD EPYC, 2026-12-08)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffsal_jax.models import api as model_lib
from diffsal_jax.models import diffusion
from diffsal_jax.models import mvit
from diffsal_jax.models.config import tiny_model_config
from diffsal_jax.models.config import num_audio_patches
from configs.demo import check_model_config


def _inputs(cfg, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  h, w = cfg.image_size
  img = rng.standard_normal((batch, cfg.clip_len, h, w, 3)).astype(np.float32)
  x_t = rng.standard_normal((batch, h, w, 1)).astype(np.float32)
  t = np.array([0, 999][:batch], np.int32)
  audio = (rng.standard_normal((batch, num_audio_patches(cfg), *cfg.audio_size)).astype(np.float32)
           if cfg.variant == "av" else None)
  return img, x_t, t, audio


@functools.lru_cache(maxsize=2)
def _built(variant):
  """(config, graphdef, variables) of the check model, built once per
  variant (the eager init compiles one kernel per parameter shape)."""
  cfg = check_model_config(variant)
  return (cfg, *model_lib.split(model_lib.build_model(cfg, seed=0)))


@pytest.fixture(params=["visual", "av"])
def tiny(request):
  return _built(request.param)


def test_abstract_model_has_the_built_models_graph_shapes_and_dtypes(tiny):
  """`abstract_model` traces the constructor with numpy draw counters
  (models/api.py); graph, variable paths, shapes and dtypes must be those
  of the model built with flax's own `nnx.Rngs`."""
  cfg, graphdef, variables = tiny
  abstract_graphdef, abstract = model_lib.abstract_variables(cfg)
  assert abstract_graphdef == graphdef
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  assert all(jax.tree.leaves(jax.tree.map(
      lambda s, v: (s.shape, s.dtype) == (v.shape, v.dtype), abstract, variables)))


def test_forward_shape_range_and_api(tiny):
  cfg, graphdef, variables = tiny
  img, x_t, t, audio = _inputs(cfg)
  out = model_lib.apply(cfg, variables, img, x_t, t, audio)
  assert out.shape == (2, *cfg.image_size, 1) and out.dtype == jnp.float32
  assert bool(jnp.all((out > 0) & (out < 1)))

  # encode once + denoise equals the one-call forward (jitted: op by op,
  # each of hundreds of small kernels would compile on its own).
  @jax.jit
  def encode_then_denoise(variables, img, x_t, t, audio):
    model = model_lib.merge(graphdef, variables)
    return model.denoise(model.encode(img, audio), x_t, t)

  np.testing.assert_allclose(encode_then_denoise(variables, img, x_t, t, audio),
                             out, atol=1e-5)
  # The timestep matters.
  other = model_lib.apply(cfg, variables, img, x_t, t[::-1], audio)
  assert float(jnp.abs(other - out).max()) > 1e-6


def test_train_mode_updates_batch_stats_and_dropout_is_keyed(tiny):
  cfg, graphdef, variables = tiny
  img, x_t, t, audio = _inputs(cfg)

  @jax.jit
  def train_forward(variables, key):
    model = model_lib.merge(graphdef, variables)
    out = model(img, x_t, t, audio, train=True, dropout_key=key)
    return out, model_lib.split(model)[1]["batch_stats"]

  a, after = train_forward(variables, jax.random.key(0))
  b, _ = train_forward(variables, jax.random.key(1))
  assert float(jnp.abs(a - b).max()) > 0  # dropout 0.1 in the noise encoder
  before = variables["batch_stats"]["decoder_net"]["mt_proj_bn"]["mean"]
  assert float(jnp.abs(after["decoder_net"]["mt_proj_bn"]["mean"] - before).max()) > 0


def test_every_subnetwork_gets_gradient():
  # The model itself stops no gradient: freezing VGGish is the trainer's
  # job (config.frozen_subtrees), so a config can also fine-tune it.
  cfg, graphdef, variables = _built("av")
  img, x_t, t, audio = (jnp.asarray(a) for a in _inputs(cfg))

  def loss(params):
    m = model_lib.merge(graphdef, {"params": params, "batch_stats": variables["batch_stats"]})
    return jnp.sum(m(img, x_t, t, audio) ** 2)

  # Jitted: op by op, the backward pass compiles thousands of small kernels
  # (335 s on a 2-core Xeon for the tiny config).
  grads = jax.jit(jax.grad(loss))(variables["params"])
  norm = lambda tree: sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(tree))
  for name in ("audio_net", "spatiotemp_net", "visual_net", "decoder_net"):
    assert norm(grads[name]) > 0.0, name


def test_mvit_remat_keeps_outputs_and_gradients():
  # Recomputing the MViT blocks in the backward pass is a memory trade only.
  # The MViT alone (remat touches nothing else). Some gradients are zero in
  # exact arithmetic (key biases under the softmax's shift invariance) and
  # come out as rounding noise near 1e-11, so the absolute tolerance is
  # relative to the largest gradient of all.
  cfg = check_model_config("visual")
  img = jnp.asarray(_inputs(cfg)[0])
  results = []
  for remat in (False, True):
    cfg.mvit.remat = remat
    graphdef, params = nnx.split(mvit.MViT(cfg, rngs=nnx.Rngs(3)))
    assert nnx.merge(graphdef, params).remat is remat

    def loss(p, graphdef=graphdef):
      return sum(jnp.sum(f ** 2) for f in nnx.merge(graphdef, p)(img))

    results.append(jax.jit(jax.value_and_grad(loss))(params))
  (loss_plain, g_plain), (loss_remat, g_remat) = results
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
  leaves_plain, leaves_remat = jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)
  assert len(leaves_plain) == len(leaves_remat) > 20
  scale = max(float(jnp.abs(a).max()) for a in leaves_plain)
  for a, b in zip(leaves_plain, leaves_remat):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale)


def test_fix_quirks_variant_runs_and_differs():
  cfg, _, variables = _built("av")
  fixed = cfg.copy_and_resolve_references()
  fixed.fix_quirks = True
  img, x_t, t, audio = _inputs(cfg)
  out_a = model_lib.apply(cfg, variables, img, x_t, t, audio)
  v_fixed = model_lib.init_variables(fixed)
  assert "embed_proj" in v_fixed["params"]["spatiotemp_net"]
  out_b = model_lib.apply(fixed, v_fixed, img, x_t, t, audio)
  assert out_a.shape == out_b.shape
  assert float(jnp.abs(out_a - out_b).max()) > 1e-6


@pytest.mark.parametrize("field,value,message", [
    ("image_size", (60, 96), "multiples of 32"),
    ("variant", "audio", "variant"),
    ("clip_len", 7, "clip_len"),
    ("audio_size", (64, 96), "audio_size"),
    ("mvit.embed_dim", 32, "unet.widths"),
])
def test_bad_model_config_names_the_field(field, value, message):
  cfg = tiny_model_config("av")
  *parents, name = field.split(".")
  node = cfg
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(ValueError, match=message):
    model_lib.build_model(cfg)


@pytest.mark.parametrize("ops", ["xla_cpu", "native"])
def test_sampler_runs_in_bfloat16(ops):
  """`config.model.dtype='bfloat16'` with the float32 parameters, on either
  op path: the DDIM sampler (4 steps) computes in bfloat16 and returns
  float32 maps in [0, 1] close to the float32 model's."""
  cfg, graphdef, variables = _built("av")
  img, _, _, audio = (None if a is None else jnp.asarray(a) for a in _inputs(cfg))
  maps = {}
  for dtype in ("float32", "bfloat16"):
    low = cfg.copy_and_resolve_references()
    low.dtype = dtype
    low.ops = ops
    low_graphdef = model_lib.split(model_lib.build_model(low, seed=0))[0]

    def sample(variables, graphdef=low_graphdef):
      model = model_lib.merge(graphdef, variables)
      return diffusion.sample_saliency(model, img, jax.random.key(0), audio, steps=4)

    text = jax.jit(sample).lower(variables).as_text()
    assert (" bf16" in text or "xbf16" in text) == (dtype == "bfloat16")
    maps[dtype] = np.asarray(jax.jit(sample)(variables))
  low = maps["bfloat16"]
  assert low.dtype == np.float32 and np.isfinite(low).all()
  assert low.min() >= 0.0 and low.max() <= 1.0
  cc = np.corrcoef(low.reshape(-1), maps["float32"].reshape(-1))[0, 1]
  assert cc > 0.99, cc
