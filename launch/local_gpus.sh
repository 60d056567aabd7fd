#!/usr/bin/env bash
# Trains on the GPUs of one machine: one process drives all of them (the
# batch is split over the devices of the 'data' mesh axis).
#
# Usage:
#   launch/local_gpus.sh [CONFIG] [WORKDIR] [EXTRA_MAIN_FLAGS...]
#   GPUS=0,1,2,3 launch/local_gpus.sh configs/pretrain.py runs/pretrain \
#       --config.data.shards=/data/dhf1k_shards
#   launch/local_gpus.sh configs/demo.py /tmp/diffsal_demo
#
# Environment (all optional):
#   CONFIG   config file[:argument]     (default configs/pretrain.py)
#   WORKDIR  run folder                  (default runs/$(basename CONFIG .py))
#   GPUS     GPU ids to use, e.g. 0,1    (default: all; sets CUDA_VISIBLE_DEVICES)
#   PYTHON   interpreter                 (default python3)
# config.batch_size (global) must be a multiple of the number of GPUs.
set -euo pipefail

source "$(dirname "$0")/run_args.sh"

cd "$(dirname "$0")/.."
if [[ -n "${GPUS:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="${GPUS}"
fi
mkdir -p "${WORKDIR}"
exec "${PYTHON}" -m diffsal_jax.main --config="${CONFIG}" \
    --workdir="${WORKDIR}" --distributed=false "$@"
