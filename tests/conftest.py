"""Shared test set-up: 4 forced host devices, highest matmul precision."""

import os
import pathlib

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
