"""Functional training state, optimiser, sharding and the jitted train step.

The NNX model is split once into a static graph definition and array states
(`nnx.Param`, `nnx.BatchStat`); the step merges them inside `jax.jit`, so the
loop runs one compiled function over a `jax.sharding.Mesh`: the batch is split
on the 'data' axis, the state is replicated (`param_sharding='replicated'`) or
split on the same axis (`'fsdp'`), and the old state's buffers are donated.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import sys
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffsal_jax.models import diffusion
from diffsal_jax.data import batch as batch_lib

DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  step: jax.Array           # int32 scalar: updates applied so far
  params: nnx.State         # all nnx.Param (frozen subtrees included)
  batch_stats: nnx.State    # BatchNorm running statistics
  opt_state: optax.OptState
  rng: jax.Array            # uint32 key data (checkpointable)


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """The static half of the split model plus what the step needs to know."""
  graphdef: Any
  rest: nnx.State           # variables that are neither Param nor BatchStat
  uses_audio: bool


def make_mesh(data_parallel: int) -> Mesh:
  devices = np.asarray(jax.devices()[:data_parallel])
  return Mesh(devices, (DATA_AXIS,))


def _fsdp_spec(shape: tuple[int, ...], n: int) -> PartitionSpec:
  """Splits the largest axis divisible by n; small or odd arrays replicate."""
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < 2 ** 14:
    return PartitionSpec()
  axes = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0]
  if not axes:
    return PartitionSpec()
  spec = [None] * len(shape)
  spec[axes[0]] = DATA_AXIS
  return PartitionSpec(*spec)


def state_sharding(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
  """Shardings for every leaf of a (possibly abstract) state pytree."""
  n = mesh.shape[DATA_AXIS]

  def leaf_sharding(x):
    shape = tuple(getattr(x, "shape", ()))
    spec = _fsdp_spec(shape, n) if mode == "fsdp" else PartitionSpec()
    return NamedSharding(mesh, spec)

  return jax.tree.map(leaf_sharding, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def is_frozen_path(path: tuple, frozen_subtrees: tuple[str, ...]) -> bool:
  names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
  return bool(names & set(frozen_subtrees))


def learning_rate_fn(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """Constant lr, x lr_decay_factor at each fraction of the run.

  Epoch mode mirrors MultiStepLR(milestones=[int(f * epochs)]) stepped per
  epoch (a milestone of 0 never fires); step mode splits num_train_steps.
  """
  if config.num_train_steps > 0:
    bounds = [int(f * config.num_train_steps) for f in config.lr_decay_fractions]
  else:
    bounds = [int(f * config.num_epochs) * steps_per_epoch
              for f in config.lr_decay_fractions]
  bounds = jnp.asarray([b for b in bounds if b > 0] or [np.iinfo(np.int32).max],
                       jnp.int32)

  def schedule(count):
    decays = jnp.sum(count >= bounds)
    return config.learning_rate * config.lr_decay_factor ** decays

  return schedule


def make_optimizer(config: ml_collections.ConfigDict,
                   lr_fn: Callable) -> optax.GradientTransformation:
  """Clip-by-global-norm then Adam on the trained params; frozen ones fixed."""
  trained = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adam(lr_fn, b1=config.adam_b1, b2=config.adam_b2,
                 eps=config.adam_eps))
  frozen = tuple(config.frozen_subtrees)

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if is_frozen_path(p, frozen) else "trained",
        params)

  return optax.multi_transform(
      {"trained": trained, "frozen": optax.set_to_zero()}, labels)


def split_model(model: nnx.Module, uses_audio: bool
                ) -> tuple[ModelDef, nnx.State, nnx.State]:
  graphdef, params, batch_stats, rest = nnx.split(
      model, nnx.Param, nnx.BatchStat, ...)
  return ModelDef(graphdef, rest, uses_audio), params, batch_stats


def create_train_state(params: nnx.State, batch_stats: nnx.State,
                       tx: optax.GradientTransformation, seed: int
                       ) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(seed)))


def merge_model(model_def: ModelDef, params: nnx.State,
                batch_stats: nnx.State) -> nnx.Module:
  return nnx.merge(model_def.graphdef, params, batch_stats, model_def.rest,
                   copy=True)


def _loss_fn(params, batch_stats, batch, inputs, dropout_key, *, model_def,
             frozen):
  """x0 loss of one batch; returns the updated BatchNorm statistics too."""
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.lax.stop_gradient(x) if is_frozen_path(p, frozen) else x,
      params)
  model = merge_model(model_def, params, batch_stats)
  audio = batch["audio"] if model_def.uses_audio else None
  pred = model(batch["img"], inputs.x_t, inputs.t, audio, train=True,
               dropout_key=dropout_key)
  loss = diffusion.x0_mse_loss(pred, inputs.target)
  return loss, nnx.state(model, nnx.BatchStat)


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               model_def: ModelDef, tx: optax.GradientTransformation,
               lr_fn: Callable, schedule: diffusion.Schedule,
               config: ml_collections.ConfigDict
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update on a global batch (pure; jit it)."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  k_diffusion, k_dropout = jax.random.split(step_key)
  maps = batch["map"][..., None].astype(jnp.float32)
  inputs = diffusion.training_inputs(k_diffusion, schedule, maps,
                                     config.diffusion.per_sample_t,
                                     config.diffusion.train_t_min)
  if config.data.image_dtype == "uint8":
    # The loader left the normalisation to the device (4x less to transfer).
    batch = {**batch, "img": batch_lib.normalise_on_device(
        batch["img"], config.data.dataset)}
  loss_fn = functools.partial(_loss_fn, model_def=model_def,
                              frozen=tuple(config.frozen_subtrees))
  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, batch, inputs, k_dropout)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
             "lr": lr_fn(state.step)}
  return new_state, metrics


def release_freed_host_memory() -> None:
  """Hands the heap memory freed by XLA's compiler back to the OS.

  Compiling the full-size train step peaks at about 2 GB more host memory
  than running it; glibc keeps that freed heap mapped, where it would add to
  the step's own buffers. Call after compiling. No-op off glibc.
  """
  if sys.platform.startswith("linux"):
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc
      pass


def _partial_step(model_def, tx, lr_fn, schedule, config) -> Callable:
  return functools.partial(train_step, model_def=model_def, tx=tx,
                           lr_fn=lr_fn, schedule=schedule, config=config)


def _jit_step(step: Callable, state_shardings: Any, mesh: Mesh) -> Callable:
  """jax.jit of `step(state, batch) -> (state, metrics)`: the state with
  fixed shardings (old one donated), the batch on the data axis, the
  metrics replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,))


def jit_train_step(model_def: ModelDef, tx, lr_fn, schedule, config,
                   state_shardings: Any, mesh: Mesh) -> Callable:
  """Compiled step: state in/out with fixed shardings, old state donated."""
  return _jit_step(_partial_step(model_def, tx, lr_fn, schedule, config),
                   state_shardings, mesh)


def jit_train_step_on_leaves(model_def: ModelDef, tx, lr_fn, schedule, config,
                             state_shardings: Any, mesh: Mesh
                             ) -> tuple[Callable, Any]:
  """`jit_train_step`'s program on the state's flat list of leaves.

  Returns `(step, treedef)`: `step(leaves, batch) -> (leaves, metrics)`,
  where `leaves, treedef = jax.tree.flatten(state)` and
  `jax.tree.unflatten(treedef, leaves)` gives the TrainState back. Same
  computation, bit for bit. Why: each call of the TrainState form rebuilds
  every `nnx.Variable` of its output in Python (params, both Adam moments,
  batch statistics: 935 for the demo model), about 30 ms of the demo
  step's 115 ms on one core (AMD EPYC, 2026-12-08). A loop that
  rebuilds the state only when it needs it (validation, checkpoints) skips
  that.
  """
  step = _partial_step(model_def, tx, lr_fn, schedule, config)
  leaf_shardings, treedef = jax.tree.flatten(state_shardings)

  def step_on_leaves(leaves, batch):
    state, metrics = step(jax.tree.unflatten(treedef, leaves), batch)
    return jax.tree.leaves(state), metrics

  return _jit_step(step_on_leaves, leaf_shardings, mesh), treedef
