"""Training loop: `train_and_evaluate(config, workdir)`.

One jitted step over a device mesh (see `train_state`), batches prefetched to
the devices by a background thread, periodic validation with the DDIM
sampler, orbax checkpoints (periodic for resuming, plus the best by
`config.best_metric`), and logs to TensorBoard and `metrics.jsonl`.
A restarted run resumes from the latest checkpoint, including the optimiser,
the step, the RNG and the data iterator, and reproduces the logs of an
uninterrupted run. SIGTERM (preemption) saves a checkpoint and exits.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffsal_jax import compilation_cache
from diffsal_jax.data import atomic_files
from diffsal_jax.training import checkpointing
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import device_prefetch
from diffsal_jax.models import diffusion
from diffsal_jax.data import input_pipeline
from diffsal_jax.training import model_setup
from diffsal_jax.training import modes
from diffsal_jax.training import preemption as preemption_lib
from diffsal_jax.training import run_report
from diffsal_jax.training import train_logging
from diffsal_jax.training import train_state as ts
from diffsal_jax.training import validation

FINAL_METRICS_FILE = "final_metrics.json"


def run_length(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(steps per epoch, total steps)."""
  steps_per_epoch = input_pipeline.num_train_clips(config) // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                     f"{input_pipeline.num_train_clips(config)} training clips")
  total = (config.num_train_steps if config.num_train_steps > 0
           else config.num_epochs * steps_per_epoch)
  return steps_per_epoch, total


def score_of(metrics: dict[str, float], expression: str) -> float:
  """Evaluates 'cc+nss+sim' / 'cc-kld' style sums of metric names."""
  total, sign, name = 0.0, 1.0, ""
  for char in expression.replace(" ", "") + "+":
    if char in "+-":
      if name:
        if name not in metrics:
          raise ValueError(f"config.best_metric={expression!r}: unknown metric "
                           f"{name!r} (have {sorted(metrics)})")
        total += sign * metrics[name]
      sign, name = (1.0 if char == "+" else -1.0), ""
    else:
      name += char
  return total


@dataclasses.dataclass
class _Loop:
  """Everything the training loop touches."""
  config: ml_collections.ConfigDict
  workdir: str
  model: model_setup.Model
  leaves: list          # the TrainState's leaves, as the step takes them
  treedef: Any          # ... and their structure
  step_fn: Any          # (leaves, batch) -> (leaves, metrics), jitted
  sampler: Any
  checkpoints: checkpointing.Checkpoints
  iterator: checkpointing.IteratorState
  logger: train_logging.TrainLogger
  steps_per_epoch: int
  total_steps: int
  best: dict
  started: float        # time.time() when train_and_evaluate began

  @property
  def state(self) -> ts.TrainState:
    """The TrainState, rebuilt from the leaves where it is read (validation,
    checkpoints): ts.jit_train_step_on_leaves says why."""
    return jax.tree.unflatten(self.treedef, self.leaves)


def _every(value: int, steps_per_epoch: int) -> int:
  return value if value > 0 else steps_per_epoch


def _setup(config: ml_collections.ConfigDict, workdir: str,
           started: float) -> _Loop:
  """Model, optimiser, data, checkpoints (resumed if any) and logger."""
  checkpoints = checkpointing.Checkpoints(workdir,
                                          config.max_checkpoints_to_keep)
  resuming = checkpoints.latest_step() is not None
  # A resumed run restores every variable, so it skips the random init.
  model = (model_setup.abstract_model(config) if resuming
           else model_setup.initialised_model(config))
  steps_per_epoch, total_steps = run_length(config)
  lr_fn = ts.learning_rate_fn(config, steps_per_epoch)
  tx = ts.make_optimizer(config, lr_fn)
  create = lambda p, b: ts.create_train_state(p, b, tx, config.seed)
  state = (jax.eval_shape(create, model.params, model.batch_stats) if resuming
           else create(model.params, model.batch_stats))
  shardings = ts.state_sharding(state, model.mesh, config.param_sharding)
  iterator = checkpointing.IteratorState(iter(input_pipeline.create_train_dataset(
      config, process_index=jax.process_index(),
      process_count=jax.process_count())))
  best = {"score": -np.inf, "step": -1}
  if resuming:
    state, meta = checkpoints.restore_latest(state, shardings, iterator)
    best = meta.get("best", best)
    logging.info("Resumed from step %d of %s", int(state.step), workdir)
  else:
    state = jax.device_put(state, shardings)
  step_fn, treedef = ts.jit_train_step_on_leaves(
      model.model_def, tx, lr_fn,
      diffusion.make_schedule(config.diffusion.num_timesteps), config,
      shardings, model.mesh)
  logger = train_logging.TrainLogger(workdir, total_steps=total_steps,
                                     initial_step=int(state.step))
  return _Loop(config, workdir, model, jax.tree.leaves(state), treedef,
               step_fn,
               validation.make_sampler(model.model_def, config, model.mesh),
               checkpoints, iterator, logger, steps_per_epoch, total_steps,
               best, started)


def _log_startup(loop: _Loop, step: int, compile_seconds: float) -> None:
  """The launch's start-up record (<workdir>/startup.jsonl), written once
  its first step has run: the figures of tools/benchmarks/startup.py."""
  cache = compilation_cache.counts()
  loop.logger.startup({
      "time": datetime.datetime.now().isoformat(timespec="seconds"),
      "first_step": step, "resumed": step > 1,
      "seconds_to_first_step": round(time.time() - loop.started, 3),
      "train_step_compile_seconds": round(compile_seconds, 3),
      "compilation_cache": compilation_cache.folder(),
      "cache_hits": cache["hits"], "cache_writes": cache["writes"]})


def _log_train(loop: _Loop, step: int, pending: list, started: float,
               examples: int) -> None:
  """Fetches the metrics of the last steps; stops on a non-finite loss."""
  fetched = jax.device_get(pending)
  for offset, metrics in enumerate(fetched):
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(
          f"non-finite loss {float(metrics['loss'])} at step "
          f"{step - len(fetched) + offset + 1}; lower config.learning_rate or "
          "check the data (the last checkpoint is kept)")
  elapsed = max(time.time() - started, 1e-9)
  loop.logger.write(step, "train", {
      "loss": float(np.mean([m["loss"] for m in fetched])),
      "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
      "lr": float(fetched[-1]["lr"]),
      "examples_per_s": examples / elapsed})


def _validate(loop: _Loop, step: int) -> None:
  """Scores the validation split; keeps the best checkpoint."""
  config, state = loop.config, loop.state
  results = validation.evaluate_split(
      state.params, state.batch_stats, loop.sampler, config,
      loop.model.mesh, config.eval_split, max_batches=config.eval_max_batches)
  score = score_of(results, config.best_metric)
  loop.logger.write(step, "val", {**results, "score": score})
  loop.logger.message(f"step {step}: " + ", ".join(
      f"{k} {v:.4f}" for k, v in results.items()))
  if score > loop.best["score"]:
    loop.best = {"score": score, "step": step}
    loop.checkpoints.save_best(step, state, {"step": step, **results,
                                             "score": score})


def _save(loop: _Loop, step: int, force: bool = False) -> None:
  loop.checkpoints.save(step, loop.state, loop.iterator,
                        {"step": step, "best": loop.best}, force=force)


def _train(loop: _Loop, preemption: preemption_lib.Preemption) -> bool:
  """Runs the remaining steps; returns False when stopped by preemption."""
  config = loop.config
  eval_every = _every(config.eval_every_steps, loop.steps_per_epoch)
  ckpt_every = _every(config.checkpoint_every_steps, loop.steps_per_epoch)
  batches = device_prefetch.DevicePrefetcher(
      loop.iterator.iterator, ts.batch_sharding(loop.model.mesh), batch_lib.TRAIN_KEYS,
      config.prefetch_to_device)
  pending, started, step = [], time.time(), int(loop.state.step)
  step_fn = None
  try:
    while step < loop.total_steps:
      batch, iterator_state = next(batches)
      first = step_fn is None
      if first:
        # Compiled ahead of the first step, so that the compiler's freed
        # memory goes back to the OS before the step allocates its buffers.
        compile_started = time.time()
        step_fn = loop.step_fn.lower(loop.leaves, batch).compile()
        compile_seconds = time.time() - compile_started
        ts.release_freed_host_memory()
      loop.leaves, metrics = step_fn(loop.leaves, batch)
      loop.iterator.state = iterator_state
      pending.append(metrics)
      step += 1
      if first:
        jax.block_until_ready(metrics)
        _log_startup(loop, step, compile_seconds)
      loop.logger.advance()
      if step % config.log_every_steps == 0 or step == loop.total_steps:
        _log_train(loop, step, pending, started,
                   len(pending) * config.batch_size)
        pending, started = [], time.time()
      if step % eval_every == 0 or step == loop.total_steps:
        _validate(loop, step)
      if step % ckpt_every == 0 or step == loop.total_steps:
        _save(loop, step)
      if preemption.reached(step):
        _save(loop, step, force=True)
        loop.logger.message(f"preempted: saved step {step}, exiting")
        return False
  finally:
    batches.close()
  return True


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, float]:
  """Trains (or resumes) in `workdir`; returns the final metrics.

  The final metrics score the best checkpoint on `config.final_eval_split`
  and are also written to `<workdir>/final_metrics.json`. Returns {} when the
  run was preempted (restart it to continue).
  """
  started = time.time()
  os.makedirs(workdir, exist_ok=True)
  config = modes.prepare_run(config, workdir)
  if jax.process_index() == 0:
    atomic_files.write_json(
        os.path.join(workdir, model_setup.SAVED_CONFIG), config.to_dict(),
        indent=2, sort_keys=True)
  loop = _setup(config, workdir, started)
  preemption = preemption_lib.Preemption(loop.checkpoints.reached_preemption)
  try:
    finished = _train(loop, preemption)
  finally:
    preemption.restore()
    loop.checkpoints.close()
    loop.logger.close()
  if not finished:
    return {}
  # The best checkpoint by validation (else the latest), never chosen on the
  # final split itself.
  best = checkpointing.resolve_variables_dir(workdir, "best")
  report_dir = os.path.join(workdir, run_report.REPORT_DIR)
  # The report scores this evaluation's own maps: one sampling pass, not two
  # (the audio-visual demo's test split: about 15 s on a 2-core CPU).
  results = model_setup.evaluate_checkpoint(
      config, best, config.final_eval_split, model=loop.model,
      sampler=loop.sampler, out_dir=(run_report.clear_predictions(report_dir)
                                     if config.final_report else None))
  if jax.process_index() == 0:
    atomic_files.write_json(os.path.join(workdir, FINAL_METRICS_FILE),
                            {"split": config.final_eval_split, **results},
                            indent=2, sort_keys=True)
  logging.info("Final %s metrics: %s", config.final_eval_split, results)
  if config.final_report:
    index = run_report.write_run_report(
        config, workdir, config.final_eval_split, best, report_dir,
        predicted=True)
    if index:
      logging.info("Report: %s", index)
  return results
