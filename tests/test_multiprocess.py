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
