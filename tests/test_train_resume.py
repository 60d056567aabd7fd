"""A run killed with SIGKILL and restarted ends like an uninterrupted run.

Runs the real command line (`python -m diffsal_jax.main`) on the demo config
with a short schedule. The runs share a JAX compilation cache so only the
first one compiles.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffsal_jax import checkpointing
from diffsal_jax import train_logging

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             PYTHONPATH=str(REPO))
  return root, env


def _command(workdir, data_dir):
  return [sys.executable, "-m", "diffsal_jax.main", "--config=configs/demo.py",
          f"--workdir={workdir}", f"--config.synthetic_data.dir={data_dir}",
          "--config.synthetic_data.train_videos=4",
          "--config.synthetic_data.val_videos=1",
          f"--config.num_train_steps={STEPS}",
          "--config.checkpoint_every_steps=3", "--config.eval_every_steps=6",
          "--config.log_every_steps=1", "--config.eval_max_batches=1",
          # Published lr: at the demo's 1e-3, Adam turns float rounding
          # differences between two compilations of the step into 1e-4.
          "--config.learning_rate=1e-4"]


def _finished_run(root, env, name):
  workdir = root / name
  done = subprocess.run(_command(workdir, root / "data"), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done.stderr


def _kill_after_first_checkpoint(root, env, name):
  workdir = root / name
  process = subprocess.Popen(_command(workdir, root / "data"), cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (workdir / "checkpoints" / "3").is_dir():
    assert process.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (workdir / "checkpoints" / str(STEPS)).exists(), (
      "killed too late to test resuming")
  return workdir


def _comparable(records):
  return [{k: v for k, v in r.items() if k != "examples_per_s"}
          for r in records]


def test_sigkill_then_restart_matches_uninterrupted_run(run_env):
  root, env = run_env
  straight, _ = _finished_run(root, env, "straight")
  killed = _kill_after_first_checkpoint(root, env, "killed")
  resumed, log = _finished_run(root, env, "killed")
  assert resumed == killed and "Resumed from step" in log

  final = lambda w: checkpointing.restore_tree(
      str(w / "checkpoints" / str(STEPS) / "variables"))
  expected, got = final(straight), final(resumed)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(expected) == jax.tree.structure(got)

  logged = _comparable(train_logging.read_metrics(str(straight)))
  assert [r["step"] for r in logged if r["kind"] == "train"] == list(
      range(1, STEPS + 1))
  assert {r["step"] for r in logged if r["kind"] == "val"} == {6, 12}
  again = _comparable(train_logging.read_metrics(str(resumed)))
  assert len(again) == len(logged)
  for a, b in zip(logged, again):
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in sorted(b) if k != "kind"],
                               [a[k] for k in sorted(a) if k != "kind"],
                               rtol=1e-5)
  assert (resumed / "final_metrics.json").is_file()
