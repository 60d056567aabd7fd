"""A quiet console: orbax's save/restore chatter stays off unless asked for."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# A command in miniature: absl app, our console set-up, an orbax save and
# restore (the chatter users saw on every restore), one line of ours.
_SCRIPT = """
import sys
import numpy as np
import orbax.checkpoint as ocp
from absl import app, logging
from diffsal_jax import console

def main(argv):
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(sys.argv[1] + "/ckpt", {"w": np.ones(3, np.float32)})
    ckpt.wait_until_finished()
    ckpt.restore(sys.argv[1] + "/ckpt")
  logging.error("a library error still shows")
  print("RESULT ok")

console.quiet_libraries()
app.run(main)
"""


def _run(tmp_path, *flags):
  return subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=True)


def test_library_logs_hidden_by_default_shown_with_verbosity(tmp_path):
  quiet = _run(tmp_path / "quiet")
  assert "RESULT ok" in quiet.stdout
  assert "_NonBlockingMetadataStore" not in quiet.stderr
  assert "Restoring checkpoint" not in quiet.stderr
  assert "a library error still shows" in quiet.stderr
  loud = _run(tmp_path / "loud", "--verbosity=1")
  assert "_NonBlockingMetadataStore" in loud.stderr


def test_our_records_pass_library_records_wait(monkeypatch):
  import logging as std_logging   # pylint: disable=import-outside-toplevel
  from absl import logging   # pylint: disable=import-outside-toplevel
  from diffsal_jax import console   # pylint: disable=import-outside-toplevel
  from diffsal_jax.training import train   # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(logging, "get_verbosity", lambda: 0)
  keep = console._LibraryFilter().filter   # pylint: disable=protected-access

  def record(path, level):
    return std_logging.LogRecord("x", level, path, 1, "m", (), None)

  assert keep(record(train.__file__, std_logging.INFO))
  assert not keep(record(ocp_path := "/site-packages/orbax/checkpoint.py",
                         std_logging.WARNING))
  assert keep(record(ocp_path, std_logging.ERROR))
  monkeypatch.setattr(logging, "get_verbosity", lambda: 1)
  assert keep(record(ocp_path, std_logging.INFO))
