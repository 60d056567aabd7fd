"""Two JAX processes (jax.distributed on CPU) train exactly like one.

Runs the command docs/multi_host.md shows, `launch/two_process_cpu.sh`
(`tools.multiprocess_check` with its defaults): two worker processes with one
CPU device each, each reading its own data shard, against one process
holding two devices fed their concatenated batches; 3 steps of the demo
model, batch 4. tests/test_docs_commands.py relies on this test for that
command.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import app

from diffsal_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, WORKDIR=str(tmp_path), PYTHON=sys.executable)
  result = subprocess.run(["bash", "-c", "launch/two_process_cpu.sh --timeout=420"],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-6000:])
  report = json.loads(result.stdout[result.stdout.index("{"):
                                    result.stdout.rindex("}") + 1])
  assert len(report["losses"]) == 3
  assert report["processes"] == 2 and report["devices_per_process"] == 1
  assert report["loss_rel_diff"] <= 1e-5, report
  assert report["param_rel_diff"] <= 1e-5, report


def test_cluster_from_environment_variables(monkeypatch):
  """main.py's JAX_NUM_PROCESSES / JAX_PROCESS_ID (jax reads neither);
  tests/test_preemption.py starts two trainers through them."""
  for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert main._cluster_from_environment() == {}   # pylint: disable=protected-access
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "0")
  assert main._cluster_from_environment() == {   # pylint: disable=protected-access
      "num_processes": 2, "process_id": 0}
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(app.UsageError, match="JAX_PROCESS_ID"):
    main._cluster_from_environment()   # pylint: disable=protected-access
  monkeypatch.setenv("JAX_PROCESS_ID", "one")
  with pytest.raises(app.UsageError, match="integers"):
    main._cluster_from_environment()   # pylint: disable=protected-access
