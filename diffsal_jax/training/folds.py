"""Audio-visual fine-tuning on all three folds, then the fold average.

Each fold trains in `<workdir>/fold_<k>` from the same `config.init_from`
(the pre-training checkpoint), validates on videos held out of that fold's
training list, and is scored on the fold's test list with its best
checkpoint; the test metrics are then averaged over the folds, as published.
A fold that already finished is not retrained (its final metrics are read
back), so the driver can be restarted after an interruption.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from diffsal_jax.data import atomic_files
from diffsal_jax.training import train

FOLDS = (1, 2, 3)
ALL_FOLDS_FILE = "all_folds_metrics.json"


def fold_config(config: ml_collections.ConfigDict,
                fold: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.fold = fold
  return config


def run_all_folds(config: ml_collections.ConfigDict,
                  workdir: str) -> dict[str, dict[str, float]]:
  """Trains and tests every fold; returns {'fold_k': ..., 'mean': ...}."""
  results = {}
  for fold in FOLDS:
    fold_dir = os.path.join(workdir, f"fold_{fold}")
    done = os.path.join(fold_dir, train.FINAL_METRICS_FILE)
    if os.path.isfile(done):
      with open(done) as f:
        metrics = json.load(f)
      metrics.pop("split", None)
      logging.info("fold %d already finished: %s", fold, metrics)
    else:
      metrics = train.train_and_evaluate(fold_config(config, fold), fold_dir)
      if not metrics:
        raise SystemExit(f"fold {fold} was preempted; rerun to continue")
    results[f"fold_{fold}"] = metrics
  names = sorted(set.intersection(*(set(m) for m in results.values())))
  results["mean"] = {n: float(np.nanmean([results[f"fold_{k}"][n]
                                          for k in FOLDS])) for n in names}
  atomic_files.write_json(os.path.join(workdir, ALL_FOLDS_FILE), results,
                          indent=2, sort_keys=True)
  return results
