r"""DiffSal training, evaluation and prediction.

  python -m diffsal_jax.main --config=configs/demo.py --workdir=/tmp/diffsal_demo
  python -m diffsal_jax.main --config=configs/pretrain.py --workdir=RUN \
      --config.data.shards=/data/dhf1k_shards
  python -m diffsal_jax.main --config=configs/av_finetune.py:fold=2 \
      --workdir=RUN_AV/fold_2 --config.init_from=RUN
  python -m diffsal_jax.main --mode=all_folds --config=configs/av_finetune.py \
      --workdir=RUN_AV --config.init_from=RUN
  python -m diffsal_jax.main --mode=evaluate --config=... --workdir=RUN [--split=val] \
      [--report=DIR]
  python -m diffsal_jax.main --mode=predict --config=... --workdir=RUN --split=test

Any config value can be overridden with --config.<key>=<value>; unknown keys,
a missing data folder or a batch size the devices cannot split fail at start.
Library logs (orbax, JAX, grain) are hidden below ERROR; --verbosity=1
shows them. Compiled programs are kept in a per-user cache folder and reused
by the next run (--config.compilation_cache: 'auto', a folder, or '' for off;
see docs/training.md).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffsal_jax import compilation_cache
from diffsal_jax import console
from diffsal_jax.training import checkpointing
from diffsal_jax.training import folds
from diffsal_jax.training import modes
from diffsal_jax.training import train

MODES = ("train", "evaluate", "predict", "all_folds")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:argument]).",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, outputs.")
flags.DEFINE_enum("mode", "train", MODES,
                  "train (resumes if the workdir has checkpoints); evaluate "
                  "a checkpoint; predict a split to PNG maps; all_folds: "
                  "train + test the three AV folds and average.")
flags.DEFINE_string("split", None, "evaluate/predict: split to use (default "
                    "config.final_eval_split).")
flags.DEFINE_string("checkpoint", None, "evaluate/predict: checkpoint folder "
                    "(default: the workdir's, chosen by config.eval_checkpoint).")
flags.DEFINE_string("report", None, "evaluate: also write an HTML report "
                    "of the checkpoint on the split to this folder "
                    "(DIR/index.html: metrics table, per-video plots, frame "
                    "strips, training curves, config).")
flags.DEFINE_enum("distributed", "auto", ("auto", "true", "false"),
                  "Call jax.distributed.initialize() (auto: when a cluster "
                  "launcher's environment variables are present).")
flags.mark_flags_as_required(["config", "workdir"])

def _launched_multi_host() -> bool:
  """A cluster launcher (JAX coordinator, SLURM, MPI) started several tasks."""
  counts = (os.environ.get(v) or "1" for v in ("SLURM_NTASKS",
                                               "OMPI_COMM_WORLD_SIZE",
                                               "JAX_NUM_PROCESSES"))
  # A malformed count also counts: `_cluster_from_environment` names it.
  return "JAX_COORDINATOR_ADDRESS" in os.environ or any(
      not n.isdigit() or int(n) > 1 for n in counts)


def _cluster_from_environment() -> dict[str, int]:
  """num_processes / process_id from JAX_NUM_PROCESSES / JAX_PROCESS_ID.

  jax.distributed.initialize reads JAX_COORDINATOR_ADDRESS and
  JAX_LOCAL_DEVICE_IDS itself but not these two; without a cluster it can
  detect (SLURM, MPI, TPU) it would fail with "Number of processes must be
  defined". Both or neither must be set.
  """
  names = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  values = [os.environ.get(name) for name in names]
  if not any(values):
    return {}
  if not all(values) or not all(v.isdigit() for v in values):
    raise app.UsageError(
        f"set both {names[0]} and {names[1]} as integers (got "
        f"{names[0]}={values[0]!r}, {names[1]}={values[1]!r}), or neither to "
        "let jax.distributed detect SLURM / MPI / Cloud TPU")
  return {"num_processes": int(values[0]), "process_id": int(values[1])}


def _maybe_initialize_distributed() -> None:
  if FLAGS.distributed == "true" or (FLAGS.distributed == "auto" and
                                     _launched_multi_host()):
    jax.distributed.initialize(**_cluster_from_environment())


def _checkpoint(config) -> str:
  if FLAGS.checkpoint:
    return FLAGS.checkpoint
  prefer = "latest" if config.eval_checkpoint == "latest" else "best"
  source = FLAGS.workdir if config.eval_checkpoint in ("best", "latest") else (
      config.eval_checkpoint)
  return checkpointing.resolve_variables_dir(source, prefer)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.report and FLAGS.mode != "evaluate":
    raise app.UsageError("--report belongs to --mode=evaluate (training "
                         "writes <workdir>/report with "
                         "--config.final_report=true)")
  console.quiet_libraries()
  config, workdir = FLAGS.config, FLAGS.workdir
  cache = compilation_cache.enable(config.get("compilation_cache", "auto"))
  _maybe_initialize_distributed()
  logging.info("JAX process %d of %d; %d local of %d devices (%s); "
               "compilation cache: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform, cache or "off")
  split = FLAGS.split or config.final_eval_split
  if FLAGS.mode == "train":
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == "all_folds":
    print(json.dumps(folds.run_all_folds(config, workdir)["mean"], indent=2,
                     sort_keys=True))
  elif FLAGS.mode == "evaluate":
    print(json.dumps(modes.run_evaluate(
        config, workdir, split, _checkpoint(config), FLAGS.report), indent=2,
        sort_keys=True))
  else:
    modes.run_predict(config, workdir, split, _checkpoint(config))
  logging.info("Compilation cache %s", compilation_cache.describe())


if __name__ == "__main__":
  app.run(main)
