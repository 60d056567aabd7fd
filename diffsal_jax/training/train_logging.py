"""Training logs: TensorBoard, a JSON-lines file and a progress bar.

Only process 0 writes. On resume, records after the restored step are dropped
from `metrics.jsonl` so that a restarted run's log reads exactly like an
uninterrupted one (TensorBoard itself keeps the newest value per step).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax
import tensorboardX
import tqdm

from diffsal_jax.data import atomic_files

METRICS_FILE = "metrics.jsonl"
# One record per launch of the run (first start and each resume): how long
# the launch took to reach its first step and what the compile cost.
STARTUP_FILE = "startup.jsonl"


def _truncate_after(path: str, step: int) -> None:
  """Keeps the well-formed records with record['step'] <= step (atomic)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      if record.get("step", math.inf) <= step:
        kept.append(json.dumps(record))
  atomic_files.write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(workdir: str) -> list[dict]:
  """All records of a workdir's metrics.jsonl, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


class TrainLogger:
  """Writes scalars to TensorBoard + JSONL and drives a tqdm bar with ETA."""

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int,
               show_progress: bool = True):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    self._bar = None
    self._workdir = workdir
    if not self._enabled:
      return
    path = os.path.join(workdir, METRICS_FILE)
    _truncate_after(path, initial_step)
    self._jsonl = open(path, "a")
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step,
                          desc="train", unit="step", dynamic_ncols=True,
                          disable=not show_progress)

  def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None:
    """One record {'step', 'kind', **scalars}; TB tags are 'kind/name'."""
    if not self._enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(f"{kind}/{name}", value, step)
    self._tb.flush()
    if kind == "train" and "loss" in values:
      self._bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)

  def startup(self, record: Mapping[str, object]) -> None:
    """Appends `record` to <workdir>/startup.jsonl (kept across resumes)."""
    if not self._enabled:
      return
    with open(os.path.join(self._workdir, STARTUP_FILE), "a") as f:
      f.write(json.dumps(dict(record)) + "\n")

  def advance(self, steps: int = 1) -> None:
    if self._enabled:
      self._bar.update(steps)

  def message(self, text: str) -> None:
    if self._enabled:
      self._bar.write(text)

  def close(self) -> None:
    if not self._enabled:
      return
    self._bar.close()
    self._tb.close()
    self._jsonl.close()
