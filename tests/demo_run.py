"""The README's demo runs, each trained once per test session.

The learning tests and the end-to-end predict tests share them: the first
xdist worker to ask trains a run under a file lock in the session's shared
temp folder, the others wait and reuse it.
"""

import fcntl
import json
import os
import pathlib

import ml_collections

from configs import demo
from diffsal_jax.training import train


def shared_dir(tmp_path_factory) -> pathlib.Path:
  """The session's temp root, shared by all xdist workers."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def demo_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  # One device, as the README command runs on a CPU (the forced 4 host
  # devices of the test session would only add collectives).
  config.mesh_data_axis = 1
  return config


def trained(tmp_path_factory, name: str, config: ml_collections.ConfigDict
            ) -> tuple[ml_collections.ConfigDict, pathlib.Path, dict]:
  """(config reading the run's shards, workdir, final held-out metrics)."""
  root = shared_dir(tmp_path_factory)
  workdir = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / train.FINAL_METRICS_FILE).is_file():
      train.train_and_evaluate(config, str(workdir))
  with open(workdir / train.FINAL_METRICS_FILE) as f:
    results = json.load(f)
  results.pop("split")
  config.data.shards = str(workdir / "synthetic_data" / "shards")
  config.synthetic_data.enabled = False
  return config, workdir, results


def trained_demo(tmp_path_factory
                 ) -> tuple[ml_collections.ConfigDict, pathlib.Path, dict]:
  """The visual demo (configs/demo.py) as the README runs it."""
  return trained(tmp_path_factory, "demo_run", demo_config())
