"""Two JAX processes (jax.distributed on CPU) train exactly like one.

Runs `tools.multiprocess_check`: two worker processes with one CPU
device each, each reading its own data shard, against one process holding
two devices fed their concatenated batches; 3 steps of the demo model.
"""

from tools import multiprocess_check


def test_two_processes_match_one(tmp_path):
  args = multiprocess_check.parse_args([
      f"--workdir={tmp_path}", "--processes=2", "--devices_per_process=1",
      "--steps=3", "--batch_size=4", "--timeout=420"])
  try:
    result = multiprocess_check.run_check(args)
  except multiprocess_check.CheckFailed as error:
    raise AssertionError(str(error)) from None
  assert len(result["losses"]) == 3
  assert result["loss_rel_diff"] <= 1e-5, result
  assert result["param_rel_diff"] <= 1e-5, result
