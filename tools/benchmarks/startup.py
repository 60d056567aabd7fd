r"""Start-up cost: compile times, and the README demo's time to its first step.

  python -m tools.benchmarks.startup [--sizes=demo,published] \
      [--programs=init,train_step,sampler] [--demo_runs=cold,warm] \
      [--json=startup.json]

Two parts, each in fresh child processes (nothing compiled or cached
before), with the caller's XLA_FLAGS (none: XLA's defaults) and the
compilation cache off unless said:
- per model size (`demo`: configs/demo.py's visual model, batch 8, the
  sampler at eval batch 16; `published`: the published audio-visual model,
  batch 1 for both, as tools/benchmarks/train_step.py times them): seconds to trace,
  lower and compile the initialiser (`model_setup.initialised_model`'s
  program, with the trainer's compile options), the train step
  (`train_state.jit_train_step`, frozen subtrees and all) and the 1-step
  DDIM sampler (`validation.make_sampler`), plus the StableHLO size of each;
- the README demo (`python -m diffsal_jax.main --config=configs/demo.py`),
  each run in a new workdir: wall seconds from launch until its first
  training step has run, with an empty compilation cache (`cold`) and then
  with the cache the cold run filled (`warm`). The run writes its start-up
  record (<workdir>/startup.jsonl: compile seconds, cache reads and writes)
  after that step; the benchmark then stops it.
Prints a Markdown table and writes everything to --json. Quote figures
from one run (docs/performance.md, "Start-up").
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
SIZES = ("demo", "published")
PROGRAMS = ("init", "train_step", "sampler")
DEMO_RUNS = ("cold", "warm")
STARTUP_FILE = "startup.jsonl"     # training/train_logging.STARTUP_FILE
# An older trainer without the start-up record: its progress bar's first step.
_FIRST_STEP_BAR = re.compile(r"train:\s+\d+%\|.*\| 1/\d+")

flags.DEFINE_list("sizes", list(SIZES), f"Model sizes to compile: {SIZES}.")
flags.DEFINE_list("programs", list(PROGRAMS), f"Programs to compile: "
                  f"{PROGRAMS}.")
flags.DEFINE_list("demo_runs", list(DEMO_RUNS), "README demo runs to time, "
                  "in order, sharing one cache folder that starts empty "
                  "(so list 'cold' first; '' for none).")
flags.DEFINE_integer("timeout", 900, "Seconds a child may take.")
flags.DEFINE_string("json", "startup.json", "Results file.")
flags.DEFINE_enum("child", None, SIZES, "Internal: compile one size and "
                  "print its JSON line.")
FLAGS = flags.FLAGS


# ------------------------------------------------------ compile, in a child --

def _compile_one_size(size: str, programs: list[str]) -> dict:
  """Trace / lower / compile seconds of init, train step and sampler."""
  import jax   # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import av_finetune  # pylint: disable=import-outside-toplevel
  from configs import demo  # pylint: disable=import-outside-toplevel
  from diffsal_jax.data import batch as batch_lib  # pylint: disable=import-outside-toplevel
  from diffsal_jax.models import diffusion  # pylint: disable=import-outside-toplevel
  from diffsal_jax.training import model_setup  # pylint: disable=import-outside-toplevel
  from diffsal_jax.training import train_state as ts  # pylint: disable=import-outside-toplevel
  from diffsal_jax.training import validation  # pylint: disable=import-outside-toplevel

  if size == "demo":
    config, batch = demo.get_config(), None
  else:
    config, batch = av_finetune.get_config(), 1
  config.mesh_data_axis = 1
  config.batch_size = batch or config.batch_size
  config.eval_batch_size = batch or config.eval_batch_size
  m = config.model
  model = model_setup.abstract_model(config)
  h, w = m.image_size

  def shapes(b: int, with_map: bool) -> dict:
    out = {"img": jax.ShapeDtypeStruct((b, m.clip_len, h, w, 3), np.uint8)}
    if with_map:
      out["map"] = jax.ShapeDtypeStruct((b, h, w), np.float32)
    if m.variant == "av":
      out["audio"] = jax.ShapeDtypeStruct(
          (b, batch_lib.num_audio_patches(m), *m.audio_size), np.float32)
    return out

  def timed(jitted, *args, options=None) -> dict:
    started = time.perf_counter()
    traced = jitted.trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile(options)
    done = time.perf_counter()
    return {"trace_s": traced_at - started, "lower_s": lowered_at - traced_at,
            "compile_s": done - lowered_at,
            "stablehlo_lines": lowered.as_text().count("\n")}

  results = {"size": size, "variant": m.variant,
             "clip": f"{m.clip_len}x{h}x{w}", "batch": config.batch_size,
             "eval_batch": config.eval_batch_size,
             "device": f"{jax.devices()[0].device_kind}, {os.cpu_count()} "
                       f"cores, {platform.processor() or platform.machine()}"}
  if "init" in programs:
    # As the trainer compiles it (model_setup.initialised_model).
    results["init"] = timed(model_setup.initialiser(config, model),
                            options=model_setup.one_shot_compile_options())
  if "train_step" in programs:
    lr_fn = ts.learning_rate_fn(config, steps_per_epoch=1000)
    tx = ts.make_optimizer(config, lr_fn)
    state = jax.eval_shape(lambda p, b: ts.create_train_state(
        p, b, tx, config.seed), model.params, model.batch_stats)
    shardings = ts.state_sharding(state, model.mesh, "replicated")
    step = ts.jit_train_step(
        model.model_def, tx, lr_fn,
        diffusion.make_schedule(config.diffusion.num_timesteps), config,
        shardings, model.mesh)
    results["train_step"] = timed(step, state, shapes(config.batch_size, True))
  if "sampler" in programs:
    sampler = validation.make_sampler(model.model_def, config, model.mesh)
    key = jax.eval_shape(lambda: jax.random.key(0))
    results["sampler"] = timed(sampler, model.params, model.batch_stats,
                               shapes(config.eval_batch_size, False), key)
  return results


def _child_env(cache: str = "") -> dict:
  # The caller's XLA_FLAGS stay: they are part of what is measured.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = cache
  else:
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  return env


def compile_size(size: str) -> dict:
  """Runs `--child=size` in a fresh process; its JSON result."""
  result = subprocess.run(
      [sys.executable, "-m", "tools.benchmarks.startup", f"--child={size}",
       f"--programs={','.join(FLAGS.programs)}"],
      cwd=os.getcwd(), env=_child_env(), capture_output=True, text=True,
      timeout=FLAGS.timeout, check=False)
  if result.returncode:
    raise RuntimeError(f"--child={size} exited {result.returncode}:\n"
                       f"{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------- the demo --

def demo_first_step(workdir: str, cache: str) -> dict:
  """Launches the README demo in `workdir`; seconds until its first step."""
  # The cache through JAX's variable, which config.compilation_cache's
  # default ('auto') follows, and which an older trainer also honours.
  argv = [sys.executable, "-m", "diffsal_jax.main",
          "--config=configs/demo.py", f"--workdir={workdir}"]
  record_path = os.path.join(workdir, STARTUP_FILE)
  log_path = workdir + ".log"
  started = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(argv, cwd=os.getcwd(), env=_child_env(cache),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
      while True:
        if os.path.exists(record_path):
          with open(record_path) as f:
            text = f.read()
          if "\n" in text:   # the first record, once written whole
            record = json.loads(text.split("\n", 1)[0])
            break
        with open(log_path, errors="replace") as f:
          if _FIRST_STEP_BAR.search(f.read()):
            record = {}
            break
        if process.poll() is not None:
          raise RuntimeError(f"the demo exited {process.returncode} before "
                             f"its first step; see {log_path}")
        if time.perf_counter() - started > FLAGS.timeout:
          raise TimeoutError(f"no first step after {FLAGS.timeout} s")
        time.sleep(0.05)
      wall = time.perf_counter() - started
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait()
  return {"wall_to_first_step_s": wall, **record}


# ------------------------------------------------------------- report --

def markdown(results: dict) -> str:
  lines = ["| program | size | trace s | lower s | compile s | StableHLO "
           "lines |", "|---|---|---|---|---|---|"]
  for r in results["compile"]:
    for program in (p for p in PROGRAMS if p in r):
      t = r[program]
      batch = r["eval_batch"] if program == "sampler" else r["batch"]
      lines.append(f"| {program} | {r['size']} {r['variant']} {r['clip']} "
                   f"x{batch} | {t['trace_s']:.1f} | {t['lower_s']:.1f} | "
                   f"{t['compile_s']:.1f} | {t['stablehlo_lines']:,} |")
  if results["demo"]:
    lines += ["", "| README demo | to first step s | train step compile s | "
              "cache reads / writes |", "|---|---|---|---|"]
    for name, r in results["demo"].items():
      compile_s = r.get("train_step_compile_seconds")
      cache = (f"{r['cache_hits']} / {r['cache_writes']}"
               if "cache_hits" in r else "n/a")
      lines.append(f"| {name} | {r['wall_to_first_step_s']:.1f} | "
                   f"{'n/a' if compile_s is None else f'{compile_s:.1f}'} | "
                   f"{cache} |")
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.child:
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_enable_compilation_cache", False)
    print(json.dumps(_compile_one_size(FLAGS.child, FLAGS.programs)))
    return
  unknown = (set(FLAGS.sizes) - set(SIZES) | set(FLAGS.demo_runs) -
             set(DEMO_RUNS) | set(FLAGS.programs) - set(PROGRAMS))
  if unknown:
    raise app.UsageError(f"unknown --sizes / --demo_runs values {unknown}")
  results = {"host": f"{platform.node()}, {os.cpu_count()} cores",
             "load_average_start": os.getloadavg(),
             "compile": [compile_size(size) for size in FLAGS.sizes],
             "demo": {}}
  with tempfile.TemporaryDirectory(prefix="startup_bench_") as root:
    cache = os.path.join(root, "cache")
    for k, name in enumerate(FLAGS.demo_runs):
      results["demo"][name] = demo_first_step(
          os.path.join(root, f"demo_{k}_{name}"), cache)
  results["load_average_end"] = os.getloadavg()
  table = markdown(results)
  print(table)
  with open(FLAGS.json, "w") as f:
    json.dump({**results, "markdown": table}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
