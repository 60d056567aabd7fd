"""SIGTERM handling (training/preemption.py): one process stops on its own
signal; of two processes, SIGTERM to one stops both at the same step (the
collective checkpoint save then has every process in it); and the trainer
itself, as two processes: SIGTERM to one, restart, the same parameters as an
uninterrupted two-process run: three runs of two processes training the demo
model cut to two stages (configs/demo.py: check_model_config). This file and
tests/test_train_resume.py take 187 s alone on 2 cores, 368 s with the demo
model (2026-12-07). Process 0 of the second and third runs reads its
programs from the session's compilation cache (tests/conftest.py); process 1
compiles them in every run, since on CPUs JAX's cache keys differ between
processes (diffsal_jax/compilation_cache.py)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffsal_jax.training import checkpointing
from diffsal_jax.training import preemption as preemption_lib
from diffsal_jax.training import train
from diffsal_jax.training import train_logging
from tests import demo_run
from tests.conftest import REPO
from tools import multiprocess_check


def test_one_process_stops_on_sigterm_and_restores_the_handler():
  previous = signal.getsignal(signal.SIGTERM)
  preemption = preemption_lib.Preemption(lambda step: False)
  try:
    # Installed, so the signal below cannot end the test process.
    assert signal.getsignal(signal.SIGTERM) == preemption._handle  # pylint: disable=protected-access
    assert not preemption.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.reached(2)
  finally:
    preemption.restore()
  assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  port = multiprocess_check.free_port()
  env = multiprocess_check.child_env(devices=1, fast_compile=False)
  children = [subprocess.Popen(
      [sys.executable, "-m", "tests.preemption_worker", str(i), str(port),
       str(tmp_path / "ckpt")], cwd=REPO, env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
  try:
    outputs = [child.communicate(timeout=240)[0] for child in children]
  finally:
    for child in children:   # none left behind after a timeout
      child.kill()
  assert [child.returncode for child in children] == [0, 0], outputs
  reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  steps = {r["process"]: r["stopped_at"] for r in reports}
  # Process 0 got no signal: it stops only through the shared sync point.
  assert steps[0] is not None and steps[0] == steps[1] >= 5, outputs


# --- the trainer, two processes: SIGTERM to one, restart, same parameters ---

TRAIN_STEPS = 16
SIGNAL_AFTER_STEP = 3


def _trainer_overrides(data_dir) -> list[str]:
  """configs/demo.py shrunk to a short two-process run of the check model
  (configs/demo.py: check_model_config); validation and the periodic
  checkpoint only at the last step, so the preemption save is the only
  checkpoint before it."""
  return [*demo_run.check_model_flags(),
          f"--config.synthetic_data.dir={data_dir}",
          "--config.synthetic_data.train_videos=4",
          "--config.synthetic_data.val_videos=1",
          "--config.synthetic_data.frames_per_video=16",
          f"--config.num_train_steps={TRAIN_STEPS}", "--config.batch_size=4",
          "--config.eval_batch_size=4", "--config.log_every_steps=1",
          "--config.eval_every_steps=1000",
          "--config.checkpoint_every_steps=1000", "--config.data.num_threads=1",
          # The demo's HTML report at the end is not what this test checks.
          "--config.final_report=false"]


@pytest.fixture
def trainers():
  """Starts `python -m diffsal_jax.main` as two processes of one JAX cluster
  (through the environment variables docs/multi_host.md names); kills every
  process it started when the test ends, however it ends."""
  started = []

  def start(workdir, data_dir, log_name: str):
    port = multiprocess_check.free_port()
    pair = []
    for i in (0, 1):
      env = multiprocess_check.child_env(devices=1, fast_compile=True)
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
      log_path = workdir.parent / f"{log_name}_{i}.log"
      with open(log_path, "w") as log:
        pair.append((subprocess.Popen(
            [sys.executable, "-m", "diffsal_jax.main",
             "--config=configs/demo.py", f"--workdir={workdir}",
             *_trainer_overrides(data_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log_path))
      started.append(pair[-1][0])
    return pair

  yield start
  for process in started:
    if process.poll() is None:
      process.kill()
      process.wait()


def _tails(pair) -> str:
  return "\n\n".join(f"--- {path.name} (exit {p.returncode}) ---\n"
                      f"{path.read_text()[-3000:]}" for p, path in pair)


def _wait(pair, timeout_s: float = 600) -> list[str]:
  """Waits for both processes to exit 0; on a failure or the timeout, stops
  the other one at once and fails with both logs."""
  deadline = time.time() + timeout_s
  while any(p.poll() is None for p, _ in pair):
    failed = any(p.returncode not in (None, 0) for p, _ in pair)
    if failed or time.time() > deadline:
      for p, _ in pair:
        if p.poll() is None:
          p.kill()
          p.wait()
      pytest.fail(f"{'a process failed' if failed else f'timed out after {timeout_s} s'}"
                  f":\n{_tails(pair)}")
    time.sleep(0.2)
  assert [p.returncode for p, _ in pair] == [0, 0], _tails(pair)
  return [path.read_text() for _, path in pair]


def _logged_train_steps(workdir) -> list[int]:
  """Train steps in metrics.jsonl so far (a line being written is skipped)."""
  path = workdir / train_logging.METRICS_FILE
  steps = []
  for line in path.read_text().splitlines() if path.is_file() else []:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("kind") == "train":
      steps.append(record["step"])
  return steps


def _final_params(workdir) -> dict[str, np.ndarray]:
  tree = checkpointing.restore_tree(str(
      workdir / "checkpoints" / str(TRAIN_STEPS) / checkpointing.VARIABLES))
  flat = jax.tree_util.tree_flatten_with_path(tree[checkpointing.PARAMS])[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def test_trainer_sigterm_to_one_of_two_processes_then_restart_matches_uninterrupted(
    tmp_path, trainers):
  data_dir = tmp_path / "synthetic_data"
  straight, preempted = tmp_path / "straight", tmp_path / "preempted"
  _wait(trainers(straight, data_dir, "straight"))   # builds the data

  pair = trainers(preempted, data_dir, "preempted")
  deadline = time.time() + 240
  while (max(_logged_train_steps(preempted), default=0) < SIGNAL_AFTER_STEP
         and time.time() < deadline and all(p.poll() is None for p, _ in pair)):
    time.sleep(0.2)
  reached = max(_logged_train_steps(preempted), default=0)
  assert SIGNAL_AFTER_STEP <= reached < TRAIN_STEPS, (
      f"step {reached} when the signal was due:\n{_tails(pair)}")
  pair[1][0].send_signal(signal.SIGTERM)   # process 1 only
  outputs = _wait(pair)
  # Process 0 (not signalled) prints the message: only its logger writes.
  # Process 1 exited 0 after the same collective save (the checkpoint below
  # has both processes' parts, or orbax would not have finished it).
  saved = re.search(r"preempted: saved step (\d+)", outputs[0])
  assert saved, outputs[0][-4000:]
  stopped = int(saved.group(1))
  assert SIGNAL_AFTER_STEP <= stopped < TRAIN_STEPS
  assert sorted(int(d.name) for d in (preempted / "checkpoints").iterdir()
                if d.name.isdigit()) == [stopped]
  assert not (preempted / train.FINAL_METRICS_FILE).exists()

  _wait(trainers(preempted, data_dir, "resumed"))
  assert (preempted / train.FINAL_METRICS_FILE).is_file()
  want, got = _final_params(straight), _final_params(preempted)
  assert sorted(want) == sorted(got)
  worst = max(float(np.max(np.abs(want[k] - got[k])) /
                    max(float(np.max(np.abs(want[k]))), 1e-30)) for k in want)
  assert worst <= 1e-6, (stopped, worst)
