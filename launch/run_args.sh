# Sourced by the launch scripts (not run on its own): takes [CONFIG] [WORKDIR]
# from the front of the caller's arguments, else from the environment, and
# leaves the remaining arguments (extra flags for diffsal_jax.main) in "$@".
#   CONFIG   config file[:argument]   (default configs/pretrain.py)
#   WORKDIR  run folder               (default runs/<config file name>)
#   PYTHON   interpreter              (default python3)
CONFIG="${1:-${CONFIG:-configs/pretrain.py}}"
shift $(( $# > 0 ? 1 : 0 ))
WORKDIR="${1:-${WORKDIR:-runs/$(basename "${CONFIG%%:*}" .py)}}"
shift $(( $# > 0 ? 1 : 0 ))
PYTHON="${PYTHON:-python3}"
