"""The sections of `tools/device_check.py`; each runs in its own child process.

`run_section(args)` runs the one named by `args.section` (`env`,
`jax_train_b{B}_{dtype}`, `torch_train_b{B}`, `jax_sampler`, `loader`) and
writes its result dict as JSON to `args.section_out`; the driver in
`device_check.py` starts the children, enforces the budget and writes the
report.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import platform
import subprocess
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent

# Dense peaks in TFLOP/s by device_kind substring (NVIDIA data sheets; H200
# bf16 measured here at ~790 on 8192^3 matmuls). float32 runs use TF32.
PEAK_TFLOPS = {"H200": {"bfloat16": 989.4, "float32": 494.7},
               "H100": {"bfloat16": 989.4, "float32": 494.7},
               "A100": {"bfloat16": 312.0, "float32": 156.0},
               "L4": {"bfloat16": 121.0, "float32": 60.0}}

# The packages our import chain needs beyond the GPU image's (the wheels in .whl/).
NEEDED_IMPORTS = ("ml_collections", "grain", "array_record", "simplejpeg",
                  "portpicker", "av", "soundfile")


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  return next((v[dtype] for k, v in PEAK_TFLOPS.items() if k in device_kind), None)


def section_env(args) -> dict[str, Any]:
  import importlib.metadata as md
  out: dict[str, Any] = {"python": platform.python_version(),
                         "host": platform.node(), "cpus": os.cpu_count()}
  versions = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
               "grain", "ml_collections", "av", "torch", "timm", "einops"):
    try:
      versions[name] = md.version(name)
    except md.PackageNotFoundError:
      versions[name] = None
  out["versions"] = versions
  imports = {}
  for module in (*NEEDED_IMPORTS, "tools.benchmarks.train_step",
                 "tools.benchmarks.loader_speed"):
    try:
      importlib.import_module(module)
      imports[module] = "ok"
    except Exception as e:   # report every failure, not just the first
      imports[module] = f"{type(e).__name__}: {e}"
  out["imports"] = imports
  import jax
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  out.update(device_kind=device.device_kind, platform=device.platform,
             device_count=jax.device_count(),
             device_memory_gb=stats.get("bytes_limit", 0) / 2 ** 30 or None,
             matmul_precision=str(getattr(jax.config, "jax_default_matmul_precision",
                                          "n/a")))
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                          "clocks.max.sm", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    out["nvidia_smi"] = f"n/a ({e})"
  return out


def _benchmark_flags(args, batch: int, dtype: str, steps=("1",)):
  """Parses `tools.benchmarks.train_step`'s flags so its functions can be reused."""
  from tools.benchmarks import train_step as bench
  import jax
  kind = jax.devices()[0].device_kind
  argv = ["device_check", f"--config={REPO / 'configs' / 'av_finetune.py'}",
          f"--size={args.size}", "--variant=av", f"--batch={batch}",
          f"--repeats={args.repeats}", f"--dtype={dtype}", "--noloader",
          f"--sampling_steps={','.join(steps)}", "--json=/dev/null"]
  peak = peak_tflops(kind, dtype)
  if peak:
    argv.append(f"--peak_tflops={peak}")
  bench.FLAGS(argv)
  return bench


def _build(bench, overrides: list[str]):
  import numpy as np
  from diffsal_jax.models import api as model_lib
  from diffsal_jax.training import train_state as ts
  config = bench.benchmark_config(bench.FLAGS.config)
  for override in filter(None, overrides):
    key, value = override.split("=", 1)
    node = config.model
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(
        node[leaf], str) else value
  started = time.perf_counter()
  model = model_lib.build_model(config.model, seed=config.seed)
  model_def, params, batch_stats = ts.split_model(model, True)
  build_s = time.perf_counter() - started
  batch = bench.random_batch(config, np.random.default_rng(0))
  return config, model_def, params, batch_stats, ts.make_mesh(1), batch, build_s



def section_jax_train(args, batch: int, dtype: str) -> dict[str, Any]:
  bench = _benchmark_flags(args, batch, dtype)
  config, model_def, params, batch_stats, mesh, data, build_s = _build(bench, args.model_override)
  result, _, _ = bench.bench_train(model_def, params, batch_stats, config, mesh, data)
  m = config.model
  result.update(batch=batch, dtype=dtype, build_s=build_s,
                clip=f"{m.clip_len}x{m.image_size[0]}x{m.image_size[1]}",
                params=bench.count_params(params, tuple(config.frozen_subtrees)),
                clips_per_s=batch / result["median_s"],
                device_peak_gb=bench.device_peak_gb())
  return result


def section_jax_sampler(args, batch: int, dtype: str) -> dict[str, Any]:
  bench = _benchmark_flags(args, batch, dtype, tuple(args.sampling_steps))
  config, model_def, params, batch_stats, mesh, data, build_s = _build(bench, args.model_override)
  runs = []
  for steps in args.sampling_steps:
    r = bench.bench_sampler(model_def, params, batch_stats, config, mesh, data, int(steps))
    r["clips_per_s"] = batch / r["median_s"]
    runs.append(r)
  return {"batch": batch, "dtype": dtype, "build_s": build_s, "runs": runs,
          "device_peak_gb": bench.device_peak_gb()}


def section_torch_train(args, batch: int) -> dict[str, Any]:
  try:
    import torch
  except ImportError as e:
    return {"skipped": f"torch is not importable here ({e}); the published "
                       "PyTorch step needs a torch with CUDA"}
  from tools import published_reference as pr
  cuda = torch.cuda.is_available()
  torch.backends.cuda.matmul.allow_tf32 = True   # float32 = TF32, as JAX's default
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  started = time.perf_counter()
  ref = pr.load_reference(args.reference)
  out: dict[str, Any] = {"build_s": time.perf_counter() - started,
                         "params_m": ref["params_m"], "torch": torch.__version__,
                         "device": torch.cuda.get_device_name() if cuda else "cpu",
                         "tf32": True, "runs": []}
  for dtype in args.dtypes:
    try:
      # Always the published shape (16x224x384, 9 audio patches): the
      # published model is built at its own size whatever --size says.
      r = pr.time_train_step(ref, batch=batch, dtype=dtype, repeats=args.repeats,
                             device="cuda" if cuda else "cpu")
      peak = peak_tflops(out["device"], dtype)
      r["peak_tflops"] = peak
      r["utilisation"] = r["achieved_tflops"] / peak if peak and r["achieved_tflops"] else None
    except Exception as e:   # e.g. out of memory at bf16 or b8: keep the other
      r = {"batch": batch, "dtype": dtype, "error": f"{type(e).__name__}: {e}"}
      if cuda:
        torch.cuda.empty_cache()
    out["runs"].append(r)
  return out


def section_loader(args) -> dict[str, Any]:
  import tempfile
  from tools.benchmarks import loader_speed
  from diffsal_jax.models import config as model_config
  m = (model_config.published_model_config("av") if args.size == "published"
       else model_config.tiny_model_config("av"))
  raw = (360, 640) if args.size == "published" else (m.image_size[0] + 8, m.image_size[1] + 16)
  with tempfile.TemporaryDirectory() as workdir:
    report = loader_speed.main([
        "--layout=av", "--videos=2", f"--frames={max(3 * m.clip_len, 24)}",
        f"--clip_len={m.clip_len}", f"--height={m.image_size[0]}",
        f"--width={m.image_size[1]}", f"--raw_height={raw[0]}", f"--raw_width={raw[1]}",
        f"--workers={args.loader_workers}", "--batch_size=4",
        f"--batches={args.loader_batches}", "--variants=jpeg_uint8",
        f"--modes={args.loader_modes}", f"--workdir={workdir}",
        f"--json={os.path.join(workdir, 'loader.json')}"])
  return {"workers": args.loader_workers, "clip": f"{m.clip_len}x{m.image_size[0]}x"
          f"{m.image_size[1]}", "raw": f"{raw[0]}x{raw[1]}",
          "clips_per_s": report["clips_per_s"]}


def run_section(args) -> None:
  """Child process: runs one section, writes its result to --section_out."""
  name, parts = args.section, args.section.split("_")
  if name == "env":
    result = section_env(args)
  elif name.startswith("jax_train_b"):
    result = section_jax_train(args, int(parts[2][1:]), parts[3])
  elif name.startswith("torch_train_b"):
    result = section_torch_train(args, int(parts[2][1:]))
  elif name == "jax_sampler":
    result = section_jax_sampler(args, args.batches[0], args.sampler_dtype)
  elif name == "loader":
    result = section_loader(args)
  else:
    raise ValueError(f"unknown section {name!r}")
  tmp = pathlib.Path(args.section_out + ".tmp")
  tmp.write_text(json.dumps(result, default=str))
  os.replace(tmp, args.section_out)
