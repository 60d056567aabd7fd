"""One of two processes for tests/test_preemption.py.

`python -m tests.preemption_worker PROCESS_ID PORT CKPT_DIR`: joins a
two-process JAX run on localhost, polls `training.preemption.Preemption` once
per 50 ms "step" with a real orbax CheckpointManager's `reached_preemption`,
and sends itself SIGTERM at step 5 when PROCESS_ID is 1. Prints
`{"process": i, "stopped_at": step or null}` as its last line.
"""

import json
import os
import signal
import sys
import time

import jax
import orbax.checkpoint as ocp

from diffsal_jax.training import preemption as preemption_lib

SIGNAL_AT = 5
MAX_STEPS = 200


def main(process_id: int, port: int, ckpt_dir: str) -> None:
  jax.distributed.initialize(f"localhost:{port}", num_processes=2,
                             process_id=process_id)
  manager = ocp.CheckpointManager(ckpt_dir)
  preemption = preemption_lib.Preemption(manager.reached_preemption)
  stopped_at = None
  for step in range(1, MAX_STEPS + 1):
    time.sleep(0.05)
    if process_id == 1 and step == SIGNAL_AT:
      os.kill(os.getpid(), signal.SIGTERM)
    if preemption.reached(step):
      stopped_at = step
      break
  preemption.restore()
  manager.close()
  print(json.dumps({"process": process_id, "stopped_at": stopped_at}), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
