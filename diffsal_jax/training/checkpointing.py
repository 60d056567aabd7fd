"""Orbax checkpoints of the training state, the data iterator and run metadata.

Layout of a workdir:
  checkpoints/<step>/{variables,train,data_iter,meta}  periodic, resumed from
  best/<step>/{variables,meta}                          best validation score
  checkpoints/<step>.damaged                            set aside on resume

`variables` is `{'params': ..., 'batch_stats': ...}` of pure nested dicts
(orbax StandardSave), exactly the tree `python -m diffsal_jax.convert --out`
writes for the published weights (`model.save_variables`), so
`config.init_from` accepts either.
Orbax writes each step into a temporary directory and renames it when
complete, so a kill mid-save leaves the previous checkpoint intact. A step
damaged later on disk is found by trying to restore it; the resume then falls
back to the newest step that restores (`Checkpoints.restore_latest`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from flax import traverse_util
from jax.experimental import multihost_utils

from diffsal_jax.training import train_state as ts

VARIABLES, TRAIN, DATA_ITER, META = "variables", "train", "data_iter", "meta"
PARAMS, BATCH_STATS = "params", "batch_stats"


class IteratorState:
  """The grain iterator state that matches the batches consumed so far.

  Batches are prefetched ahead of the step that uses them, so the live
  iterator is ahead of the training state; the loop records the state that
  came with each consumed batch here and this is what gets checkpointed.
  Implements what grain's orbax handler calls (`get_state`/`set_state`).
  """

  def __init__(self, iterator: Any):
    self.iterator = iterator
    self.state = iterator.get_state()

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw)
    self.iterator.set_state(self.state)

  def start_prefetch(self) -> None:
    pass


def _manager(directory: str, items: tuple[str, ...], max_to_keep: int
             ) -> ocp.CheckpointManager:
  handlers = {name: ocp.StandardCheckpointHandler() for name in items}
  handlers[META] = ocp.JsonCheckpointHandler()
  if DATA_ITER in items:
    handlers[DATA_ITER] = grain.checkpoint.CheckpointHandler()
  # A kill mid-save leaves a temporary folder; the next run removes it.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, item_names=items,
                               item_handlers=handlers, options=options)


def _variables(state: Any) -> dict[str, Any]:
  return {PARAMS: state.params.to_pure_dict(),
          BATCH_STATS: state.batch_stats.to_pure_dict()}


def _train_item(state: ts.TrainState) -> dict[str, Any]:
  return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}


class Checkpoints:
  """Periodic (resumable) and best checkpoints of one training run."""

  def __init__(self, workdir: str, max_to_keep: int):
    self._latest = _manager(os.path.join(workdir, "checkpoints"),
                            (VARIABLES, TRAIN, DATA_ITER, META),
                            max_to_keep)
    self._best = _manager(os.path.join(workdir, "best"),
                          (VARIABLES, META), 1)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_meta(self) -> dict | None:
    step = self._best.latest_step()
    if step is None:
      return None
    return self._best.restore(step, args=ocp.args.Composite(
        **{META: ocp.args.JsonRestore()}))[META]

  def save(self, step: int, state: ts.TrainState, iterator: IteratorState,
           meta: dict, *, force: bool = False) -> bool:
    args = ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardSave(_variables(state)),
            TRAIN: ocp.args.StandardSave(_train_item(state)),
            DATA_ITER: grain.checkpoint.CheckpointSave(iterator),
            META: ocp.args.JsonSave(meta)})
    return self._latest.save(step, args=args, force=force)

  def save_best(self, step: int, state: ts.TrainState, meta: dict) -> None:
    args = ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardSave(_variables(state)),
        META: ocp.args.JsonSave(meta)})
    self._best.save(step, args=args, force=True)

  def restore_latest(self, state: ts.TrainState, shardings: ts.TrainState,
                     iterator: IteratorState) -> tuple[ts.TrainState, dict]:
    """Restores into `state`'s structure and `shardings`; moves the iterator.

    Tries the steps newest first. A step that fails to restore (a truncated
    data file, a disk error: orbax / TensorStore errors) is named in a
    warning and, once an older step has restored, moved aside to
    `checkpoints/<step>.damaged` (see `_set_aside`). If no step restores,
    raises RuntimeError naming every step and its error, and changes nothing
    (the same error on every step usually means another config, not damage).
    """
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state, shardings)
    failed: list[tuple[int, Exception]] = []
    with _quiet_after_failed_restore():
      restored, step = self._restore_newest_intact(abstract, iterator, failed)
    if restored is None:
      listing = "; ".join(f"step {s} ({self._step_dir(s)}): {_first_line(e)}"
                          for s, e in failed)
      raise RuntimeError(
          f"no checkpoint in {self._latest.directory} can be restored: {listing}. "
          "Nothing was changed. If the config changed, resume with the one that "
          "wrote them; if they are damaged, move them away to start from step 0"
      ) from (failed[0][1] if failed else None)
    if failed:
      self._set_aside([s for s, _ in failed], restored_step=step)
    params, batch_stats = state.params, state.batch_stats
    nnx.replace_by_pure_dict(params, restored[VARIABLES][PARAMS])
    nnx.replace_by_pure_dict(batch_stats, restored[VARIABLES][BATCH_STATS])
    train = restored[TRAIN]
    new_state = ts.TrainState(step=train["step"], params=params,
                              batch_stats=batch_stats,
                              opt_state=train["opt_state"], rng=train["rng"])
    return new_state, restored[META]

  def _restore_newest_intact(self, abstract: ts.TrainState, iterator: IteratorState,
                             failed: list) -> tuple[dict | None, int]:
    """(restored items, step) of the newest step that restores, or (None,
    -1); appends (step, error) of each step that fails to `failed`."""
    for step in sorted(self._latest.all_steps(), reverse=True):
      try:
        return self._latest.restore(step, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardRestore(_variables(abstract)),
            TRAIN: ocp.args.StandardRestore(_train_item(abstract)),
            DATA_ITER: grain.checkpoint.CheckpointRestore(iterator),
            META: ocp.args.JsonRestore()})), step
      # Whatever orbax, TensorStore or json raise: whether the step is damaged
      # is decided by whether an older one restores, not by the error's type.
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("checkpoint %s cannot be restored (%s); trying the "
                        "previous one", self._step_dir(step), _first_line(error))
        failed.append((step, error))
    return None, -1

  def _step_dir(self, step: int) -> str:
    return os.path.join(str(self._latest.directory), str(step))

  def _set_aside(self, steps: list[int], restored_step: int) -> None:
    """Renames damaged steps to `<step>.damaged` (process 0; all wait).

    Moved, not deleted: nothing is lost (a read error may be passing, and
    the files can be inspected), while a name that is not a step number is
    ignored by orbax (listing, max_to_keep) and `resolve_variables_dir`,
    so the resumed run can save that step again.
    """
    if jax.process_index() == 0:
      for step in steps:
        source, target = self._step_dir(step), self._step_dir(step) + ".damaged"
        suffix = 1
        while os.path.exists(target):
          target, suffix = f"{self._step_dir(step)}.damaged-{suffix}", suffix + 1
        os.rename(source, target)
        logging.warning("checkpoint step %d is damaged: moved it to %s; resuming "
                        "from step %d", step, target, restored_step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("diffsal_jax_checkpoints_set_aside")
    self._latest.reload()

  def reached_preemption(self, step: int) -> bool:
    return self._latest.reached_preemption(step)

  def close(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()
    self._latest.close()
    self._best.close()


def _first_line(error: Exception, head: int = 160, tail: int = 340) -> str:
  """`Type: message` of an error, without TensorStore's spec dump; a long
  message keeps its start and its end (where TensorStore says why)."""
  text = str(error).split(" [tensorstore_spec")[0].strip().replace("\n", " ")
  if len(text) > head + tail:
    text = f"{text[:head]} ... {text[-tail:]}"
  return f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _quiet_after_failed_restore():
  """Drops the "Event loop is closed" errors of a failed restore.

  When one array of a step fails to read, orbax closes its event loop while
  TensorStore still completes the step's other reads; each late callback
  then prints an unraisable RuntimeError traceback (measured: one per array).
  Only those are dropped; any other unraisable error goes to the usual hook.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _is_variables_dir(path: str) -> bool:
  """A StandardCheckpointer directory (converter output or our item)."""
  return any(os.path.isfile(os.path.join(path, name))
             for name in ("_CHECKPOINT_METADATA", "_METADATA")) and (
                 not os.path.isdir(os.path.join(path, VARIABLES)))


def resolve_variables_dir(path: str, prefer: str = "best") -> str:
  """The directory of a `{'params','batch_stats'}` tree, found from `path`.

  `path` may be that directory (a `convert --out` result), one step of ours
  (`<step>/variables`), a CheckpointManager root (its latest step) or a
  training workdir (`prefer`: its 'best' step, else the latest periodic one).
  """
  if os.path.isdir(os.path.join(path, VARIABLES)):
    return os.path.join(path, VARIABLES)
  if _is_variables_dir(path):
    return path
  subdirs = ("best", "checkpoints") if prefer == "best" else (
      "checkpoints", "best")
  for sub in subdirs:
    if not os.path.isdir(os.path.join(path, sub)):
      continue
    try:
      return resolve_variables_dir(os.path.join(path, sub), prefer)
    except FileNotFoundError:
      continue
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(
      path) else []
  if steps:
    return resolve_variables_dir(os.path.join(path, str(max(steps))), prefer)
  raise FileNotFoundError(
      f"{path!r} holds no model checkpoint (expected a `diffsal_jax.convert "
      "--out` directory, a checkpoint step, or a training workdir)")


def restore_tree(directory: str) -> dict:
  """Restores a StandardSave tree as host NumPy arrays (any device count)."""
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return checkpointer.restore(directory, target)


def _name(path: tuple) -> str:
  # Orbax stores integer keys (list indices) as strings: compare by name.
  return "/".join(map(str, path))


def load_variables_into(params: nnx.State, batch_stats: nnx.State,
                        path: str) -> list[str]:
  """Initialises from a checkpoint found by `resolve_variables_dir(path)`.

  Like the published `load_state_dict(strict=False)`: entries missing from
  the checkpoint keep their current value and are returned; entries the model
  lacks are logged; a shape mismatch is an error naming the entry.
  """
  directory = resolve_variables_dir(path)
  tree = restore_tree(directory)
  missing = []
  for name, state in ((PARAMS, params), (BATCH_STATS, batch_stats)):
    missing += [f"{name}/{m}" for m in _copy_matching(
        state, tree.get(name, {}), f"{directory}:{name}")]
  return missing


def _copy_matching(state: nnx.State, loaded_tree: dict, where: str
                   ) -> list[str]:
  current = traverse_util.flatten_dict(state.to_pure_dict())
  loaded = {_name(p): v for p, v in
            traverse_util.flatten_dict(loaded_tree).items()}
  missing, merged = [], {}
  for path, value in current.items():
    name = _name(path)
    if name not in loaded:
      missing.append(name)
      merged[path] = value
      continue
    if tuple(loaded[name].shape) != tuple(value.shape):
      raise ValueError(f"{where}/{name} has shape {loaded[name].shape}, the "
                       f"model expects {tuple(value.shape)}")
    merged[path] = np.asarray(loaded[name]).astype(value.dtype)
  unused = sorted(set(loaded) - {_name(p) for p in current})
  if unused:
    logging.info("%s: %d entries not used by this model, e.g. %s", where,
                 len(unused), unused[:3])
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(merged))
  return missing
