"""Every training/evaluation setting, with defaults, and start-up validation.

The experiment files under `configs/` start from `base_config()`, a locked
ConfigDict, and change values only: a typo in a key fails where it is
written. `validate_config` is the one start-up check (it also rejects
unknown keys of configs built elsewhere, e.g. a run's saved config.json, and
reports the data fields' rules of `input_pipeline.config_problems`).
Values follow the published `cfgs/diffusion.yml` / `util/utils.py` unless
noted.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from diffsal_jax.models import config as model_config_lib
from diffsal_jax.models import op_paths


def base_config(variant: str = "visual") -> ml_collections.ConfigDict:
  """All fields with their defaults (published values where there is one)."""
  from diffsal_jax.data import input_pipeline  # Lazy: keeps this module light.
  c = ml_collections.ConfigDict()
  c.model = model_config_lib.published_model_config(variant)
  c.data = input_pipeline.default_data_config()
  # Frames leave the loader as uint8 and are normalised on the device: a
  # quarter of the bytes through the workers and the host-device copy.
  c.data.image_dtype = "uint8"
  c.seed = 0
  # Global batch over all devices (published: 4 per GPU x 4 GPUs).
  c.batch_size = 16
  c.num_epochs = 3                  # published DHF1K pre-training
  c.num_train_steps = -1            # > 0 overrides num_epochs (demos, tests)
  c.learning_rate = 1e-4            # optim.lr
  c.adam_b1 = 0.9                   # optim.beta1
  c.adam_b2 = 0.999                 # torch default
  c.adam_eps = 1e-8                 # optim.eps
  c.grad_clip_norm = 1.0            # optim.grad_clip
  # MultiStepLR(milestones=[int(0.5 E), int(0.75 E)], gamma=0.1), per epoch.
  c.lr_decay_fractions = (0.5, 0.75)
  c.lr_decay_factor = 0.1
  c.frozen_subtrees = ("audio_net",)   # VGGish runs without gradient
  # Checkpoints applied in order before training, comma-separated (e.g. the
  # converted VGGish, then the pre-training run); see `init_from_paths`.
  c.init_from = ""
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.per_sample_t = False  # published: one t per batch
  # Train on t in [train_t_min, T) only (published: 0). Small from-scratch
  # models otherwise learn to copy x_t and ignore the video for a long time.
  c.diffusion.train_t_min = 0
  c.diffusion.sampling_steps = 1    # sampling.timesteps
  c.diffusion.eta = 0.0             # sampling.eta
  # Device mesh: batch split on 'data'; 'fsdp' also splits parameters there.
  c.mesh_data_axis = -1             # -1: all devices
  c.param_sharding = "replicated"   # or "fsdp"
  c.prefetch_to_device = 2
  # Persistent XLA compilation cache: 'auto' ($JAX_COMPILATION_CACHE_DIR or
  # ~/.cache/diffsal_jax/jax_cache), a folder, or '' for off
  # (diffsal_jax/compilation_cache.py).
  c.compilation_cache = "auto"
  # Logging, evaluation and checkpoints (-1: once per epoch).
  c.log_every_steps = 50
  c.eval_every_steps = -1
  c.checkpoint_every_steps = -1
  c.max_checkpoints_to_keep = 2
  c.eval_split = "val"
  c.eval_batch_size = 16
  c.eval_max_batches = -1           # -1: the whole split
  c.final_eval_split = "val"        # scored with AUC-J/sAUC after training
  c.best_metric = "cc+nss+sim"      # published keeps max(cc + nss + sim)
  c.eval_checkpoint = "best"        # evaluate/predict: 'best', 'latest' or a dir
  c.auc_max_frames = 2000           # frames scored with AUC-J/sAUC at the end
  # After training: <workdir>/report/index.html, the HTML report of the best
  # checkpoint on final_eval_split (training/run_report.py; the demos say True).
  c.final_report = False
  c.report_frames = 6               # frames per video in the report's strips
  # Demo only: build a synthetic release + shards (data_prep) if absent and
  # train on it; config.data.shards is then set to <dir>/shards.
  c.synthetic_data = ml_collections.ConfigDict()
  c.synthetic_data.enabled = False
  c.synthetic_data.dir = ""         # default <workdir>/synthetic_data
  c.synthetic_data.layout = "dhf1k"  # or "av"
  c.synthetic_data.train_videos = 8  # dhf1k layout
  c.synthetic_data.val_videos = 2
  c.synthetic_data.av_datasets = ("DIEM", "AVAD")  # av layout
  c.synthetic_data.videos_per_dataset = 6
  c.synthetic_data.frames_per_video = 40
  c.synthetic_data.fps = 25.0
  c.synthetic_data.raw_size = (60, 96)
  c.synthetic_data.seed = 0
  # Locked: a config file or override naming an unknown key fails at once.
  c.lock()
  return c


class ConfigError(ValueError):
  """A configuration problem found before any work starts."""


def _unknown_keys(config: Any, schema: Any, prefix: str) -> list[str]:
  if not isinstance(config, ml_collections.ConfigDict):
    return []
  problems = []
  for key in config.keys():
    name = f"{prefix}.{key}"
    if not isinstance(schema, ml_collections.ConfigDict) or key not in schema:
      known = sorted(schema.keys()) if isinstance(
          schema, ml_collections.ConfigDict) else []
      problems.append(f"{name} is not a known setting (known here: "
                      f"{', '.join(known)})")
    else:
      problems.extend(_unknown_keys(config[key], schema[key], name))
  return problems


def init_from_paths(config: ml_collections.ConfigDict) -> list[str]:
  """`config.init_from` as a list: 'A,B' -> ['A', 'B'] ('' -> [])."""
  return [path.strip() for path in config.init_from.split(",") if path.strip()]


def data_parallel_size(config: ml_collections.ConfigDict) -> int:
  n = config.mesh_data_axis
  return jax.device_count() if n == -1 else n


def validate_config(config: ml_collections.ConfigDict, *,
                    needs_data: bool = True) -> None:
  """Fails with ConfigError naming the offending field."""
  from diffsal_jax.data import input_pipeline  # Lazy: keeps this module light.
  variant = config.model.get("variant", "visual")
  problems = _unknown_keys(config, base_config(variant), "config")
  if problems:   # the rules below read known fields only
    raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems))
  # The data fields' rules live with the loader that reads them.
  problems = input_pipeline.config_problems(
      config, jax.process_count(),
      needs_shards=needs_data and not config.synthetic_data.enabled)
  n_data = data_parallel_size(config)
  if n_data < 1 or jax.device_count() % n_data:
    problems.append(f"config.mesh_data_axis={config.mesh_data_axis} must "
                    f"divide the {jax.device_count()} devices")
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if value < 1 or value % max(n_data, 1) or value % jax.process_count():
      problems.append(
          f"config.{field}={value} must be a positive multiple of the "
          f"{n_data} data-parallel devices and {jax.process_count()} "
          f"processes (set --config.{field} to a multiple)")
  if config.model.get("ops", "auto") not in op_paths.PATHS:
    problems.append(f"config.model.ops={config.model.ops!r} must be one of "
                    f"{op_paths.PATHS} (see docs/training.md)")
  if config.report_frames < 1:
    problems.append(f"config.report_frames={config.report_frames} must be at "
                    "least 1 (frames per video in the HTML report)")
  if config.param_sharding not in ("replicated", "fsdp"):
    problems.append(f"config.param_sharding={config.param_sharding!r} must be "
                    "'replicated' or 'fsdp'")
  for path in init_from_paths(config):
    if not os.path.isdir(path):
      problems.append(f"config.init_from: {path!r} is not a directory (a "
                      "converted or trained checkpoint; several are "
                      "separated by commas)")
  if problems:
    raise ConfigError("Invalid configuration:\n  " + "\n  ".join(problems))
