"""Building the model on the device mesh, loading checkpoints, scoring them.

Used by the trainer and by the `evaluate` / `predict` modes (`modes.py`).
The model's structure comes from `models.api.abstract_model` (nothing
allocated); a fresh start initialises it under `jax.jit` straight into its
shardings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from absl import logging

from diffsal_jax.training import checkpointing
from diffsal_jax.models import api as model_lib
from diffsal_jax.training import train_config
from diffsal_jax.training import train_state as ts
from diffsal_jax.training import validation


# A run's resolved config, written by the trainer and read by `predict`.
SAVED_CONFIG = "config.json"


@dataclasses.dataclass
class Model:
  """The split model: static definition, variables (arrays or shapes), mesh."""
  model_def: ts.ModelDef
  params: Any
  batch_stats: Any
  mesh: jax.sharding.Mesh


def _uses_audio(config: ml_collections.ConfigDict) -> bool:
  return config.model.variant == "av"


def abstract_model(config: ml_collections.ConfigDict) -> Model:
  """Structure with `jax.ShapeDtypeStruct` variables."""
  model_def, params, batch_stats = ts.split_model(
      model_lib.abstract_model(config.model), _uses_audio(config))
  mesh = ts.make_mesh(train_config.data_parallel_size(config))
  return Model(model_def, params, batch_stats, mesh)


# XLA:CPU options for a program that runs once (the initialiser): the
# cheapest optimisation, as tests/conftest.py compiles the suite. The demo
# model's initialiser compiles in 11 s instead of 26 s, the published AV
# one's in 23 s instead of 34 s, and runs in 0.03 s instead of 0.01 s (2-core
# AMD EPYC; tools/benchmarks/startup.py, docs/performance.md). Being
# the program's own options, they also make the initial values independent
# of the caller's XLA_FLAGS.
ONE_SHOT_CPU_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}


def initialiser(config: ml_collections.ConfigDict, model: Model):
  """The jitted initialiser: () -> (params, batch_stats), random
  (config.seed), created in `model`'s shardings. Compile it with
  `one_shot_compile_options()`."""
  shardings = ts.state_sharding((model.params, model.batch_stats), model.mesh,
                                config.param_sharding)

  def init():
    built = model_lib.build_model(config.model, seed=config.seed)
    return ts.split_model(built, _uses_audio(config))[1:]

  return jax.jit(init, out_shardings=shardings)


def one_shot_compile_options() -> dict | None:
  """`ONE_SHOT_CPU_OPTIONS` on the CPU backend, else None (XLA's own)."""
  return ONE_SHOT_CPU_OPTIONS if jax.default_backend() == "cpu" else None


def initialised_model(config: ml_collections.ConfigDict) -> Model:
  """Random variables (config.seed), created sharded, then `init_from`.

  The initialiser compiles with `one_shot_compile_options()`.
  """
  model = abstract_model(config)
  compiled = initialiser(config, model).lower().compile(
      one_shot_compile_options())
  model.params, model.batch_stats = compiled()
  if config.init_from:
    _load_init_from(model, train_config.init_from_paths(config))
  return model


def _load_init_from(model: Model, paths: list[str]) -> None:
  """Applies the checkpoints in order (strict=False semantics)."""
  missing = None
  for path in paths:
    now = set(checkpointing.load_variables_into(model.params,
                                                model.batch_stats, path))
    missing = now if missing is None else missing & now
    logging.info("Initialised from %s (%d variables not in it)", path, len(now))
  if missing:
    logging.warning("%d variables keep their random initialisation, e.g. %s",
                    len(missing), sorted(missing)[:5])


def load_for_eval(model: Model, config: ml_collections.ConfigDict,
                  checkpoint: str) -> tuple[Any, Any]:
  """All variables from `checkpoint` (see resolve_variables_dir), on the mesh."""
  shape_only = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  params = jax.tree.map(shape_only, model.params)
  batch_stats = jax.tree.map(shape_only, model.batch_stats)
  missing = checkpointing.load_variables_into(params, batch_stats, checkpoint)
  if missing:
    raise ValueError(f"{checkpoint} lacks {len(missing)} variables of this "
                     f"model, e.g. {missing[:5]}")
  variables = (params, batch_stats)
  return jax.device_put(variables, ts.state_sharding(
      variables, model.mesh, config.param_sharding))


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str,
                        split: str, *, model: Model | None = None,
                        sampler: Any = None,
                        out_dir: str | None = None) -> dict[str, float]:
  """CC, NSS, SIM, KLD, AUC-J and sAUC of one checkpoint on `split`; with
  `out_dir`, its maps are written there too (`validation.evaluate_split`)."""
  model = model or abstract_model(config)
  sampler = sampler or validation.make_sampler(model.model_def, config,
                                               model.mesh)
  params, batch_stats = load_for_eval(model, config, checkpoint)
  return validation.evaluate_split(params, batch_stats, sampler, config,
                                   model.mesh, split, with_auc=True,
                                   out_dir=out_dir)
