"""The all-folds driver: one fresh run per fold, restartable, averaged."""

import json

import pytest

from configs import av_finetune
from diffsal_jax.training import folds
from diffsal_jax.training import train


def test_all_folds_trains_each_fold_fresh_and_averages(tmp_path, monkeypatch):
  calls = []

  def fake_train(config, workdir):
    calls.append((config.data.fold, config.init_from, workdir))
    if config.data.fold == 3 and len(calls) == 3:
      raise KeyboardInterrupt   # interrupted during the last fold
    metrics = {"cc": 0.1 * config.data.fold, "nss": float(config.data.fold)}
    with open(f"{workdir}/{train.FINAL_METRICS_FILE}", "w") as f:
      json.dump({"split": "test", **metrics}, f)
    return metrics

  def fake_train_making_dir(config, workdir):
    (tmp_path / workdir.rsplit("/", 1)[1]).mkdir(exist_ok=True)
    return fake_train(config, workdir)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train_making_dir)
  config = av_finetune.get_config()
  config.init_from = "/ckpt/pretrain"
  with pytest.raises(KeyboardInterrupt):
    folds.run_all_folds(config, str(tmp_path))
  results = folds.run_all_folds(config, str(tmp_path))   # restarted
  # Folds 1 and 2 finished before the interruption and are not retrained.
  assert [c[0] for c in calls] == [1, 2, 3, 3]
  assert all(c[1] == "/ckpt/pretrain" for c in calls)  # each from init_from
  assert [c[2] for c in calls[:3]] == [str(tmp_path / f"fold_{k}")
                                       for k in (1, 2, 3)]
  assert results["mean"] == pytest.approx({"cc": 0.2, "nss": 2.0})
  assert results["fold_2"] == {"cc": pytest.approx(0.2), "nss": 2.0}
  saved = json.loads((tmp_path / folds.ALL_FOLDS_FILE).read_text())
  assert saved["mean"] == pytest.approx(results["mean"])
