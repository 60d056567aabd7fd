"""A run killed with SIGKILL and restarted ends like an uninterrupted run;
so does one whose latest checkpoint was damaged on disk (it resumes from the
previous one).

Runs the real command line (`python -m diffsal_jax.main`) on the demo config
with the check model (configs/demo.py: check_model_config) and a short
schedule. The runs share the session's JAX compilation cache,
so only the first one compiles.
"""

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh

from diffsal_jax.training import checkpointing
from diffsal_jax.training import train_logging
from diffsal_jax.training import train_state as ts
from tests import demo_run

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12


@pytest.fixture(scope="module")
def straight_run(run_env):
  """An uninterrupted run, shared by the tests that compare with it."""
  root, env = run_env
  return _finished_run(root, env, "straight")[0]


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume")
  # Every run inherits the session's XLA flags (XLA:CPU's cheapest compile,
  # so the runs stay comparable bit for bit) and compilation cache
  # (tests/conftest.py).
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return root, env


def _command(workdir, data_dir):
  return [sys.executable, "-m", "diffsal_jax.main", "--config=configs/demo.py",
          f"--workdir={workdir}", *demo_run.check_model_flags(),
          f"--config.synthetic_data.dir={data_dir}",
          "--config.synthetic_data.train_videos=4",
          "--config.synthetic_data.val_videos=1",
          f"--config.num_train_steps={STEPS}",
          "--config.checkpoint_every_steps=3", "--config.eval_every_steps=6",
          # Steps 6, 9 and 12 kept: the damaged-checkpoint test needs two
          # steps before the last.
          "--config.max_checkpoints_to_keep=3",
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


def _truncate_a_data_file(step_dir: pathlib.Path, item: str = "variables") -> None:
  """Cuts the largest array data file of `item` in half (a copy cut short)."""
  path = max((step_dir / item / "d").iterdir(), key=lambda p: p.stat().st_size)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _final_variables(workdir):
  return checkpointing.restore_tree(
      str(workdir / "checkpoints" / str(STEPS) / "variables"))


def test_sigkill_then_restart_matches_uninterrupted_run(run_env, straight_run):
  root, env = run_env
  straight = straight_run
  killed = _kill_after_first_checkpoint(root, env, "killed")
  resumed, log = _finished_run(root, env, "killed")
  assert resumed == killed and "Resumed from step" in log

  expected, got = _final_variables(straight), _final_variables(resumed)
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


def test_damaged_latest_checkpoint_resumes_from_the_previous_one(run_env, straight_run):
  """Killed after step 9 was saved, and step 9 then damaged on disk."""
  root, env = run_env
  workdir = root / "damaged"
  shutil.copytree(straight_run, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))
  shutil.rmtree(workdir / "best" / str(STEPS), ignore_errors=True)
  (workdir / "final_metrics.json").unlink()
  _truncate_a_data_file(workdir / "checkpoints" / "9")
  _, log = _finished_run(root, env, "damaged")
  assert (f"checkpoint step 9 is damaged: moved it to {workdir}/checkpoints/9.damaged; "
          "resuming from step 6") in log
  assert "Resumed from step 6" in log and "Event loop is closed" not in log
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "6", "9", "9.damaged"]
  expected, got = _final_variables(straight_run), _final_variables(workdir)
  assert jax.tree.structure(expected) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  logged = train_logging.read_metrics(str(workdir))
  assert [r["step"] for r in logged if r["kind"] == "train"] == list(range(1, STEPS + 1))


class _Tiny(nnx.Module):
  def __init__(self):
    self.linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    self.norm = nnx.BatchNorm(4, rngs=nnx.Rngs(0))


class _ListIterator:
  """What `IteratorState` needs of a grain iterator."""

  def __init__(self):
    self.state = {"position": 0}

  def get_state(self):
    return dict(self.state)

  def set_state(self, state):
    self.state = dict(state)


def _tiny_state(step: int) -> ts.TrainState:
  model = _Tiny()
  params, stats = nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
  state = ts.create_train_state(params, stats, optax.adam(1e-3), seed=0)
  return ts.TrainState(step=jnp.int32(step), params=params, batch_stats=stats,
                       opt_state=state.opt_state, rng=state.rng)


def test_restore_falls_back_then_refuses_when_nothing_restores(tmp_path, caplog):
  """Checkpoints alone, on a tiny state: fallback, re-save, all damaged."""
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  shardings = ts.state_sharding(_tiny_state(0), mesh, "replicated")
  steps_dir = tmp_path / "checkpoints"
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=5)
  iterator = checkpointing.IteratorState(_ListIterator())
  for step in (3, 6, 9):
    iterator.state = {"position": step}
    checkpoints.save(step, _tiny_state(step), iterator, {"step": step})
  checkpoints.close()
  _truncate_a_data_file(steps_dir / "9", "train")

  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=5)
  iterator = checkpointing.IteratorState(_ListIterator())
  with caplog.at_level(logging.WARNING):
    state, meta = checkpoints.restore_latest(_tiny_state(0), shardings, iterator)
  assert (int(state.step), meta, iterator.state) == (6, {"step": 6}, {"position": 6})
  assert f"checkpoint {steps_dir}/9 cannot be restored (ValueError: " in caplog.text
  assert "is not valid for value of size" in caplog.text   # TensorStore's reason
  assert sorted(os.listdir(steps_dir)) == ["3", "6", "9.damaged"]
  assert checkpoints.latest_step() == 6
  checkpoints.save(9, state, iterator, {"step": 9})   # no clash with 9.damaged
  checkpoints.close()
  assert sorted(os.listdir(steps_dir)) == ["3", "6", "9", "9.damaged"]

  for step in (3, 6, 9):
    _truncate_a_data_file(steps_dir / str(step))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), max_to_keep=5)
  with pytest.raises(RuntimeError, match=rf"^no checkpoint in {steps_dir} can be restored: "
                     rf"step 9 \({steps_dir}/9\): ValueError: .*; step 6 .*; step 3 .*"
                     r"Nothing was changed"):
    checkpoints.restore_latest(_tiny_state(0), shardings,
                               checkpointing.IteratorState(_ListIterator()))
  checkpoints.close()
  assert sorted(os.listdir(steps_dir)) == ["3", "6", "9", "9.damaged"]
