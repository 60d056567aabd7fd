r"""One-call device check: train step, sampler and loader speed of the
published AV model on one accelerator, next to the published PyTorch model.

  python3 tools/device_check.py --out=$OUT --reference=.ref/diff_sal \
      [--budget_s=420] [--batches=4,8] [--dtypes=float32,bfloat16] \
      [--sampling_steps=1,4] [--repeats=10] [--size=published|tiny] \
      [--accelerators=4] [--mfu=0.4] [--headroom_device=H200]

Sections, in order of value (each in its own process, with its own time
guard, skipped and recorded as such when the budget runs low):
  env                   device, memory, versions; which imports work
  jax_train_b{B}_{dt}   our jitted train step (`tools.benchmarks.train_step`):
                        median step, clips/s, XLA cost-analysis FLOPs and
                        utilisation of the device's peak for that dtype,
                        peak device memory
  torch_train_b{B}      the published PyTorch train step (tools/
                        published_reference.py) at the same batch, float32
                        (TF32) and bfloat16 autocast
  jax_sampler           our sampler's clips/s at each DDIM step count
  loader                the grain loader's clips/s on a small synthetic
                        release (`tools.benchmarks.loader_speed`),
                        against what the fastest train step consumes
Then the loader headroom (`loader_headroom`): the clips/s that --accelerators
such devices of one host consume, as measured and as estimated from XLA's
FLOPs at --mfu of the device's peak (an H200's where the peak is unknown, as
on a CPU), and the loader workers that takes at the measured rate per worker.
Results are rewritten atomically to OUT/device_check.json after every
section (a killed run keeps what finished), every section's output goes to
OUT/device_check.log, and a Markdown table is printed at the end.

Why one process per section: each gets a clean peak-memory reading (XLA's
and torch's allocators keep their pools for the life of the process), a hung
compile or an out-of-memory error costs only its section, the budget is
enforced by killing the process, and JAX and torch never load their CUDA
libraries into one process. JAX keeps its defaults (preallocation, as the
trainer runs); torch runs only after the JAX process has exited.

float32 means TF32 matrix units on GPUs for both frameworks: JAX with
`jax_default_matmul_precision='default'` (XLA's TF32 on Ampere and later),
torch with `torch.backends.{cuda.matmul,cudnn}.allow_tf32 = True`; the
utilisation of float32 steps is taken against the dense TF32 peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))   # run as a script: tools.* and diffsal_jax

from tools import device_sections  # noqa: E402

# Fewest seconds worth starting a section with (a published-size compile
# alone takes about a minute); below it the section is recorded as skipped.
MIN_SECONDS = {"env": 10, "jax_train": 60, "torch_train": 30,
               "jax_sampler": 60, "loader": 30}


# --- driver ------------------------------------------------------------------

def plan(args) -> list[str]:
  names = ["env"]
  for b in args.batches:
    names += [f"jax_train_b{b}_{dt}" for dt in args.dtypes]
    if args.reference:
      names.append(f"torch_train_b{b}")
  names += ["jax_sampler", "loader"]
  return [n for n in names if not args.skip or not any(n.startswith(s) for s in args.skip)]


def _kind(name: str) -> str:
  return next(k for k in MIN_SECONDS if name.startswith(k))


def _write_json(path: pathlib.Path, data: dict) -> None:
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(data, indent=1, default=str))
  os.replace(tmp, path)


def _child_argv(args, name: str, result_path: pathlib.Path) -> list[str]:
  python = args.torch_python if name.startswith("torch") and args.torch_python else sys.executable
  argv = [python, str(pathlib.Path(__file__).resolve()), f"--section={name}",
          f"--section_out={result_path}", f"--size={args.size}",
          f"--batches={','.join(map(str, args.batches))}",
          f"--dtypes={','.join(args.dtypes)}", f"--repeats={args.repeats}",
          f"--sampling_steps={','.join(args.sampling_steps)}",
          f"--sampler_dtype={args.sampler_dtype}",
          f"--loader_workers={args.loader_workers}",
          f"--loader_batches={args.loader_batches}",
          f"--loader_modes={args.loader_modes}",
          f"--reference={args.reference or ''}"]
  return argv + [f"--model_override={o}" for o in args.model_override]


def drive(args) -> dict[str, Any]:
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  json_path, log_path = out / "device_check.json", out / "device_check.log"
  started = time.monotonic()
  report: dict[str, Any] = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "sections": {}}
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [os.environ.get("PYTHONPATH"), str(REPO)])), PYTHONUNBUFFERED="1")
  with open(log_path, "a") as log:
    for name in plan(args):
      left = args.budget_s - (time.monotonic() - started)
      if left < MIN_SECONDS[_kind(name)]:
        result = {"skipped": f"budget: {left:.0f} s left of --budget_s={args.budget_s}, "
                             f"the section needs at least {MIN_SECONDS[_kind(name)]} s"}
      else:
        result_path = out / f".{name}.json"
        log.write(f"\n===== {name} (budget left {left:.0f} s)\n")
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(_child_argv(args, name, result_path), stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
          rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
          os.killpg(proc.pid, signal.SIGKILL)   # its own session: our child only
          proc.wait()
          rc = None
        elapsed = time.monotonic() - t0
        if result_path.is_file():
          result = json.loads(result_path.read_text())
          result_path.unlink()
        elif rc is None:
          result = {"error": f"killed at the budget after {elapsed:.0f} s"}
        else:
          result = {"error": f"exit code {rc}; see {log_path} (last lines: "
                             f"{_tail(log_path)})"}
        result["section_s"] = elapsed
      report["sections"][name] = result
      report["elapsed_s"] = time.monotonic() - started
      _write_json(json_path, report)
      print(f"[{report['elapsed_s']:5.0f} s] {name}: {_status(result)}", flush=True)
  report["headroom"] = loader_headroom(report, args.accelerators, args.mfu,
                                       args.headroom_device or _device_kind(report))
  report["markdown"] = markdown(report) + headroom_markdown(report["headroom"])
  _write_json(json_path, report)
  print(report["markdown"])
  return report


def _device_kind(report: dict) -> str:
  """The env section's device kind where its peak is known, else "H200"."""
  kind = report["sections"].get("env", {}).get("device_kind", "")
  return kind if device_sections.peak_tflops(kind, "float32") else "H200"


def _tail(path: pathlib.Path, lines: int = 3) -> str:
  text = path.read_text(errors="replace").strip().splitlines()
  return " | ".join(text[-lines:])[-600:]


def _status(r: dict) -> str:
  if "skipped" in r:
    return f"skipped ({r['skipped']})"
  if "error" in r:
    return f"FAILED ({r['error'][:300]})"
  return "ok"


def _f(value, spec: str = ".3f") -> str:
  return "n/a" if value is None else f"{value:{spec}}"


def markdown(report: dict) -> str:
  s = report["sections"]
  lines = []
  env = s.get("env", {})
  if "device_kind" in env:
    bad = {k: v for k, v in env["imports"].items() if v != "ok"}
    lines.append(f"device: {env['device_kind']} ({env['platform']}, "
                 f"{_f(env['device_memory_gb'], '.1f')} GiB), jax "
                 f"{env['versions']['jax']}, torch {env['versions']['torch']}, "
                 f"{env['cpus']} CPUs; failed imports: {bad or 'none'}")
  lines += ["", "| section | batch | dtype | step s (median) | clips/s | TFLOP/s | "
            "utilisation | peak mem GiB | compile s |", "|---|---|---|---|---|---|---|---|---|"]
  best = None
  for name, r in s.items():
    if name.startswith("jax_train") and "median_s" in r:
      best = max(best or 0, r["clips_per_s"])
      lines.append(f"| ours {name} | {r['batch']} | {r['dtype']} | {r['median_s']:.4f} | "
                   f"{r['clips_per_s']:.2f} | {_f(r['achieved_tflops'], '.1f')} | "
                   f"{_f(r['utilisation'] and 100 * r['utilisation'], '.1f')} % | "
                   f"{_f(r['device_peak_gb'], '.2f')} | {r['compile_s']:.1f} |")
    elif name.startswith("torch_train") and "runs" in r:
      for run in r["runs"]:
        if "error" in run:
          lines.append(f"| published {name} | {run['batch']} | {run['dtype']} | "
                       f"FAILED: {run['error'][:120]} | | | | | |")
          continue
        u = run.get("utilisation")
        lines.append(f"| published {name} | {run['batch']} | {run['dtype']} | "
                     f"{run['median_s']:.4f} | {run['clips_per_s']:.2f} | "
                     f"{_f(run['achieved_tflops'], '.1f')} | {_f(u and 100 * u, '.1f')} % | "
                     f"{_f(run['device_peak_gb'], '.2f')} | warm-up {run['warmup_s']:.1f} |")
    elif name == "jax_sampler" and "runs" in r:
      for run in r["runs"]:
        lines.append(f"| ours sampler {run['steps']} DDIM step(s) | {r['batch']} | "
                     f"{r['dtype']} | {run['median_s']:.4f} | "
                     f"{r['batch'] / run['median_s']:.2f} | | | "
                     f"{_f(r['device_peak_gb'], '.2f')} | {run['compile_s']:.1f} |")
    elif name == "loader" and "clips_per_s" in r:
      for loader, rates in r["clips_per_s"].items():
        rate = max(rates.values())
        versus = f" = {rate / best:.2f}x the fastest step's need" if best else ""
        lines.append(f"| loader {loader} ({r['workers']} workers, {r['clip']}) | 4 | | "
                     f"| {rate:.2f}{versus} | | | | |")
    if "skipped" in r or "error" in r:
      lines.append(f"| {name} | | | {_status(r)[:200]} | | | | | |")
  return "\n".join(lines)


def loader_headroom(report: dict, accelerators: int, mfu: float,
                    target: str) -> list[dict[str, Any]]:
  """What `accelerators` devices of one host consume against the loader.

  Per timed train step (float32 / bf16, each batch): clips/s consumed by
  `accelerators` such devices as measured here, and as estimated from XLA's
  FLOPs per clip at `mfu` of the dense peak of `target` (a device_kind
  substring of `device_sections.PEAK_TFLOPS`, e.g. "H200"); against the
  grain loader's best measured clips/s (`loader` section) and its rate per worker
  (threads or processes, the better mode), the workers that would need.
  Empty when the run has no timed step or no loader figures.
  """
  sections = report["sections"]
  loader = sections.get("loader", {})
  if "clips_per_s" not in loader:
    return []
  # Ours only: the report also times the published-style PIL loader.
  loader_rate = max(max(rates.values()) for name, rates in loader["clips_per_s"].items()
                    if name.startswith("grain"))
  per_worker = loader_rate / loader["workers"]
  rows = []
  for name, r in sections.items():
    if not (name.startswith("jax_train") and "median_s" in r):
      continue
    peak = device_sections.peak_tflops(target, r["dtype"])
    per_clip = r["flops"] / r["batch"] if r.get("flops") else None
    needs = {"measured": accelerators * r["clips_per_s"],
             "estimated": (accelerators * mfu * peak * 1e12 / per_clip
                           if peak and per_clip else None)}
    rows.append({"section": name, "dtype": r["dtype"], "batch": r["batch"],
                 "gflop_per_clip": per_clip and per_clip / 1e9,
                 "accelerators": accelerators, "mfu": mfu, "target": target,
                 "target_peak_tflops": peak, "loader_clips_per_s": loader_rate,
                 "loader_workers": loader["workers"],
                 "clips_per_s_per_worker": per_worker,
                 **{f"need_{k}": v for k, v in needs.items()},
                 **{f"workers_for_{k}": (math.ceil(v / per_worker) if v else None)
                    for k, v in needs.items()}})
  return rows


def headroom_markdown(rows: list[dict[str, Any]]) -> str:
  if not rows:
    return ""
  r0 = rows[0]
  lines = ["", f"Loader headroom for one host of {r0['accelerators']} devices: the loader "
           f"gives {r0['loader_clips_per_s']:.1f} clips/s with {r0['loader_workers']} "
           f"workers ({r0['clips_per_s_per_worker']:.1f} per worker).", "",
           f"| step | GFLOP/clip | needs, {r0['accelerators']} x this device (measured) | "
           f"needs, {r0['accelerators']} x {r0['target']} at {100 * r0['mfu']:.0f} % MFU "
           "(estimate) | workers for each |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['section']} | {_f(r['gflop_per_clip'], '.0f')} | "
                 f"{r['need_measured']:.2f} clips/s | {_f(r['need_estimated'], '.0f')} clips/s | "
                 f"{r['workers_for_measured']} / {_f(r['workers_for_estimated'], 'd')} |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="device_check_out", help="results folder")
  p.add_argument("--reference", default="",
                 help="checkout of the published code (empty: no PyTorch sections)")
  p.add_argument("--budget_s", type=float, default=420.0,
                 help="seconds for all sections; later ones are skipped when it runs low")
  p.add_argument("--size", choices=("published", "tiny"), default="published")
  p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8],
                 help="per-device batches of the train steps (the first also for the sampler)")
  p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
  p.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
  p.add_argument("--sampling_steps", type=lambda s: s.split(","), default=["1", "4"])
  p.add_argument("--sampler_dtype", default="float32")
  p.add_argument("--loader_workers", type=int, default=8)
  p.add_argument("--loader_batches", type=int, default=10)
  p.add_argument("--loader_modes", default="processes,threads",
                 help="grain worker processes and/or decoding threads")
  p.add_argument("--accelerators", type=int, default=4,
                 help="devices per host for the loader headroom")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="utilisation assumed for the headroom's FLOP estimate")
  p.add_argument("--headroom_device", default="",
                 help="device whose peak the estimate uses (default: this one, or "
                      "H200 where this one's peak is unknown, e.g. on a CPU)")
  p.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[],
                 help="section name prefixes to leave out, e.g. loader,jax_sampler")
  p.add_argument("--model_override", action="append", default=[],
                 help="KEY=VALUE on config.model, e.g. mvit.remat=false (repeatable)")
  p.add_argument("--torch_python", default="",
                 help="python for the PyTorch sections (default: this one)")
  p.add_argument("--section", default="", help=argparse.SUPPRESS)
  p.add_argument("--section_out", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  bad = [d for d in args.dtypes if d not in ("float32", "bfloat16")]
  if bad:
    p.error(f"--dtypes: {bad} not in float32,bfloat16")
  if args.reference and not args.section and not pathlib.Path(args.reference).is_dir():
    p.error(f"--reference={args.reference}: no such folder; export the published code "
            "there (git archive HEAD | tar -x -C DIR) or pass --reference= to skip torch")
  return args


def main(argv=None) -> dict | None:
  args = parse_args(argv)
  if args.section:
    try:
      device_sections.run_section(args)
    except Exception as e:   # recorded in the JSON; the traceback goes to the log
      traceback.print_exc()
      pathlib.Path(args.section_out).write_text(json.dumps(
          {"error": f"{type(e).__name__}: {e}"[:2000]}))
      sys.exit(1)
    return None
  return drive(args)


if __name__ == "__main__":
  main()
