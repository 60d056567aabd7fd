"""The HTML report of a training run's checkpoint on one split.

`main --mode=evaluate --report DIR` and, with `config.final_report`, the end
of training (the demos) write it: the checkpoint's maps of the split go to
`DIR/predictions` (the layout `python -m diffsal_jax.evaluate` reads), are
scored per dataset by that command's library (at the ground truth's
resolution, each dataset's published protocol, the split as the evaluated
set), and
`evaluation.html_report` writes the pages, with two sections added: the
loss and validation curves of `<workdir>/metrics.jsonl` and the config that
produced the checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import ml_collections
from jax.experimental import multihost_utils

from diffsal_jax.data import input_pipeline
from diffsal_jax.evaluation import evaluate as evaluate_lib
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import html_report
from diffsal_jax.evaluation import predictions as predictions_lib
from diffsal_jax.evaluation import scoring
from diffsal_jax.evaluation import shard_ground_truth
from diffsal_jax.reporting import html_page
from diffsal_jax.reporting import svg
from diffsal_jax.training import model_setup
from diffsal_jax.training import train_logging
from diffsal_jax.training import validation

REPORT_DIR = "report"  # <workdir>/report: where the demos write theirs
_VAL_CURVES = (("cc", "CC"), ("nss", "NSS"), ("sim", "SIM"), ("kld", "KLD"))


class SplitGroundTruth(ground_truth.GroundTruthSource):
  """A source restricted to one split's videos: its annotated videos are
  the evaluated set, so DHF1K's sAUC pool draws from the split (as the
  published validation does), not from every video in the shards."""

  def __init__(self, source: ground_truth.GroundTruthSource,
               videos: list[str]):
    self.source, self.split_videos = source, sorted(videos)
    self.dataset = source.dataset

  def videos(self, fold: int | None) -> list[str]:
    return self.split_videos

  def frame_ids(self, video: str) -> list[int]:
    return self.source.frame_ids(video)

  def read_map(self, video: str, frame_id: int):
    return self.source.read_map(video, frame_id)

  def read_fixations(self, video: str, frame_id: int):
    return self.source.read_fixations(video, frame_id)

  def read_frames(self, video: str, frame_ids):
    return self.source.read_frames(video, frame_ids)

  def frame_count_note(self, video: str) -> str:
    return self.source.frame_count_note(video)


def training_sections(workdir: str, checkpoint: str) -> list[str]:
  """HTML of the run's curves (from metrics.jsonl) and its config."""
  sections = []
  path = os.path.join(workdir, train_logging.METRICS_FILE)
  records = train_logging.read_metrics(workdir) if os.path.exists(path) else []
  train = [r for r in records if r.get("kind") == "train" and "loss" in r]
  val = [r for r in records if r.get("kind") == "val"]
  if train or val:
    plots = []
    if train:
      plots.append(svg.line_plot("training loss", "step", {
          "loss": ([r["step"] for r in train], [r["loss"] for r in train])}))
    for name, title in _VAL_CURVES:
      points = [r for r in val if name in r]
      if points:
        plots.append(svg.line_plot(f"validation {title}", "step", {
            title: ([r["step"] for r in points], [r[name] for r in points])}))
    sections.append("<h2>Training</h2><p class=\"note\">From "
                    f"{html_page.escape(path)}.</p><div class=\"plots\">"
                    + "".join(plots) + "</div>")
  # The config that produced the checkpoint: the first config.json above it
  # (a checkpoint of another run), else this run's.
  above = pathlib.Path(checkpoint).resolve().parents
  candidates = [p / model_setup.SAVED_CONFIG for p in list(above)[:3]]
  candidates.append(pathlib.Path(workdir) / model_setup.SAVED_CONFIG)
  for candidate in candidates:
    if candidate.is_file():
      text = json.dumps(json.loads(candidate.read_text()), indent=2,
                        sort_keys=True)
      foreign = not pathlib.Path(checkpoint).resolve().is_relative_to(
          pathlib.Path(workdir).resolve())
      caveat = (" (this run's: none was found beside the checkpoint, which "
                "comes from elsewhere)"
                if foreign and candidate == candidates[-1] else "")
      sections.append(
          f"<h2>Config</h2><p class=\"note\">{html_page.escape(candidate)}"
          f"{caveat}; checkpoint {html_page.escape(checkpoint)}.</p>"
          f"<details><summary>config.json</summary><pre>"
          f"{html_page.escape(text)}</pre></details>")
      break
  return sections


def clear_predictions(report_dir: str) -> str:
  """Empties `report_dir/predictions` (maps of an earlier report would be
  scored too) and returns it; every process calls it."""
  pred_dir = pathlib.Path(report_dir) / "predictions"
  if jax.process_index() == 0 and pred_dir.exists():
    shutil.rmtree(pred_dir)
  multihost_utils.sync_global_devices("run_report cleared")
  return str(pred_dir)


def write_run_report(config: ml_collections.ConfigDict, workdir: str,
                     split: str, checkpoint: str, report_dir: str, *,
                     model: model_setup.Model | None = None,
                     sampler=None, progress: bool = True,
                     predicted: bool = False) -> pathlib.Path | None:
  """Predicts `split` with `checkpoint`, scores it and writes the report
  under `report_dir`; returns its index.html (None on processes other than
  0, which only take part in the prediction). `config.data.shards` must be
  the converted data (it holds the ground truth). Costs one more sampling
  pass over the split, unless `predicted` (the caller wrote the maps into
  `clear_predictions(report_dir)`, as the end of training does with its
  final evaluation), and the evaluation command's scoring (all seven
  metrics, every predicted frame, at the ground truth's resolution)."""
  pred_dir = pathlib.Path(report_dir) / "predictions"
  if not predicted:
    model = model or model_setup.abstract_model(config)
    sampler = sampler or validation.make_sampler(model.model_def, config,
                                                 model.mesh)
    params, batch_stats = model_setup.load_for_eval(model, config, checkpoint)
    clear_predictions(report_dir)
    validation.predict_split(params, batch_stats, sampler, config, model.mesh,
                             split, str(pred_dir), progress=progress)
  # Every process has written its rows before process 0 reads them (a
  # workdir on a file system all hosts share).
  multihost_utils.sync_global_devices("run_report predictions")
  if jax.process_index() != 0:
    return None
  manifest = input_pipeline.validate(config, jax.process_count())
  by_dataset: dict[str, list[str]] = {}
  for index in input_pipeline.split_videos(manifest, config.data, split):
    dataset, video = validation.prediction_folder(manifest.videos[index])
    by_dataset.setdefault(dataset, []).append(video)
  evaluations = []
  for dataset, videos in sorted(by_dataset.items()):
    source = SplitGroundTruth(
        shard_ground_truth.ShardGroundTruth(config.data.shards, dataset),
        videos)
    predictions = {None: predictions_lib.PredictionDir(pred_dir, dataset)}
    frames = sum(len(source.frame_ids(v)) for v in videos)
    # Worker processes start in seconds each: worth it for a large split.
    workers = 1 if frames < 2000 else min(4, os.cpu_count() or 1)
    report = evaluate_lib.evaluate(
        source, list(predictions.items()), scoring.EvalOptions.for_dataset(
            dataset), workers=workers, progress=progress)
    evaluations.append(html_report.Evaluation(report, source, predictions))
  return html_report.write_report(
      evaluations, report_dir,
      sections=training_sections(workdir, checkpoint),
      frames_per_video=config.report_frames,
      title=f"DiffSal: {os.path.basename(os.path.normpath(workdir))}, "
            f"{split} split")
