"""What every run does first, and main.py's `evaluate` and `predict` modes.

`prepare_run` validates the config and makes its data available: the demo
configs ask for a synthetic release, built here on first use (not while
building a model). The two modes load a saved checkpoint and score it or
write its maps for a split.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from diffsal_jax.data import atomic_files
from diffsal_jax.data.synthetic import demo_data
from diffsal_jax.training import model_setup
from diffsal_jax.training import run_report
from diffsal_jax.training import train_config
from diffsal_jax.training import validation


def prepare_run(config: ml_collections.ConfigDict, workdir: str
                ) -> ml_collections.ConfigDict:
  """Validates `config` (ConfigError naming the field), then returns a copy
  whose `data.shards` is the demo's synthetic set when
  `config.synthetic_data.enabled` (built under `workdir` if absent)."""
  train_config.validate_config(config)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.synthetic_data.enabled:
    config.data.shards = demo_data.ensure_synthetic_shards(config, workdir)
  return config


def run_evaluate(config: ml_collections.ConfigDict, workdir: str, split: str,
                 checkpoint: str, report_dir: str | None = None
                 ) -> dict[str, float]:
  """`--mode=evaluate`: scores `checkpoint`, writes <workdir>/eval_<split>.json
  and, with `report_dir`, the HTML report there (`run_report`)."""
  config = prepare_run(config, workdir)
  model = model_setup.abstract_model(config)
  sampler = validation.make_sampler(model.model_def, config, model.mesh)
  results = model_setup.evaluate_checkpoint(config, checkpoint, split,
                                            model=model, sampler=sampler)
  if jax.process_index() == 0:
    atomic_files.write_json(
        os.path.join(workdir, f"eval_{split}.json"),
        {"split": split, "checkpoint": checkpoint, **results},
        indent=2, sort_keys=True)
  if report_dir:
    index = run_report.write_run_report(config, workdir, split, checkpoint,
                                        report_dir, model=model,
                                        sampler=sampler)
    if index:
      logging.info("Report: %s", index)
  return results


def run_predict(config: ml_collections.ConfigDict, workdir: str, split: str,
                checkpoint: str) -> str:
  """`--mode=predict`: PNG maps under <workdir>/predictions/<split>."""
  config = prepare_run(config, workdir)
  model = model_setup.abstract_model(config)
  params, batch_stats = model_setup.load_for_eval(model, config, checkpoint)
  sampler = validation.make_sampler(model.model_def, config, model.mesh)
  out_dir = os.path.join(workdir, "predictions", split)
  count = validation.predict_split(params, batch_stats, sampler, config,
                                   model.mesh, split, out_dir)
  logging.info("wrote %d maps under %s", count, out_dir)
  return out_dir
