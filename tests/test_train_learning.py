"""Tiny models learn the synthetic tasks (the demo configs, on the CPU).

One training run per model; several assertions reuse each run.
"""

import json
import os
import pathlib

import numpy as np
import PIL.Image
import pytest

from diffsal_jax.data.synthetic import synth
from diffsal_jax.data.synthetic import synth_scene
from diffsal_jax.training import checkpointing
from diffsal_jax.data.synthetic import demo_data
from diffsal_jax.data import input_pipeline
from diffsal_jax.evaluation import metrics
from diffsal_jax.training import modes
from diffsal_jax.training import run_report
from diffsal_jax.training import train_logging
from tests import demo_run


def _mean_over_videos(per_video: dict[int, list[float]]) -> float:
  """Scores averaged per video, then over videos, as the final metrics are."""
  return float(np.mean([np.nanmean(v) for v in per_video.values()]))


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
  return _mean_over_videos(per_video)


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory):
  return demo_run.trained_demo(tmp_path_factory)


@pytest.fixture(scope="module")
def visual_bfloat16_run(tmp_path_factory, visual_run):
  """The README's demo with `--config.model.dtype=bfloat16`, on the float32
  run's synthetic data (the same scenes: written once)."""
  _, workdir, _ = visual_run
  return demo_run.trained(
      tmp_path_factory, "demo_bfloat16_run", "demo.py",
      overrides=("--config.model.dtype=bfloat16",
                 f"--config.synthetic_data.dir={workdir / 'synthetic_data'}"))


def _assert_learned(config, results) -> None:
  """Seeds 0-2 reach val CC 0.86-0.93 in either dtype (docs/training.md)."""
  baseline = _centre_bias_cc(config, config.final_eval_split)
  print(f"held-out: {json.dumps(results)}; centre bias CC {baseline:.3f}")
  assert results["cc"] >= 0.8
  assert results["cc"] > baseline + 0.3
  assert results["nss"] > 1.0 and results["auc_judd"] > 0.8


def test_demo_reaches_cc_08_and_beats_centre_bias(visual_run):
  config, _, results = visual_run
  _assert_learned(config, results)


def test_demo_in_bfloat16_reaches_cc_08_and_beats_centre_bias(
    visual_bfloat16_run):
  """The same demo computing in bfloat16 (float32 parameters, Adam state and
  loss) learns as the float32 one does."""
  config, _, results = visual_bfloat16_run
  assert config.model.dtype == "bfloat16"
  _assert_learned(config, results)


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


def test_demo_records_its_start_up_with_the_compilation_cache(visual_run):
  """The README command uses the cache by default ('auto' follows the
  session's JAX_COMPILATION_CACHE_DIR) and records its start-up."""
  _, workdir, _ = visual_run
  with open(pathlib.Path(workdir) / train_logging.STARTUP_FILE) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 1, records
  record = records[0]
  assert record["first_step"] == 1 and not record["resumed"]
  assert record["compilation_cache"] == os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert record["cache_hits"] + record["cache_writes"] >= 2   # init, step
  assert 0 < record["train_step_compile_seconds"] < record[
      "seconds_to_first_step"]


def test_demo_writes_its_html_report(visual_run):
  """The README's quick start links <workdir>/report/index.html."""
  _, workdir, results = visual_run
  report = pathlib.Path(workdir) / run_report.REPORT_DIR
  page = (report / "index.html").read_text()
  saved = json.loads((report / "results.json").read_text())
  overall = saved["datasets"]["dhf1k"]["overall"]
  # The published DHF1K validation clips (4 frames) predict frames 3..34 of
  # each 40-frame video: 8 annotated frames per video have no map.
  assert overall["n_videos"] == 4 and overall["n_missing_frames"] == 4 * 8
  # Scored at the ground truth's resolution by the evaluation command's
  # rules: close to, not equal to, the in-training metrics.
  assert abs(overall["mean"]["cc"] - results["cc"]) < 0.05
  assert f"<td>{overall['mean']['cc']:.4f}</td>" in page
  assert "training loss" in page and "validation CC" in page
  assert "<h2>Config</h2>" in page
  pictures = [p for p in (report / "videos").rglob("*.jpg")]
  assert len(pictures) == 4 * 6 * 4   # videos x strip frames x panels


def test_evaluate_and_predict_modes(visual_run, tmp_path):
  """main's evaluate and predict modes on the run's best checkpoint (their
  outputs go to another workdir: the run is shared with other tests)."""
  config, workdir, results = visual_run
  checkpoint = checkpointing.resolve_variables_dir(str(workdir), "best")
  scored = modes.run_evaluate(config, str(tmp_path), "val", checkpoint)
  assert scored["cc"] == pytest.approx(results["cc"], rel=1e-5)
  assert (tmp_path / "eval_val.json").is_file()
  out = pathlib.Path(modes.run_predict(config, str(tmp_path), "val",
                                             checkpoint))
  pngs = sorted(out.glob("dhf1k/*/*.png"))
  table = input_pipeline.clip_table(input_pipeline.validate(config), config,
                                    "val")
  assert len(pngs) == len(table)
  assert {p.parent.name for p in pngs} == {"0601", "0602", "0603", "0604"}
  # The run's report scored the maps its final evaluation wrote (no second
  # sampling pass): the maps a separate prediction of the split gives, up to
  # the rounding of the other compile flags here (one 8-bit level).
  written = pathlib.Path(workdir) / run_report.REPORT_DIR / "predictions"
  assert (sorted(p.relative_to(written) for p in written.rglob("*.png")) ==
          [p.relative_to(out) for p in pngs])
  for png in pngs:
    a = np.asarray(PIL.Image.open(png), np.int16)
    b = np.asarray(PIL.Image.open(written / png.relative_to(out)), np.int16)
    assert np.abs(a - b).max() <= 1, png


def _audio_blind_cc(config, split: str) -> tuple[float, float]:
  """(CC of the best map drawn without the sound, CC of the scenes' own maps).

  Without the sound nothing tells the two discs apart, so the best such map
  is the true fixation blob plus the same blob moved onto the other disc.
  Both come from the regenerated scenes, per video then over videos; the
  second (about 1) checks that scenes and shards line up.
  """
  s = config.synthetic_data
  spec = demo_data.scene_spec(s)
  shape = (spec.height, spec.width)
  assert tuple(config.model.image_size) == shape   # maps need no resizing
  manifest = input_pipeline.validate(config)
  numbers = {synth.av_video_name(i): i for i in range(s.videos_per_dataset)}
  scenes, blind, own = {}, {}, {}
  for batch in input_pipeline.create_eval_dataset(config, split):
    for gt, video, frame, valid in zip(batch["map"], batch["video"],
                                       batch["frame"], batch["valid"]):
      if not valid:
        continue
      video = int(video)
      if video not in scenes:
        entry = manifest.videos[video]
        scenes[video] = synth.av_scene(
            spec, s.seed, list(s.av_datasets).index(entry.dataset),
            numbers[entry.name])
      scene, k = scenes[video], int(frame) - 1
      speaker, fixations = scene.speakers[k], scene.fixations[k]
      shift = np.round(scene.discs[k, 1 - speaker] - scene.discs[k, speaker])
      moved = np.clip(fixations + shift, 0, np.array(shape) - 1)
      both = synth_scene.saliency_map(np.concatenate([fixations, moved]),
                                      shape, sigma=min(shape) * synth_scene.AV_MAP_SIGMA)
      blind.setdefault(video, []).append(metrics.cc(both, gt))
      own.setdefault(video, []).append(metrics.cc(scene.maps[k], gt))
  return _mean_over_videos(blind), _mean_over_videos(own)


@pytest.fixture(scope="module")
def av_run(tmp_path_factory):
  return demo_run.trained(tmp_path_factory, "demo_av_run", "demo_av.py")


def test_audio_visual_demo_beats_the_best_map_without_sound(av_run):
  """Only the sound tells which of two alike discs is looked at; the
  audio-visual demo must do clearly better than any map drawn without it."""
  config, _, results = av_run
  blind, own = _audio_blind_cc(config, config.final_eval_split)
  print(f"held-out ({config.final_eval_split}) CC: audio-visual "
        f"{results['cc']:.3f}; both discs (no sound) {blind:.3f}")
  assert own > 0.99
  assert results["cc"] > blind + 0.05


def test_audio_visual_model_beats_visual_model_on_av_data(av_run,
                                                          tmp_path_factory):
  """The visual model, trained alike on the same data, can only spread its
  map over both discs (measured: visual 0.585, audio-visual 0.858)."""
  _, av_workdir, av = av_run
  _, _, visual = demo_run.trained(
      tmp_path_factory, "demo_av_visual_run", "demo_av.py", "variant=visual",
      (f"--config.synthetic_data.dir={av_workdir / 'synthetic_data'}",
       # The HTML report is the audio-visual run's to check.
       "--config.final_report=false"))
  print(f"held-out CC: audio-visual {av['cc']:.3f}, visual {visual['cc']:.3f}")
  assert av["cc"] > visual["cc"] + 0.15
