"""Shared test set-up: 4 forced host devices, highest matmul precision, one
XLA compilation cache for every test process."""

import os
import pathlib
import tempfile

# Must happen before JAX initialises its backends (sharding tests use 4 devices).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The xdist workers and the subprocesses the CLI tests start all compile the
# same small kernels: building the demo model eagerly compiles ~150 of them
# (33 s cold, 4.6 s from this cache, measured on a 2-core Xeon). Environment
# variables, so that subprocesses inherit them; the size bound turns on
# JAX's file lock (`filelock`), which keeps concurrent writers apart.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "diffsal_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 2 ** 30))

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
