r"""Checks on one machine that N JAX processes train exactly like one.

  python -m tools.multiprocess_check [--processes=2] \
      [--devices_per_process=1] [--steps=3] [--param_sharding=replicated] \
      [--workdir=/tmp/diffsal_multiprocess]

Starts `--processes` CPU worker processes that join one JAX cluster through
`jax.distributed.initialize` (coordinator on 127.0.0.1, gloo collectives),
each reading only its own `input_pipeline.create_train_dataset` shard, and a
reference process that holds the same number of devices alone. They train
the demo's check model (configs/demo.py: check_model_config, the demo model
cut to two stages: a third of the compile; with --param_sharding=fsdp the
demo model, whose larger weights FSDP splits) for a few steps on a small synthetic
set, exactly as the trainer does (same state set-up, same jitted step).

The workers' global batch at each step is their local batches stacked in
process order (`make_array_from_process_local_data`), a permutation of the
clips a single process would read; the reference is therefore fed that
concatenation explicitly. Both runs use a mesh of the same size, so the only
difference is where the collectives cross a process boundary, and losses and
parameters must agree to --rtol. Exits 1 with the processes' output on any
difference, crash or timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from configs import demo
from diffsal_jax.data.synthetic import demo_data
from diffsal_jax.models import diffusion
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import input_pipeline
from diffsal_jax.training import model_setup
from diffsal_jax.training import modes
from diffsal_jax.training import train
from diffsal_jax.training import train_state as ts

WORKER_TIMEOUT_S = 600


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def check_config(args: argparse.Namespace):
  """The demo config, shrunk to a few small steps on a 4-video synthetic set."""
  c = demo.get_config()
  if args.param_sharding == "replicated":
    # The check model has no weight of the 2**14 values FSDP splits.
    c.model = demo.check_model_config("visual")
  c.batch_size = args.batch_size
  c.num_train_steps = args.steps
  c.param_sharding = args.param_sharding
  # Several devices per process change the order in which the cross-device
  # gradient sum adds its terms (in-process vs gloo). Adam's g / (|g| + eps)
  # turns the float32 rounding noise of gradients that are zero in exact
  # arithmetic (key biases under softmax shift invariance) into +-lr steps
  # whose sign follows that order; measured after 3 steps of 2 x 2 devices
  # with eps 1e-8: the key norms' biases differ by 2x and the losses by
  # 8.6e-6 relative, too close to the 1e-5 checked (1 device per process is
  # bit-exact). The published lr and a larger eps keep the comparison about
  # the distributed step itself, as in tests/test_train_step.py.
  c.learning_rate = 1e-4
  c.adam_eps = 1e-3
  c.data.num_threads = 1
  c.data.prefetch_buffer = 1
  c.synthetic_data.dir = os.path.join(args.workdir, "synthetic_data")
  c.synthetic_data.train_videos = 4
  c.synthetic_data.val_videos = 1
  c.synthetic_data.frames_per_video = 16
  return c


# ---------------------------------------------------------------- training --

def _global_batches(config, mesh, shards: Sequence[int], shard_count: int):
  """Global batches built from the given process shards, stacked in order."""
  iterators = [iter(input_pipeline.create_train_dataset(
      config, process_index=i, process_count=shard_count)) for i in shards]
  sharding = ts.batch_sharding(mesh)
  while True:
    parts = [next(it) for it in iterators]
    yield {k: jax.make_array_from_process_local_data(
        sharding, np.concatenate([p[k] for p in parts]))
           for k in batch_lib.TRAIN_KEYS if k in parts[0]}


def _train(config, shards: Sequence[int], shard_count: int
           ) -> tuple[list[float], dict[str, np.ndarray]]:
  """Runs config.num_train_steps steps the trainer's way; returns losses and
  the final parameters (gathered to every process)."""

  started = time.time()
  # Validates it and points config.data.shards at the (already built) set.
  config = modes.prepare_run(config, config.synthetic_data.dir)
  model = model_setup.initialised_model(config)
  steps_per_epoch, total_steps = train.run_length(config)
  lr_fn = ts.learning_rate_fn(config, steps_per_epoch)
  tx = ts.make_optimizer(config, lr_fn)
  state = ts.create_train_state(model.params, model.batch_stats, tx,
                                config.seed)
  shardings = ts.state_sharding(state, model.mesh, config.param_sharding)
  state = jax.device_put(state, shardings)
  step_fn = ts.jit_train_step(
      model.model_def, tx, lr_fn,
      diffusion.make_schedule(config.diffusion.num_timesteps), config,
      shardings, model.mesh)
  batches = _global_batches(config, model.mesh, shards, shard_count)
  print(f"set-up {time.time() - started:.1f} s", flush=True)
  losses = []
  for step in range(total_steps):
    state, metrics = step_fn(state, next(batches))
    losses.append(float(metrics["loss"]))
    print(f"step {step + 1}: {time.time() - started:.1f} s", flush=True)
  gathered = multihost_utils.process_allgather(state.params.to_pure_dict(),
                                               tiled=True)
  flat = jax.tree_util.tree_flatten_with_path(gathered)[0]
  return losses, {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def _write(out: str, name: str, losses, params) -> None:
  np.savez(os.path.join(out, f"{name}_params.npz"), **params)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump({"losses": losses}, f)


def run_worker(args: argparse.Namespace) -> None:
  # gloo carries the cross-process collectives of the CPU backend (the
  # default in current jax; set so older versions do not silently lack it).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.processes,
                             process_id=args.process_id,
                             initialization_timeout=120)
  if jax.device_count() != args.processes * args.devices_per_process:
    raise RuntimeError(f"expected {args.processes * args.devices_per_process} "
                       f"devices, JAX sees {jax.device_count()}")
  losses, params = _train(check_config(args), [jax.process_index()],
                          jax.process_count())
  if jax.process_index() == 0:
    _write(args.out, "workers", losses, params)
  print(f"process {jax.process_index()}: losses {losses}", flush=True)
  jax.distributed.shutdown()


def run_reference(args: argparse.Namespace) -> None:
  losses, params = _train(check_config(args), range(args.processes),
                          args.processes)
  _write(args.out, "reference", losses, params)
  print(f"reference: losses {losses}", flush=True)


# ------------------------------------------------------------- coordinator --

# Halve the CPU compile time (most of the check's cost); every process
# compiles with the same flags, so the comparison stays exact.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


def child_env(devices: int, fast_compile: bool) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  if fast_compile:
    flags.extend(FAST_COMPILE_FLAGS)
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def _spawn(args, role: str, name: str, out: str, devices: int,
           extra: Sequence[str]):
  command = [sys.executable, "-m", "tools.multiprocess_check",
             f"--role={role}", f"--out={out}", f"--workdir={args.workdir}",
             f"--processes={args.processes}",
             f"--devices_per_process={args.devices_per_process}",
             f"--steps={args.steps}", f"--batch_size={args.batch_size}",
             f"--param_sharding={args.param_sharding}", *extra]
  log_path = os.path.join(out, f"{name}.log")
  log = open(log_path, "w")  # A file, not a pipe: a full pipe would block.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                             env=child_env(devices, args.fast_compile),
                             cwd=repo)
  return process, log, log_path


class CheckFailed(RuntimeError):
  """A difference, crash or timeout; the message holds the processes' output."""


def _outputs(children, tail: int = 4000) -> str:
  parts = []
  for process, _, path in children:
    with open(path) as f:
      text = f.read()
    parts.append(f"--- {os.path.basename(path)} (exit {process.returncode}) "
                 f"---\n{text[-tail:]}")
  return "\n".join(parts)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def compare(out: str) -> dict[str, Any]:
  """Relative differences of the losses and of all parameters (global L2)."""
  with open(os.path.join(out, "reference.json")) as f:
    ref_losses = np.asarray(json.load(f)["losses"])
  with open(os.path.join(out, "workers.json")) as f:
    losses = np.asarray(json.load(f)["losses"])
  ref = np.load(os.path.join(out, "reference_params.npz"))
  got = np.load(os.path.join(out, "workers_params.npz"))
  if sorted(ref.files) != sorted(got.files):
    raise CheckFailed("parameter trees differ between the runs")
  ref_flat = np.concatenate([ref[k].ravel() for k in sorted(ref.files)])
  got_flat = np.concatenate([got[k].ravel() for k in sorted(ref.files)])
  worst = max(ref.files, key=lambda k: _relative(ref[k], got[k]))
  return {"losses": losses.tolist(), "reference_losses": ref_losses.tolist(),
          "loss_rel_diff": _relative(ref_losses, losses),
          "param_rel_diff": _relative(ref_flat, got_flat),
          "worst_leaf": worst, "worst_leaf_rel_diff": _relative(ref[worst],
                                                                got[worst])}


def run_check(args: argparse.Namespace) -> dict[str, Any]:
  """Builds the data, runs workers and reference side by side, compares.

  Raises CheckFailed (with every process's output) on a failure.
  """
  os.makedirs(args.workdir, exist_ok=True)
  config = check_config(args)
  demo_data.ensure_synthetic_shards(config, args.workdir)  # once, for all
  out = tempfile.mkdtemp(prefix="run_", dir=args.workdir)
  coordinator = f"127.0.0.1:{free_port()}"
  started = time.time()
  children = [_spawn(args, "worker", f"worker_{i}", out,
                     args.devices_per_process,
                     [f"--coordinator={coordinator}", f"--process_id={i}"])
              for i in range(args.processes)]
  children.append(_spawn(args, "reference", "reference", out,
                         args.processes * args.devices_per_process, []))
  try:
    deadline = started + args.timeout
    for process, _, _ in children:
      process.wait(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired as error:
    for process, _, _ in children:
      if process.poll() is None:
        process.kill()
        process.wait()
    raise CheckFailed(f"timed out after {args.timeout} s:\n"
                      f"{_outputs(children)}") from error
  finally:
    for _, log, _ in children:
      log.close()
  if any(p.returncode != 0 for p, _, _ in children):
    raise CheckFailed(f"a process failed:\n{_outputs(children)}")
  result = compare(out)
  result.update(seconds=time.time() - started, out=out,
                processes=args.processes,
                devices_per_process=args.devices_per_process)
  if not (result["loss_rel_diff"] <= args.rtol and
          result["param_rel_diff"] <= args.rtol):
    raise CheckFailed(f"multi-process run differs (rtol {args.rtol}): "
                      f"{json.dumps(result, indent=1)}\n{_outputs(children)}")
  return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="forced CPU devices in each worker")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=4, help="global")
  parser.add_argument("--param_sharding", default="replicated",
                      choices=("replicated", "fsdp"))
  parser.add_argument("--rtol", type=float, default=1e-5)
  parser.add_argument("--timeout", type=float, default=WORKER_TIMEOUT_S,
                      help="seconds for all processes together")
  parser.add_argument("--fast_compile", action=argparse.BooleanOptionalAction,
                      default=True, help="XLA optimisation level 0 (all "
                      "processes alike)")
  parser.add_argument("--workdir", default=os.path.join(
      tempfile.gettempdir(), "diffsal_multiprocess"))
  # Set by the check for the processes it starts.
  parser.add_argument("--role", default="check",
                      choices=("check", "worker", "reference"),
                      help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  parser.add_argument("--coordinator", help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.role == "worker":
    run_worker(args)
    return 0
  if args.role == "reference":
    run_reference(args)
    return 0
  try:
    result = run_check(args)
  except CheckFailed as error:
    print(f"FAILED: {error}", file=sys.stderr)
    return 1
  print(json.dumps(result, indent=1))
  print(f"OK: {args.processes} processes x {args.devices_per_process} "
        f"device(s) match one process (loss rel diff "
        f"{result['loss_rel_diff']:.2e}, params {result['param_rel_diff']:.2e}) "
        f"in {result['seconds']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
