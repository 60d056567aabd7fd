"""Shared test set-up: 4 forced host devices, XLA:CPU's cheapest compile,
highest matmul precision, one JAX compilation cache per session, xdist
groups for the shared runs."""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

from tools.multiprocess_check import FAST_COMPILE_FLAGS


def _xla_flags() -> str:
  """The caller's XLA_FLAGS plus 4 host devices (the sharding tests) and the
  cheapest compile: the suite compiles far more than it runs (tests/
  test_model.py: 330 s -> 176 s on a 2-core Xeon; a demo-size train step
  compiles in 59 s instead of 93 s and runs 2x slower, so the demo trainings
  run in child processes with the default flags, tests/demo_run.py; see also
  tests/parity_lib.py and tests/test_train_step.py). The child processes the
  tests start inherit them."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  if not any(f.startswith("--xla_force_host_platform_device_count") for f in flags):
    flags.append("--xla_force_host_platform_device_count=4")
  named = {f.split("=")[0] for f in flags}   # a flag the caller set wins
  return " ".join(flags + [f for f in FAST_COMPILE_FLAGS
                           if f.split("=")[0] not in named])


# Read when JAX first initialises its backends, which no import above does.
os.environ["XLA_FLAGS"] = _xla_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "reference"


@pytest.fixture(scope="session")
def fixtures_dir():
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES} (clone the project "
                "with its shared/ folder beside it to run parity tests)")
  return FIXTURES


def pytest_configure(config):
  """One persistent compilation cache for the session, shared by the xdist
  workers and every command the tests start (they inherit the environment):
  the same demo models are compiled in many processes, each program only
  once (tests/test_train_step.py alone: 282 s without, 280 s cold, 115 s
  warm, on a 2-core Xeon). A cache the caller set is kept."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return   # an xdist worker (inherited from the controller) or the caller's
  folder = tempfile.mkdtemp(prefix="diffsal_jax_test_cache_")
  config._diffsal_cache = folder  # pylint: disable=protected-access
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
  folder = getattr(config, "_diffsal_cache", None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


# Tests sharing a session-wide training run go to one xdist worker
# (`--dist loadgroup`, set in pyproject.toml): the run is trained there once
# and no other worker sits idle on its file lock (tests/demo_run.py). So do
# the parity tests: their full-size forward runs once per variant and worker.
# xdist hands out the largest groups first.
XDIST_GROUPS = {"visual_run": "demo_run", "trained_workdir": "demo_run",
                "av_run": "demo_av_run", "variant_acts": "parity"}


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    groups = {XDIST_GROUPS[f] for f in getattr(item, "fixturenames", ())
              if f in XDIST_GROUPS}
    if groups:
      assert len(groups) == 1, (item.nodeid, groups)
      item.add_marker(pytest.mark.xdist_group(groups.pop()))
