"""Random variables of a model config, drawn with NumPy.

For tests that need some weights rather than the model's own
initialisation: nothing is compiled (the NNX initialisation compiles its
kernels, eagerly or under `jax.jit`: a minute for the demo model on a busy
2-core CPU at XLA's default flags), and the values do not depend on XLA's
compile flags, so a test may compile its steps either way.
"""

import jax
import ml_collections
import numpy as np

from diffsal_jax.models import api as model_lib


def random_variables(model_config: ml_collections.ConfigDict,
                     seed: int = 0) -> dict:
  """`{"params": ..., "batch_stats": ...}` of the model's structure: norm
  scales and running variances 1, biases and running means 0, kernels
  normal / sqrt(fan-in), other weights normal / 50; float32 NumPy arrays."""
  rng = np.random.default_rng(seed)
  _, abstract = model_lib.abstract_variables(model_config)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name in ("scale", "var"):
      return np.ones(shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(shape, leaf.dtype)
    fan_in = int(np.prod(shape[:-1])) if name == "kernel" else 2500
    return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)
