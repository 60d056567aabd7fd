#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: the same command runs on every TPU VM
# worker (--worker=all), one process per VM; jax.distributed.initialize()
# (main.py --distributed=true) discovers the slice from the TPU metadata.
#
# Usage (from a machine with gcloud access to the TPU):
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh [CONFIG] [WORKDIR] [EXTRA_MAIN_FLAGS...]
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/pretrain.py \
#       /mnt/shared/runs/pretrain --config.data.shards=/mnt/shared/dhf1k_shards
#
# Environment:
#   TPU, ZONE   the TPU VM name and zone (required)
#   PROJECT     gcloud project (default: gcloud's configured one)
#   REPO_DIR    repository path on the workers (default ~/diffsal_jax); the
#               code and its Python environment must already be installed
#               on every worker (e.g. a `--worker=all` git clone + pip install)
#   PYTHON      interpreter on the workers (default python3)
#   CONFIG, WORKDIR  as the arguments (defaults configs/pretrain.py, runs/<config>)
#
# WORKDIR and config.data.shards are opened with plain file I/O, so they must
# be a POSIX path every worker sees: a Filestore/NFS mount, or a gs:// bucket
# mounted with gcsfuse at the same path on all workers (gs:// URLs themselves
# are not supported). Each worker reads its own data shard and writes its part
# of the checkpoints; only process 0 writes logs.
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
source "$(dirname "$0")/run_args.sh"
REPO_DIR="${REPO_DIR:-~/diffsal_jax}"

# Quote every argument for the remote shell.
EXTRA=""
for arg in "$@"; do
  EXTRA+=" $(printf '%q' "${arg}")"
done
REMOTE="cd ${REPO_DIR} && mkdir -p $(printf '%q' "${WORKDIR}") && \
${PYTHON} -m diffsal_jax.main --config=$(printf '%q' "${CONFIG}") \
--workdir=$(printf '%q' "${WORKDIR}") --distributed=true${EXTRA}"

exec gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" \
    ${PROJECT:+--project="${PROJECT}"} --worker=all --command="${REMOTE}"
