r"""The published code's side of `tools.benchmarks.train_step --reference`.

The benchmark starts this module as a child process, which builds the
published PyTorch model from a checkout (tools/published_reference.py) and
then times one call at a time when asked, so the two codes take turns on the
same CPU in the same run, and each process's peak memory is its own:

  parent -> child, one JSON object a line:
    {"op": "train"}                       one published train step
    {"op": "sample", "steps": [[t, abar_t, abar_next | null], ...]}
    {"op": "quit"}
  child -> parent: {"wall_s": ..., "cpu_s": ...} per call; at start
    {"ready": ...} (torch version, threads, parameters); at quit the peak
    resident memory (ru_maxrss) of the child.

A failure in the child is answered with {"error": "..."} and the child
exits; `PublishedWorker` raises it with the end of the child's log.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[2]

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The child's flags, defined only when it runs (the benchmark imports this
  module and has flags of the same names)."""
  flags.DEFINE_string("reference", None, "Checkout of the published code.")
  flags.DEFINE_integer("threads", None, "torch intra-op threads (default: all cores).")
  flags.DEFINE_integer("batch", 1, "Clips per call.")
  flags.DEFINE_list("shape", None, "clip_len,height,width,audio_patches,"
                    "audio_height,audio_width of the inputs.")


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _reply(message: dict[str, Any]) -> None:
  sys.stdout.write(json.dumps(message) + "\n")
  sys.stdout.flush()


def _serve(argv: Sequence[str]) -> None:
  del argv
  import torch
  from tools import published_reference as pr

  threads = FLAGS.threads or os.cpu_count()
  torch.set_num_threads(threads)
  torch.set_num_interop_threads(1)
  clip_len, h, w, patches, ah, aw = (int(v) for v in FLAGS.shape)
  ref = pr.load_reference(FLAGS.reference)
  data = pr.random_inputs(batch=FLAGS.batch, clip_len=clip_len, image_size=(h, w),
                          audio_patches=patches, audio_size=(ah, aw), device="cpu")
  train = pr.train_step_call(ref, data, dtype="float32", device="cpu")
  _reply({"ready": True, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "params_m": ref["params_m"]})
  for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "quit":
      _reply({"peak_rss_gb": _peak_rss_gb()})
      return
    call = (train if request["op"] == "train" else
            pr.sampler_call(ref, data, [tuple(s) for s in request["steps"]],
                            device="cpu"))
    started, started_cpu = time.perf_counter(), time.process_time()
    call()
    _reply({"wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - started_cpu})


def main(argv: Sequence[str]) -> None:
  try:
    _serve(argv)
  except Exception as e:  # pylint: disable=broad-except
    _reply({"error": f"{type(e).__name__}: {e}"})
    raise


class PublishedWorker:
  """The child process, seen from the benchmark.

  `shape`: (clip_len, height, width, audio_patches, audio_height,
  audio_width) of the inputs; the published model is built at its own size
  (16, 224, 384, 9, 112, 192), so other shapes only suit a stand-in. Raises
  RuntimeError naming the log file when the child fails; torch must be
  importable (the `torch` extra)."""

  def __init__(self, reference: str, *, batch: int, shape: Sequence[int],
               threads: int | None, log_path: str):
    self.log_path = log_path
    command = [sys.executable, "-m", "tools.benchmarks.published_worker",
               f"--reference={os.path.abspath(reference)}", f"--batch={batch}",
               "--shape=" + ",".join(str(int(v)) for v in shape)]
    if threads:
      command.append(f"--threads={threads}")
    self._log = open(log_path, "w")  # pylint: disable=consider-using-with
    self._child = subprocess.Popen(  # pylint: disable=consider-using-with
        command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._log, text=True)
    self.info = self._read()

  def _read(self) -> dict[str, Any]:
    line = self._child.stdout.readline()
    message = json.loads(line) if line.strip() else {"error": "no reply"}
    if "error" in message:
      self._child.wait()
      self._log.close()
      tail = pathlib.Path(self.log_path).read_text()[-3000:]
      raise RuntimeError(
          f"the published model's process failed ({message['error']}); its log "
          f"is {self.log_path}:\n{tail}")
    return message

  def call(self, op: str, **fields) -> dict[str, float]:
    """One timed call: `call("train")` or `call("sample", steps=[...])`."""
    self._child.stdin.write(json.dumps({"op": op, **fields}) + "\n")
    self._child.stdin.flush()
    return self._read()

  def close(self) -> dict[str, float]:
    """Ends the child; returns its peak resident memory."""
    result = self.call("quit")
    self._child.wait()
    self._log.close()
    return result


class Turns:
  """The published code's turns between our timed calls.

  `turns(op, steps=None)` makes one warm-up call of `op` ('train', or
  'sample' with `steps` DDIM steps) and returns a closure that times one more
  and keeps the median wall and CPU seconds in `turns.results[key]` (key
  'train' or 'sample_<steps>'). Without a worker it returns None: no turns."""

  def __init__(self, worker: PublishedWorker | None):
    self.worker = worker
    self.results: dict[str, dict[str, Any]] = {}
    self._times: dict[str, list[dict[str, float]]] = {}

  def __call__(self, op: str, steps: int | str | None = None):
    if self.worker is None:
      return None
    key = op if steps is None else f"{op}_{steps}"
    fields = {} if steps is None else {"steps": sampler_steps(int(steps))}
    self.worker.call(op, **fields)

    def one_call():
      times = self._times.setdefault(key, [])
      times.append(self.worker.call(op, **fields))
      self.results[key] = {
          "median_s": statistics.median(t["wall_s"] for t in times),
          "cpu_median_s": statistics.median(t["cpu_s"] for t in times),
          "times_s": [t["wall_s"] for t in times]}
    return one_call


def sampler_steps(num_steps: int) -> list[list]:
  """The published DDIM visits as (t, abar_t, abar_next or None)."""
  from diffsal_jax.models import diffusion
  abar = diffusion.make_schedule().alphas_cumprod
  return [[int(t), float(abar[t]), float(abar[t_next]) if t_next >= 0 else None]
          for t, t_next in diffusion.ddim_timesteps(len(abar), num_steps)]


def cpu_description() -> str:
  """The CPU model and the vector/matrix extensions XLA and torch can use."""
  model, extensions = "unknown CPU", []
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return model
  for line in info.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name":
      model = value.strip()
    elif key.strip() == "flags":
      have = set(value.split())
      extensions = [x for x in ("avx2", "fma", "avx512f", "avx512_vnni",
                                "avx512_bf16", "amx_bf16", "amx_tile")
                    if x in have]
      break
  return f"{model} ({', '.join(extensions) or 'no AVX2'})"


def comparison_rows(ours: dict[str, Any], published: dict[str, Any]
                    ) -> list[tuple[str, str]]:
  """Markdown rows: the published code's figures and ours / published."""
  rows = [("published code (same run)",
           f"torch {published['torch']}, {published['threads']} threads; "
           f"ours: XLA, {os.cpu_count()} cores; {published['cpu']}")]
  pairs = [("train step", ours["train"]["median_s"],
            published["train"]["median_s"])]
  for s in ours["sampler"]:
    key = f"sample_{s['steps']}"
    if key in published:
      pairs.append((f"inference, {s['steps']} DDIM step(s)", s["median_s"],
                    published[key]["median_s"]))
  pairs.append(("peak host memory", ours["rss_peak_gb"],
                published["peak_rss_gb"]))
  for name, mine, theirs in pairs:
    unit = " GiB" if "memory" in name else " s"
    rows.append((f"{name}: ours / published",
                 f"{mine:.3f}{unit} / {theirs:.3f}{unit} = **{mine / theirs:.2f}x**"))
  return rows


if __name__ == "__main__":
  _define_flags()
  app.run(main)
