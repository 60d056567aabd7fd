"""Shared test set-up: 4 forced host devices, highest matmul precision, one
JAX compilation cache per session, xdist groups for the shared runs."""

import os
import pathlib
import shutil
import tempfile

# Must happen before JAX initialises its backends (sharding tests use 4 devices).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

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
# and no other worker sits idle on its file lock (tests/demo_run.py). xdist
# hands out the largest groups first, so the two long runs start at once.
XDIST_GROUPS = {"visual_run": "demo_run", "trained_workdir": "demo_run",
                "av_run": "demo_av_run"}


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    groups = {XDIST_GROUPS[f] for f in getattr(item, "fixturenames", ())
              if f in XDIST_GROUPS}
    if groups:
      assert len(groups) == 1, (item.nodeid, groups)
      item.add_marker(pytest.mark.xdist_group(groups.pop()))
