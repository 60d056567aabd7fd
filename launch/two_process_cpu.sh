#!/usr/bin/env bash
# Local multi-process check on CPU: PROCESSES JAX processes on this machine
# (jax.distributed over 127.0.0.1, gloo collectives) train the tiny demo
# model for a few steps, each on its own data shard, and must match one
# process holding the same number of devices (losses and parameters).
#
# Usage:
#   launch/two_process_cpu.sh [EXTRA_CHECK_FLAGS...]
#   PROCESSES=2 DEVICES_PER_PROCESS=2 launch/two_process_cpu.sh --steps=5
#   launch/two_process_cpu.sh --param_sharding=fsdp
#
# Environment (all optional):
#   PROCESSES            worker processes (default 2)
#   DEVICES_PER_PROCESS  forced CPU devices per worker (default 1)
#   WORKDIR              data and logs (default /tmp/diffsal_multiprocess)
#   PYTHON               interpreter (default python3)
# Prints the losses and relative differences; exits 1 with every process's
# output on a difference, crash or timeout.
set -euo pipefail

cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m tools.multiprocess_check \
    --processes="${PROCESSES:-2}" \
    --devices_per_process="${DEVICES_PER_PROCESS:-1}" \
    --workdir="${WORKDIR:-/tmp/diffsal_multiprocess}" "$@"
