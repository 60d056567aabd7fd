"""Tiny models learn the synthetic tasks (the demo configs, on the CPU).

One training run per model; several assertions reuse each run.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from configs import demo_av
from diffsal_jax import checkpointing
from diffsal_jax import input_pipeline
from diffsal_jax import metrics
from diffsal_jax import model_setup
from diffsal_jax import train
from diffsal_jax import train_logging
from tests import demo_run


def _centre_bias_cc(config, split: str) -> float:
  """CC of a fixed centred Gaussian, averaged per video then over videos."""
  h, w = config.model.image_size
  yy, xx = np.mgrid[0:h, 0:w]
  centre = np.exp(-((yy - (h - 1) / 2) ** 2 / (2 * (h / 4) ** 2) +
                    (xx - (w - 1) / 2) ** 2 / (2 * (w / 4) ** 2)))
  per_video = {}
  for batch in input_pipeline.create_eval_dataset(config, split):
    for gt, video, valid in zip(batch["map"], batch["video"], batch["valid"]):
      if valid:
        per_video.setdefault(int(video), []).append(metrics.cc(centre, gt))
  return float(np.mean([np.nanmean(v) for v in per_video.values()]))


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory):
  return demo_run.trained_demo(tmp_path_factory)


def test_demo_reaches_cc_07_and_beats_centre_bias(visual_run):
  config, _, results = visual_run
  baseline = _centre_bias_cc(config, config.final_eval_split)
  print(f"held-out: {json.dumps(results)}; centre bias CC {baseline:.3f}")
  assert results["cc"] >= 0.7
  assert results["cc"] > baseline + 0.3
  assert results["nss"] > 1.0 and results["auc_judd"] > 0.8


def test_demo_logged_training_and_validation(visual_run):
  config, workdir, _ = visual_run
  records = train_logging.read_metrics(workdir)
  losses = [r["loss"] for r in records if r["kind"] == "train"]
  assert losses[-1] < 0.5 * losses[0]
  val_steps = [r["step"] for r in records if r["kind"] == "val"]
  assert val_steps == list(range(config.eval_every_steps,
                                 config.num_train_steps + 1,
                                 config.eval_every_steps))
  assert all({"loss", "lr", "grad_norm", "examples_per_s"} <= set(r)
             for r in records if r["kind"] == "train")


def test_evaluate_and_predict_modes(visual_run, tmp_path):
  """main's evaluate and predict modes on the run's best checkpoint (their
  outputs go to another workdir: the run is shared with other tests)."""
  config, workdir, results = visual_run
  checkpoint = checkpointing.resolve_variables_dir(str(workdir), "best")
  scored = model_setup.run_evaluate(config, str(tmp_path), "val", checkpoint)
  assert scored["cc"] == pytest.approx(results["cc"], rel=1e-5)
  assert (tmp_path / "eval_val.json").is_file()
  out = pathlib.Path(model_setup.run_predict(config, str(tmp_path), "val",
                                             checkpoint))
  pngs = sorted(out.glob("dhf1k/*/*.png"))
  table = input_pipeline.clip_table(input_pipeline.validate(config), config,
                                    "val")
  assert len(pngs) == len(table)
  assert {p.parent.name for p in pngs} == {"0601", "0602", "0603", "0604"}


AV_STEPS = 1500   # seed 0: val CC 0.10 after 375 steps, 0.88 after 750
LONG_TESTS = os.environ.get("DIFFSAL_LONG_TESTS") == "1"


def _av_run(tmp_path_factory, variant):
  config = demo_av.get_config(f"variant={variant}")
  config.num_train_steps = AV_STEPS
  config.eval_every_steps = config.checkpoint_every_steps = AV_STEPS // 2
  config.mesh_data_axis = 1
  config.seed = 0
  root = tmp_path_factory.getbasetemp() / "av_data"
  config.synthetic_data.dir = str(root)  # both models see the same data
  return train.train_and_evaluate(
      config, str(tmp_path_factory.mktemp(f"av_{variant}")))


@pytest.mark.skipif(
    not LONG_TESTS, reason="two 4-minute trainings whose outcome depends on "
    "the seed and the CPU's float rounding (measured: seed 0 learns the audio "
    "cue, test CC 0.91; seed 1 stays at the visual model's 0.57); set "
    "DIFFSAL_LONG_TESTS=1")
def test_audio_visual_model_beats_visual_model_on_av_data(tmp_path_factory):
  """Only the sound tells which of two alike discs is looked at, so the
  visual model cannot do better than both discs (CC about 0.5-0.6)."""
  av = _av_run(tmp_path_factory, "av")
  visual = _av_run(tmp_path_factory, "visual")
  print(f"held-out (test split) CC: audio-visual {av['cc']:.3f}, "
        f"visual {visual['cc']:.3f}")
  assert av["cc"] > visual["cc"] + 0.15
  assert av["cc"] >= 0.7
