"""Start-up validation, the lr schedule and the best-checkpoint score."""

import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import av_finetune
from configs import demo
from configs import pretrain
from diffsal_jax.training import train
from diffsal_jax.training import train_config
from diffsal_jax.training import train_logging
from diffsal_jax.training import train_state


@pytest.fixture
def config(tmp_path):
  c = demo.get_config()
  c.synthetic_data.enabled = False
  c.data.shards = str(tmp_path)
  return c


def test_valid_config_passes(config):
  train_config.validate_config(config)


@pytest.mark.parametrize("mutate,field", [
    (lambda c: setattr(c, "learning_rat", 1.0), "config.learning_rat"),
    (lambda c: setattr(c.data, "shard", "x"), "config.data.shard"),
    (lambda c: setattr(c.model.unet, "depth", 2), "config.model.unet.depth"),
    (lambda c: setattr(c.data, "shards", "/no/such/dir"), "config.data.shards"),
    (lambda c: setattr(c, "batch_size", 6), "config.batch_size"),
    (lambda c: setattr(c, "eval_batch_size", 2), "config.eval_batch_size"),
    (lambda c: setattr(c, "param_sharding", "tp"), "config.param_sharding"),
    (lambda c: setattr(c.model, "ops", "gpu"), "config.model.ops"),
    (lambda c: setattr(c, "init_from", "/no/ckpt"), "config.init_from"),
])
def test_bad_config_fails_naming_the_field(config, mutate, field):
  assert jax.device_count() == 4  # tests/conftest.py forces 4 host devices
  with config.unlocked():
    mutate(config)
  with pytest.raises(train_config.ConfigError, match=field.replace(".", r"\.")):
    train_config.validate_config(config)


def _parse_config_flag(argv, monkeypatch) -> flags.FlagValues:
  # config_flags reads the overrides from sys.argv.
  monkeypatch.setattr(sys, "argv", argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True)
  flag_values(argv)
  return flag_values


def test_command_line_override_of_unknown_key_fails(monkeypatch):
  with pytest.raises(Exception, match="learning_rat"):
    _parse_config_flag(["prog", "--config=configs/demo.py",
                        "--config.learning_rat=0.1"], monkeypatch)
  flag_values = _parse_config_flag(
      ["prog", "--config=configs/av_finetune.py:fold=3",
       "--config.learning_rate=0.5"], monkeypatch)
  assert flag_values.config.data.fold == 3
  assert flag_values.config.learning_rate == 0.5


def test_experiment_configs_hold_published_values():
  pre, av = pretrain.get_config(), av_finetune.get_config("fold=2")
  for c in (pre, av):
    assert (c.learning_rate, c.adam_eps, c.grad_clip_norm) == (1e-4, 1e-8, 1.0)
    assert tuple(c.lr_decay_fractions) == (0.5, 0.75)
    assert c.diffusion.sampling_steps == 1 and c.diffusion.eta == 0.0
    assert c.batch_size == 16 and tuple(c.frozen_subtrees) == ("audio_net",)
  assert pre.num_epochs == 3 and pre.model.variant == "visual"
  assert av.num_epochs == 4 and av.model.variant == "av"
  assert av.data.fold == 2 and av.final_eval_split == "test"
  assert av.eval_split == "val" and av.data.val_videos_per_dataset >= 1
  assert tuple(pre.model.image_size) == (224, 384)
  with pytest.raises(ValueError, match="unknown argument"):
    av_finetune.get_config("fodl=2")


@pytest.mark.parametrize("epochs,expected", [
    # MultiStepLR(milestones=[int(0.5 E), int(0.75 E)]) stepped per epoch.
    (3, [1e-4, 1e-5, 1e-6]),
    (4, [1e-4, 1e-4, 1e-5, 1e-6]),
    (1, [1e-4]),
])
def test_lr_schedule_matches_published_multistep(config, epochs, expected):
  config.num_train_steps, config.num_epochs = -1, epochs
  config.learning_rate, config.lr_decay_fractions = 1e-4, (0.5, 0.75)
  lr = train_state.learning_rate_fn(config, steps_per_epoch=10)
  per_step = np.array([float(lr(jnp.int32(s))) for s in range(10 * epochs)])
  np.testing.assert_allclose(per_step, np.repeat(expected, 10), rtol=1e-6)


def test_best_metric_expression():
  scores = {"cc": 0.5, "nss": 2.0, "sim": 0.25, "kld": 1.0}
  assert train.score_of(scores, "cc+nss+sim") == pytest.approx(2.75)
  assert train.score_of(scores, "cc - kld") == pytest.approx(-0.5)
  with pytest.raises(ValueError, match="auc"):
    train.score_of(scores, "cc+auc")


def test_non_finite_loss_stops_naming_the_step():
  loop = types.SimpleNamespace(logger=None)
  pending = [{"loss": 1.0, "grad_norm": 1.0, "lr": 1.0},
             {"loss": float("nan"), "grad_norm": 1.0, "lr": 1.0},
             {"loss": 2.0, "grad_norm": 1.0, "lr": 1.0}]
  with pytest.raises(FloatingPointError, match="at step 29"):
    train._log_train(loop, 30, pending, started=0.0, examples=24)  # pylint: disable=protected-access


def test_metrics_log_drops_records_after_the_restored_step(tmp_path):
  path = tmp_path / train_logging.METRICS_FILE
  lines = [json.dumps({"step": s, "kind": "train", "loss": 1.0})
           for s in range(1, 6)]
  path.write_text("\n".join(lines) + '\n{"step": 6, "kind": "tr')  # cut by a kill
  logger = train_logging.TrainLogger(str(tmp_path), total_steps=10,
                                     initial_step=3, show_progress=False)
  logger.write(4, "train", {"loss": 0.5})
  logger.close()
  records = train_logging.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert records[-1]["loss"] == 0.5


def test_init_from_list_is_validated_path_by_path(config, tmp_path,
                                                  monkeypatch):
  """The README's fine-tuning form `--config.init_from=A,B`."""
  first, second = tmp_path / "vggish", tmp_path / "pretrain"
  first.mkdir()
  second.mkdir()
  flag_values = _parse_config_flag(
      ["prog", "--config=configs/av_finetune.py:fold=2",
       f"--config.init_from={first},{second}",
       f"--config.data.shards={tmp_path}"], monkeypatch)
  parsed = flag_values.config
  assert train_config.init_from_paths(parsed) == [str(first), str(second)]
  train_config.validate_config(parsed)
  with parsed.unlocked():
    parsed.init_from = f"{first},{tmp_path / 'missing'}"
  with pytest.raises(train_config.ConfigError,
                     match=r"'[^']*missing' is not a directory") as error:
    train_config.validate_config(parsed)
  assert "vggish" not in str(error.value)   # only the bad path is named


def test_locked_base_rejects_an_unknown_key_where_it_is_written():
  config = demo.get_config()
  with pytest.raises(AttributeError, match="learning_rat"):
    config.learning_rat = 0.1
  with pytest.raises(AttributeError, match="audio_patches"):
    config.model.audio_patches = 9   # derived from clip_len, not a setting
