"""Public model API: build, initialise, apply, save and restore DiffSal.

`variables` are plain nested dicts `{"params": ..., "batch_stats": ...}` of
arrays (what the converter produces and orbax checkpoints store), so they can
be sharded, saved and restored without the module object. List indices in
these dicts are ints, as flax NNX names them.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from diffsal_jax.models.diffsal import DiffSal

Variables = dict[str, Any]


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Accept either a full experiment config (with `.model`) or a model config."""
  return config.model if "model" in config else config


def build_model(config: ml_collections.ConfigDict, *, seed: int = 0) -> DiffSal:
  """A randomly initialised model (allocates the parameters)."""
  return DiffSal(model_config(config), rngs=nnx.Rngs(seed))


def split(model: DiffSal) -> tuple[nnx.GraphDef, Variables]:
  """Module -> (static graph, variables dict)."""
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, {"params": nnx.to_pure_dict(params),
                    "batch_stats": nnx.to_pure_dict(batch_stats)}


def merge(graphdef: nnx.GraphDef, variables: Variables) -> DiffSal:
  """(static graph, variables dict) -> module; works inside `jax.jit`."""
  return nnx.merge(graphdef, variables["params"], variables["batch_stats"])


def _host_counted_rngs() -> nnx.Rngs:
  """`nnx.Rngs(0)` whose draw counters are numpy scalars (shapes only).

  Each draw stores `count + 1` back into the stream. Under a trace that
  value is a tracer, and flax's `Variable.set_value` probes its `.sharding`;
  JAX answers with an AttributeError whose message walks every equation
  traced so far, so tracing the constructor is quadratic in the model size
  (jax-ml/jax#40041, unfixed in jax 0.10.2 and flax 0.12.8). A numpy counter
  is updated in place instead. Measured on a 2-core Xeon: `nnx.eval_shape`
  of the published audio-visual model 11.7 s -> 1.4 s. Only for
  `abstract_model`: under `jax.jit` the counts would become constants that
  XLA folds, and the initial values would change in the last bits.
  """
  rngs = nnx.Rngs(0)
  for _, node in nnx.iter_graph(rngs):
    if isinstance(node, nnx.RngStream):
      count = node.count.get_raw_value()
      node.count.set_raw_value(np.zeros(count.shape, np.uint32))
  return rngs


def abstract_model(config: ml_collections.ConfigDict) -> DiffSal:
  """The model with `jax.ShapeDtypeStruct` variables (nothing allocated)."""
  return nnx.eval_shape(lambda: DiffSal(model_config(config),
                                        rngs=_host_counted_rngs()))


def abstract_variables(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, Variables]:
  """Graph and `jax.ShapeDtypeStruct` variables, without allocating anything."""
  return split(abstract_model(config))


def init_variables(config: ml_collections.ConfigDict, seed: int = 0) -> Variables:
  """Random initial variables (eager: compiling the whole init is slower on CPU)."""
  return split(build_model(config, seed=seed))[1]


@functools.lru_cache(maxsize=8)
def _eval_forward(config_json: str):
  """One jitted eval forward per model config (compiled once per input shape)."""
  graphdef, _ = abstract_variables(ml_collections.ConfigDict(json.loads(config_json)))

  @jax.jit
  def run(variables, img, x_t, t, audio):
    return merge(graphdef, variables)(img, x_t, t, audio)
  return run


def apply(config: ml_collections.ConfigDict, variables: Variables, img: jax.Array,
          x_t: jax.Array, t: jax.Array, audio: jax.Array | None = None) -> jax.Array:
  """Eval-mode forward (running BatchNorm statistics, no dropout), jitted.

  Channels-last: `img (B,T,H,W,3)`, `x_t (B,H,W,1)`, `t (B,)` int,
  `audio (B,P,h,w)` (P=9, 112x192 when published) or None for the visual
  model. Returns the predicted clean map x0 `(B,H,W,1)` in (0, 1).
  """
  return _eval_forward(model_config(config).to_json())(variables, img, x_t, t, audio)


def save_variables(directory: str | pathlib.Path, variables: Variables) -> None:
  """Write variables as an orbax checkpoint (atomic: orbax finalises by rename)."""
  path = pathlib.Path(directory).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, variables, force=True)


def load_variables(directory: str | pathlib.Path, config: ml_collections.ConfigDict) -> Variables:
  """Restore variables saved by `save_variables` (or the converter CLI).

  Restoring against the model's abstract structure gives back int list keys
  and fails with the offending path when the checkpoint belongs to another
  architecture (e.g. a visual checkpoint for the audio-visual model).
  """
  path = pathlib.Path(directory).absolute()
  if not path.exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  _, target = abstract_variables(config)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target)
