"""The two op paths (models/op_paths.py) compute the same function: the
model's output and every parameter gradient, float32, XLA:CPU forms against
native ones, on the same parameters, for the demo model cut to two stages
(configs/demo.py: check_model_config; every layer kind is in it). Parity of
the native path with the published model: tests/test_parity.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.demo import check_model_config
from diffsal_jax.models import api as model_lib
from diffsal_jax.models import layers
from diffsal_jax.models import op_paths
from tests.test_model import _inputs

RTOL = 1e-5


def test_auto_takes_the_backends_path_and_unknown_names_fail():
  assert jax.default_backend() == "cpu"
  assert op_paths.resolve("auto") == "xla_cpu"
  assert op_paths.resolve("native") == "native"
  with pytest.raises(ValueError, match="model.ops must be one of"):
    op_paths.resolve("gpu")
  cfg = check_model_config("visual")
  cfg.ops = "cuda"
  with pytest.raises(ValueError, match="model.ops"):
    model_lib.build_model(cfg)


def _loss_and_grads(variant, path):
  """(output, grads, lowered train-step text) of the check model on `path`."""
  cfg = check_model_config(variant)
  cfg.ops = path
  graphdef, variables = model_lib.split(model_lib.build_model(cfg, seed=0))
  img, x_t, t, audio = (None if a is None else jnp.asarray(a) for a in _inputs(cfg))

  def loss(params):
    model = model_lib.merge(graphdef, {"params": params,
                                       "batch_stats": variables["batch_stats"]})
    out = model(img, x_t, t, audio)
    return jnp.sum(out ** 2), out

  step = jax.jit(jax.grad(loss, has_aux=True))
  grads, out = step(variables["params"])
  return out, grads, step.lower(variables["params"]).as_text(), variables


def test_xla_cpu_and_native_paths_agree_on_outputs_and_gradients():
  """MViT with recomputation (the default), the Saliency-UNet's depthwise
  and dilated convolutions, GELU and attention, all in one gradient."""
  out_cpu, g_cpu, text_cpu, v_cpu = _loss_and_grads("visual", "xla_cpu")
  out_nat, g_nat, text_nat, v_nat = _loss_and_grads("visual", "native")
  # Same parameters (the path changes no parameter or draw), different programs.
  jax.tree.map(np.testing.assert_array_equal, v_cpu, v_nat)
  conditional = re.compile(r"stablehlo\.(case|if)\b")
  grouped = re.compile(r"feature_group_count = ([2-9]|\d\d+) ")
  assert conditional.search(text_cpu) and not conditional.search(text_nat)
  assert grouped.search(text_nat) and not grouped.search(text_cpu)
  np.testing.assert_allclose(out_nat, out_cpu, rtol=RTOL, atol=RTOL)
  leaves_cpu, leaves_nat = jax.tree.leaves(g_cpu), jax.tree.leaves(g_nat)
  assert len(leaves_cpu) == len(leaves_nat) > 100
  # Some gradients are zero in exact arithmetic (key biases under the
  # softmax's shift invariance) and come out as rounding noise: the absolute
  # tolerance is relative to the largest gradient of all.
  scale = max(float(jnp.abs(g).max()) for g in leaves_cpu)
  for path, a in jax.tree_util.tree_leaves_with_path(g_cpu):
    b = g_nat
    for key in path:
      b = b[key.key]
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("path", ["xla_cpu", "native"])
def test_exact_gelu_and_its_gradient_on_both_paths(path):
  x = jnp.linspace(-4, 4, 101, dtype=jnp.float32)
  want = jax.nn.gelu(x, approximate=False)
  np.testing.assert_allclose(layers.gelu(x, path), want, atol=1e-6)
  grad = jax.vmap(jax.grad(lambda v: layers.gelu(v, path)))(x)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(
      lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=1e-6)


def test_use_sets_every_module_and_leaves_parameters_alone():
  model = model_lib.build_model(check_model_config("av"), seed=0)
  before = model_lib.split(model)[1]
  op_paths.use(model, "native")
  paths = {m.op_path for _, m in nnx.iter_modules(model) if hasattr(m, "op_path")}
  convs = {m.conv_general_dilated for _, m in nnx.iter_modules(model)
           if isinstance(m, nnx.Conv)}
  assert paths == {"native"} and convs == {jax.lax.conv_general_dilated}
  jax.tree.map(np.testing.assert_array_equal, before, model_lib.split(model)[1])
