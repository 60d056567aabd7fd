r"""Speed and size of the train step and the sampler, on random inputs.

  python -m tools.benchmarks.train_step --config=configs/av_finetune.py \
      [--size=published|tiny|config] [--variant=av|visual] [--batch=1] \
      [--repeats=3] [--sampling_steps=1,4] [--dtype=bfloat16] \
      [--peak_tflops=989] [--noloader] [--profile_top=15] [--json=bench.json] \
      [--reference=.ref/diff_sal [--reference_threads=2]]

Builds the model of `--config` (`--size=published` / `tiny` swap in
`published_model_config` / `tiny_model_config`; `config`, the default, keeps
the config's own, e.g. the demo model of configs/demo.py) on one device,
then reports:
- the sampler (validation / prediction path) per DDIM step count: compile
  time and the median of `--repeats` timed calls (after one warm-up call);
- the jitted train step (`train_state.jit_train_step`, frozen subtrees and
  all): compile time, median / min / max of `--repeats` steps, FLOPs per
  step from XLA's cost analysis and the implied utilisation of the device's
  peak (`--peak_tflops`; known GPUs/TPUs have a default, CPUs print n/a);
- trainable and frozen parameter counts; XLA's estimate of the buffers one
  call needs; the peak resident host memory (ru_maxrss) after the sampler,
  after compiling the train step and at the end (the sampler runs first, so
  the first is the inference peak), and the device's peak memory where the
  backend reports it;
- clips/s of the grain loader at the model's clip size on a small synthetic
  release (`tools.benchmarks.loader_speed`, JPEG shards; --noloader
  skips it).
`--reference` (a checkout of the published code; the `torch` extra) also
times the published PyTorch AV model (same shapes, random weights) in a
child process, call by call in turn with ours (tools/benchmarks/
published_worker.py: train step, sampler, peak memory) and adds the ratios,
the CPU and both thread counts; compare with `--size=published`.
Prints a Markdown table and writes everything to `--json`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from diffsal_jax.models import diffusion
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.models import api as model_lib
from diffsal_jax.training import train_state as ts
from diffsal_jax.training import validation
from tools.benchmarks import loader_speed
from tools.benchmarks import published_worker
from tools.benchmarks import xla_profile
from diffsal_jax.models import config as model_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", "configs/av_finetune.py", "Experiment config file.",
    lock_config=False)
flags.DEFINE_enum("size", "config", ("config", "published", "tiny"),
                  "Model: the config's own, or the published / tiny one.")
flags.DEFINE_enum("variant", None, ("av", "visual"),
                  "Override the config's model variant.")
flags.DEFINE_integer("batch", 1, "Clips per step (published timing: 1).")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement.")
flags.DEFINE_list("sampling_steps", ["1", "4"], "DDIM step counts to time.")
flags.DEFINE_string("dtype", "", "Override config.model.dtype (compute).")
flags.DEFINE_float("peak_tflops", None, "Device peak for the utilisation "
                   "(default: a per-device table, bf16 dense; n/a on CPU).")
flags.DEFINE_bool("loader", True, "Also time the grain loader.")
flags.DEFINE_integer("profile_top", 0, "Profile one more train step and list "
                     "the N XLA ops that take the most time (0: skip).")
flags.DEFINE_string("json", "benchmark.json", "Results file.")
flags.DEFINE_string("reference", "", "Checkout of the published code "
                    "(junwenxiong/diff_sal): also time the published PyTorch "
                    "model in this run, in turn with ours, and print the ratios.")
flags.DEFINE_integer("reference_threads", None, "torch threads for the "
                     "published model (default: all cores, as XLA uses).")

# Dense bf16 peak TFLOP/s by device_kind substring (vendor data sheets).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
               "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def benchmark_config(config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """The experiment config with the model chosen by the flags, on 1 device."""
  config = ml_collections.ConfigDict(config.to_dict())
  variant = FLAGS.variant or config.model.variant
  if FLAGS.size == "published":
    config.model = model_config.published_model_config(variant)
  elif FLAGS.size == "tiny":
    config.model = model_config.tiny_model_config(variant)
  config.model.variant = variant
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  if variant == "visual" and config.data.dataset == "av":
    config.data.dataset = "dhf1k"   # only the normalisation table differs
  config.batch_size = FLAGS.batch
  config.num_train_steps = 1000
  return config


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  m, b = config.model, FLAGS.batch
  h, w = m.image_size
  if config.data.image_dtype == "uint8":
    img = rng.integers(0, 256, (b, m.clip_len, h, w, 3), dtype=np.uint8)
  else:
    img = rng.standard_normal((b, m.clip_len, h, w, 3), np.float32)
  batch = {"img": img, "map": rng.random((b, h, w), np.float32)}
  if m.variant == "av":
    batch["audio"] = rng.standard_normal(
        (b, batch_lib.num_audio_patches(m), *m.audio_size), np.float32)
  return batch


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def device_peak_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 30


def count_params(params, frozen: tuple[str, ...]) -> dict[str, int]:
  counts = {"trainable": 0, "frozen": 0}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    key = "frozen" if ts.is_frozen_path(path, frozen) else "trainable"
    counts[key] += int(np.prod(x.shape))
  return counts


def compile_timed(fn, *args) -> tuple[Any, float]:
  started = time.perf_counter()
  compiled = fn.lower(*args).compile()
  elapsed = time.perf_counter() - started
  ts.release_freed_host_memory()  # as the trainer does
  return compiled, elapsed


def time_calls(call: Callable[[], Any], repeats: int,
               between: Callable[[], Any] | None = None
               ) -> tuple[list[float], list[float]]:
  """Wall and process CPU seconds per call (each blocked until ready), after
  one warm-up call; `between` (the published code's turn) runs before each.
  On a shared host the CPU seconds (all threads) vary far less with other
  load than the wall time does."""
  jax.block_until_ready(call())
  wall, cpu = [], []
  for _ in range(repeats):
    if between:
      between()
    started, started_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(call())
    wall.append(time.perf_counter() - started)
    cpu.append(time.process_time() - started_cpu)
  return wall, cpu


def flops_of(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):   # older jax: one dict per module
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def buffers_gb(compiled) -> float | None:
  """XLA's own estimate of the memory one call needs: arguments, outputs
  (less what they alias, e.g. the donated state) and temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes -
           m.alias_size_in_bytes + m.temp_size_in_bytes)
  return total / 2 ** 30


def device_peak_tflops() -> float | None:
  if FLAGS.peak_tflops is not None:
    return FLAGS.peak_tflops
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)


def bench_sampler(model_def, params, batch_stats, config, mesh, batch,
                  steps: int, between=None) -> dict[str, Any]:
  config = ml_collections.ConfigDict(config.to_dict())
  config.diffusion.sampling_steps = steps
  sampler = validation.make_sampler(model_def, config, mesh)
  inputs = {k: v for k, v in batch.items() if k != "map"}
  args = (params, batch_stats, inputs, jax.random.key(0))
  compiled, compile_s = compile_timed(sampler, *args)
  times, cpu = time_calls(lambda: compiled(*args), FLAGS.repeats, between)
  return {"steps": steps, "compile_s": compile_s,
          "median_s": statistics.median(times), "times_s": times,
          "cpu_median_s": statistics.median(cpu),
          "flops": flops_of(compiled), "buffers_gb": buffers_gb(compiled)}


def bench_train(model_def, params, batch_stats, config, mesh, batch,
                between=None) -> tuple[dict[str, Any], Callable[[], Any], Any]:
  """Times the train step; returns the results, a one-step closure and the
  compiled step."""
  lr_fn = ts.learning_rate_fn(config, steps_per_epoch=1000)
  tx = ts.make_optimizer(config, lr_fn)
  state = ts.create_train_state(params, batch_stats, tx, config.seed)
  shardings = ts.state_sharding(state, mesh, "replicated")
  state = jax.device_put(state, shardings)
  step = ts.jit_train_step(
      model_def, tx, lr_fn,
      diffusion.make_schedule(config.diffusion.num_timesteps), config,
      shardings, mesh)
  batch = jax.device_put(batch, ts.batch_sharding(mesh))
  compiled, compile_s = compile_timed(step, state, batch)
  # XLA's compiler can need more host memory than running the step does.
  rss_after_compile = peak_rss_gb()
  holder = {"state": state}

  def one_step():
    # The step donates its input state, so keep only the newest.
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics

  times, cpu = time_calls(one_step, FLAGS.repeats, between)
  flops = flops_of(compiled)
  median = statistics.median(times)
  peak = device_peak_tflops()
  result = {"compile_s": compile_s, "median_s": median, "min_s": min(times),
            "max_s": max(times), "times_s": times,
            "cpu_median_s": statistics.median(cpu), "flops": flops,
            "achieved_tflops": flops / median / 1e12 if flops else None,
            "peak_tflops": peak, "buffers_gb": buffers_gb(compiled),
            "rss_after_compile_gb": rss_after_compile,
            "utilisation": flops / median / (peak * 1e12)
                           if flops and peak else None}
  return result, one_step, compiled


def bench_loader(config) -> dict[str, float]:
  m = config.model
  with tempfile.TemporaryDirectory() as workdir:
    report = loader_speed.main([
        f"--layout={'av' if m.variant == 'av' else 'dhf1k'}", "--videos=2",
        "--frames=96", f"--clip_len={m.clip_len}", f"--height={m.image_size[0]}",
        f"--width={m.image_size[1]}", "--workers=2", "--batch_size=2",
        "--batches=4", "--variants=jpeg", f"--workdir={workdir}",
        f"--json={os.path.join(workdir, 'loader.json')}"])
  return report["clips_per_s"]


def _fmt(value, spec: str = ".2f", unit: str = "") -> str:
  return "n/a" if value is None else f"{value:{spec}}{unit}"


def markdown(r: dict[str, Any]) -> str:
  t = r["train"]
  rows = [("device", r["device"]),
          ("model", f"{r['size']} {r['variant']}, {r['clip']}, batch "
                    f"{r['batch']}, {r['dtype']}"),
          ("parameters (trainable / frozen)",
           f"{r['params']['trainable'] / 1e6:.2f} M / "
           f"{r['params']['frozen'] / 1e6:.2f} M"),
          ("train step median (min-max)",
           f"{t['median_s']:.3f} s ({t['min_s']:.3f}-{t['max_s']:.3f})"),
          ("train step process CPU time, median", _fmt(
              t.get("cpu_median_s"), ".3g", " s (all threads)")),
          ("train step compile", f"{t['compile_s']:.1f} s"),
          ("train step FLOPs (XLA)", _fmt(t["flops"] and t["flops"] / 1e9,
                                          ".1f", " GFLOP")),
          ("achieved / peak", f"{_fmt(t['achieved_tflops'], '.4f')} / "
                              f"{_fmt(t['peak_tflops'], '.0f')} TFLOP/s"),
          ("utilisation", _fmt(t["utilisation"] and 100 * t["utilisation"],
                               ".1f", " %"))]
  for s in r["sampler"]:
    rows.append((f"inference, {s['steps']} DDIM step(s), median",
                 f"{s['median_s']:.3f} s (min {min(s['times_s']):.3f}, CPU "
                 f"{_fmt(s.get('cpu_median_s'), '.3g')} s, compile "
                 f"{s['compile_s']:.1f} s)"))
  rows += [("XLA buffers: train step / 1-step inference",
            f"{_fmt(t['buffers_gb'], '.2f')} / "
            f"{_fmt(r['sampler'][0]['buffers_gb'], '.2f')} GiB"),
           ("peak host RSS: inference / train compile / overall",
            f"{r['rss_after_sampler_gb']:.2f} / {t['rss_after_compile_gb']:.2f}"
            f" / {r['rss_peak_gb']:.2f} GiB"),
           ("peak device memory", _fmt(r["device_peak_gb"], ".2f", " GiB")),
           ("host load average (1 min) at start / end",
            f"{r['load_average']['start'][0]:.1f} / "
            f"{r['load_average']['end'][0]:.1f}")]
  for name, rate in (r.get("loader_clips_per_s") or {}).items():
    rows.append((f"loader {name}", f"{rate:.2f} clips/s"))
  if r.get("published"):
    rows += published_worker.comparison_rows(r, r["published"])
  lines = ["| metric | value |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in rows]
  for op in r.get("top_ops") or []:
    lines.append(f"| op {op['opcode']} `{op['source']}` | "
                 f"{op['seconds']:.3f} s ({op['calls']} calls) |")
  return "\n".join(lines)


def start_published(config) -> published_worker.PublishedWorker | None:
  """The published model's child process, or None without --reference."""
  if not FLAGS.reference:
    return None
  m = config.model
  if m.variant != "av":
    raise app.UsageError("--reference times the published audio-visual model; "
                         "use --variant=av (or an AV config)")
  return published_worker.PublishedWorker(
      FLAGS.reference, batch=FLAGS.batch, threads=FLAGS.reference_threads,
      shape=(m.clip_len, *m.image_size, batch_lib.num_audio_patches(m),
             *m.audio_size), log_path=FLAGS.json + ".published.log")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  load_at_start = os.getloadavg()   # other work on the host skews timings
  config = benchmark_config(FLAGS.config)
  m = config.model
  device = jax.devices()[0]
  mesh = ts.make_mesh(1)
  started = time.perf_counter()
  model = model_lib.build_model(m, seed=config.seed)
  model_def, params, batch_stats = ts.split_model(model, m.variant == "av")
  del model
  build_s = time.perf_counter() - started
  batch = random_batch(config, np.random.default_rng(0))
  published = start_published(config)
  turn = published_worker.Turns(published)
  sampler = [bench_sampler(model_def, params, batch_stats, config, mesh, batch,
                           int(k), turn("sample", k)) for k in FLAGS.sampling_steps]
  rss_after_sampler = peak_rss_gb()
  train, one_step, compiled_step = bench_train(
      model_def, params, batch_stats, config, mesh, batch, turn("train"))
  results = {
      "device": f"{device.device_kind} ({device.platform}, "
                f"{os.cpu_count()} host cores, {platform.node()})",
      "size": FLAGS.size, "variant": m.variant, "batch": FLAGS.batch,
      "clip": f"{m.clip_len}x{m.image_size[0]}x{m.image_size[1]}",
      "dtype": m.dtype, "build_s": build_s,
      "params": count_params(params, tuple(config.frozen_subtrees)),
      "train": train, "sampler": sampler,
      "rss_after_sampler_gb": rss_after_sampler, "rss_peak_gb": peak_rss_gb(),
      "device_peak_gb": device_peak_gb(),
      "load_average": {"start": load_at_start, "end": os.getloadavg()}}
  if published:
    results["published"] = {**published.info, **published.close(),
                            **turn.results,
                            "cpu": published_worker.cpu_description()}
  if FLAGS.profile_top:
    results["top_ops"] = xla_profile.top_ops(one_step, compiled_step.as_text(),
                                 FLAGS.profile_top)
  if FLAGS.loader:
    results["loader_clips_per_s"] = bench_loader(config)
  table = markdown(results)
  print(table)
  with open(FLAGS.json, "w") as f:
    json.dump({**results, "markdown": table}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
