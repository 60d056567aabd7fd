"""SIGTERM handling (training/preemption.py): one process stops on its own
signal; of two processes, SIGTERM to one stops both at the same step (the
collective checkpoint save then has every process in it)."""

import json
import os
import signal
import subprocess
import sys

from diffsal_jax.training import preemption as preemption_lib
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
