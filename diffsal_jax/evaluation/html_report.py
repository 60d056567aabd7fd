"""The HTML report of an evaluation: `<out>/index.html` and a page per video.

Written by `python -m diffsal_jax.evaluate --report DIR` (and by `main
--mode=evaluate --report DIR` and the demo, which add their training curves
as extra sections). From the JSON report of `evaluate.evaluate` it shows:

  * the summary table (every metric per fold and pooled) and, under it, the
    conventions the numbers were computed with;
  * the videos or frames that had no prediction, and pictures that could
    not be drawn (never a crash: they are listed instead);
  * per metric, a strip plot of the per-video means of each fold;
  * the five best and five worst videos by CC, and a table of every video,
    each linked to its page;
  * per video: `frames_per_video` evenly spaced scored frames as frame |
    ground truth (map with fixations in red) | prediction | overlay, and
    the per-frame CC and NSS over time.

`results.json` beside `index.html` holds the evaluation report the tables
show. Thumbnails are `thumb_width` pixels wide, JPEG, under `videos/`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import math
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from diffsal_jax.data import atomic_files
from diffsal_jax.data import release_files
from diffsal_jax.data import shards
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import predictions as predictions_lib
from diffsal_jax.evaluation import report as report_lib
from diffsal_jax.reporting import html_page
from diffsal_jax.reporting import panels
from diffsal_jax.reporting import svg

RESULTS_NAME = "results.json"
PANELS = ("frame", "ground truth", "prediction", "overlay")
# What reading a picture may raise; each becomes a line of the report.
_READ_ERRORS = (OSError, ValueError, KeyError, release_files.ReleaseError,
                shards.DamagedShardError)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One dataset's evaluation: the report of `evaluate.evaluate`, and the
  ground truth and predictions (per fold, None for unfolded) it scored."""
  report: dict
  source: ground_truth.GroundTruthSource
  predictions: Mapping[int | None, predictions_lib.PredictionSource]


def _slug(dataset: str, fold: str, video: str) -> str:
  """A file name for a video's page: safe characters only, with a short
  hash when the name had to change (so two names never collide)."""
  text = f"{dataset}_{fold}_{video}"
  safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)
  if safe != text:
    safe += "-" + hashlib.sha1(text.encode()).hexdigest()[:6]
  return safe


def _conventions(report: dict) -> str:
  options = report["options"]
  sauc = ("negatives from the fixations of "
          f"{options['n_other_frames']} random other annotated frames (DHF1K's "
          "rule)" if options["sauc_other"] == "dhf1k" else
          "negatives from every other fixated pixel of the same video "
          "(STAViS' createShuffmap1)")
  blur = ("the STAViS post-processing (scaled to its maximum, Gaussian blur "
          "sigma 2) applied to each prediction first"
          if options["postprocess"] == "stavis" else "no post-processing")
  return (
      "<p class=\"note\">Conventions: each prediction is resized to its "
      "ground-truth map's resolution with MATLAB's bicubic imresize and "
      f"scored there; {blur}; sAUC {sauc}; AUC-B and sAUC average "
      f"{options['n_splits']} draws at threshold step {options['step']} "
      f"(seed {options['seed']}); degenerate frames scored by the "
      f"'{options['edge_cases']}' rule. Video means skip NaN frames; fold "
      "means average videos; the pooled row averages the videos of all "
      "folds (STAViS' scripts).</p>")


def mean_over_datasets(evaluations: Sequence[Evaluation]) -> dict[str, float]:
  """Each metric's mean over the datasets' pooled means (NaN skipped)."""
  return {name: report_lib.nanmean([e.report["overall"]["mean"][name]
                                    for e in evaluations])
          for name in metrics.METRIC_NAMES}


def _summary(evaluations: Sequence[Evaluation]) -> str:
  head = ["dataset", "fold", "videos", "frames", "frames without prediction",
          *report_lib.METRIC_TITLES]
  rows = [[html_page.escape(e.report["dataset"]), html_page.escape(label),
           str(n_videos), str(n_frames), str(n_missing),
           *(html_page.number(means[n]) for n in metrics.METRIC_NAMES)]
          for e in evaluations
          for label, n_videos, n_frames, n_missing, means
          in report_lib.summary_rows(e.report)]
  if len(evaluations) > 1:
    means = mean_over_datasets(evaluations)
    rows.append(["mean of the datasets", "", "", "", "",
                 *(html_page.number(means[n]) for n in metrics.METRIC_NAMES)])
  conventions: dict[str, list[str]] = {}
  for e in evaluations:
    conventions.setdefault(_conventions(e.report), []).append(
        e.report["dataset"])
  return html_page.table(head, rows, "summary") + "".join(
      text if len(conventions) == 1 else text.replace(
          "Conventions:",
          f"Conventions ({html_page.escape(', '.join(names))}):")
      for text, names in conventions.items())


def _problems(evaluations: Sequence[Evaluation],
              drawing_errors: Sequence[str]) -> str:
  items = []
  for e in evaluations:
    items += [f"{html_page.escape(e.report['dataset'])}, {item}"
              for item in _report_problems(e.report)]
  items += [html_page.escape(e) for e in drawing_errors]
  if not items:
    return "<p>Every annotated frame had a prediction.</p>"
  return ("<ul class=\"warn\">" + "".join(f"<li>{i}</li>" for i in items) +
          "</ul>")


def _report_problems(report: dict) -> list[str]:
  items = []
  for label, fold in report["folds"].items():
    for video, count in fold["missing_video_frames"].items():
      items.append(f"fold {html_page.escape(label)}: video "
                   f"{html_page.escape(video)} has no prediction "
                   f"({count} annotated frames)")
    for video, entry in fold["videos"].items():
      if entry["missing_frame_ids"]:
        ids = entry["missing_frame_ids"]
        shown = ", ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")
        items.append(f"fold {html_page.escape(label)}: video "
                     f"{html_page.escape(video)}: {len(ids)} annotated frames "
                     f"without prediction: {shown}")
  for video, note in report["frame_count_notes"].items():
    items.append(f"{html_page.escape(video)}: {html_page.escape(note)}")
  if report["unmatched_prediction_frames"]:
    items.append(f"{report['unmatched_prediction_frames']} prediction frames "
                 "have no ground truth and were not scored")
  for name, count in report["nan_frames"].items():
    if count:
      items.append(f"{name} undefined (NaN) on {count} frames; left out of "
                   "the means")
  return items


def _videos(evaluations: Sequence[Evaluation]
            ) -> list[tuple[Evaluation, str, str, dict]]:
  """(evaluation, fold label, video, per-video entry) of every scored video."""
  return [(e, label, video, entry) for e in evaluations
          for label, fold in e.report["folds"].items()
          for video, entry in fold["videos"].items()]


def _video_table(rows: Sequence[tuple[Evaluation, str, str, dict]]) -> str:
  head = ["video", "dataset", "fold", "frames", *report_lib.METRIC_TITLES]
  return html_page.table(head, [
      [html_page.link(f"videos/{_slug(e.report['dataset'], label, video)}.html",
                      video),
       html_page.escape(e.report["dataset"]), html_page.escape(label),
       str(entry["n_frames"]),
       *(html_page.number(entry[n]) for n in metrics.METRIC_NAMES)]
      for e, label, video, entry in rows])


def _index_body(evaluations: Sequence[Evaluation], sections: Sequence[str],
                drawing_errors: Sequence[str]) -> str:
  videos = _videos(evaluations)
  by_cc = sorted((v for v in videos if math.isfinite(v[3]["cc"])),
                 key=lambda v: -v[3]["cc"])
  groups = {}
  for e in evaluations:
    for label, fold in e.report["folds"].items():
      name = e.report["dataset"] + ("" if label == "all" else f" fold {label}")
      groups[name] = fold["videos"]
  plots = "".join(
      svg.strip_plot(f"{title} per video",
                     {group: {video: entry[name]
                              for video, entry in entries.items()}
                      for group, entries in groups.items()})
      for name, title in zip(metrics.METRIC_NAMES, report_lib.METRIC_TITLES))
  return "\n".join([
      "<h2>Summary</h2>", _summary(evaluations),
      "<h2>Missing or unusable inputs</h2>",
      _problems(evaluations, drawing_errors),
      *sections,
      "<h2>Per-video distribution</h2>", f"<div class=\"plots\">{plots}</div>",
      "<h2>Five best videos by CC</h2>", _video_table(by_cc[:5]),
      "<h2>Five worst videos by CC</h2>", _video_table(by_cc[::-1][:5]),
      "<h2>All videos</h2>", _video_table(videos),
      f"<p class=\"note\">Numbers: <a href=\"{RESULTS_NAME}\">{RESULTS_NAME}"
      "</a>.</p>"])


def _strip_pictures(source: ground_truth.GroundTruthSource,
                    prediction: predictions_lib.PredictionSource, video: str,
                    frames: Sequence[int], width: int, folder: pathlib.Path
                    ) -> tuple[list[list[str]], list[str], bool]:
  """Writes the four panels of each of `frames`; (table rows, errors,
  whether the source had the video's pictures)."""
  rows, errors, unreadable = [], [], False
  try:
    pictures = source.read_frames(video, frames)
  except _READ_ERRORS as error:
    pictures, unreadable = None, True
    errors.append(f"video {video}: frames unreadable, grey panels ({error})")
  for i, frame in enumerate(frames):
    try:
      gt_map = source.read_map(video, frame)
      fixations = source.read_fixations(video, frame)
      pred = prediction.read(video, frame)
    except _READ_ERRORS as error:
      errors.append(f"video {video} frame {frame}: {error}")
      continue
    size = panels.thumbnail_size(gt_map.shape, width)
    pred_small = panels.resize(panels.to_uint8(pred), size)
    if pictures is not None:
      picture = panels.resize(np.ascontiguousarray(pictures[i]), size)
    else:
      picture = np.full((*size, 3), 128, np.uint8)
    images = {
        "frame": picture,
        "ground truth": panels.with_fixations(
            panels.grey_rgb(panels.resize(panels.to_uint8(gt_map), size)),
            fixations),
        "prediction": panels.grey_rgb(pred_small),
        "overlay": panels.blend_heatmap(picture, pred_small)}
    cells = [str(frame)]
    for panel in PANELS:
      name = f"{frame:05d}_{panel.replace(' ', '_')}.jpg"
      panels.save_jpeg(folder / name, images[panel])
      cells.append(html_page.image(f"{folder.name}/{name}",
                                   f"{panel}, frame {frame}", size))
    rows.append(cells)
  return rows, errors, pictures is not None or unreadable


def _video_page(out_dir: pathlib.Path, evaluation: Evaluation, label: str,
                video: str, entry: dict, frames_per_video: int, width: int
                ) -> tuple[list[str], bool]:
  """Writes the video's page; (problems, whether it had pictures)."""
  dataset = evaluation.report["dataset"]
  slug = _slug(dataset, label, video)
  source = evaluation.source
  prediction = {("all" if fold is None else str(fold)): p for fold, p
                in evaluation.predictions.items()}[label]
  per_frame = entry["per_frame"]
  frames = panels.evenly_spaced(per_frame["frame_ids"], frames_per_video)
  rows, errors, has_pictures = _strip_pictures(
      source, prediction, video, frames, width, out_dir / "videos" / slug)
  curves = "".join(
      svg.line_plot(f"{title} per frame", "frame",
                    {title: (per_frame["frame_ids"],
                             [math.nan if v is None else v
                              for v in per_frame[name]])})
      for name, title in (("cc", "CC"), ("nss", "NSS")))
  missing = entry["missing_frame_ids"]
  body = "\n".join([
      "<p><a href=\"../index.html\">Back to the report</a></p>",
      html_page.table(["dataset", "fold", "frames",
                       *report_lib.METRIC_TITLES], [[
          html_page.escape(dataset), html_page.escape(label),
          str(entry["n_frames"]),
          *(html_page.number(entry[n]) for n in metrics.METRIC_NAMES)]]),
      (f"<p class=\"warn\">{len(missing)} annotated frames had no "
       f"prediction: {', '.join(map(str, missing))}</p>" if missing else ""),
      "".join(f"<p class=\"warn\">{html_page.escape(e)}</p>" for e in errors),
      "<h2>Frames</h2>",
      html_page.table(["#", *PANELS], rows, "strip"),
      "<h2>Over time</h2>", f"<div class=\"plots\">{curves}</div>"])
  html_page.write_page(out_dir / "videos" / f"{slug}.html",
                       f"{dataset} {video}" + (f" (fold {label})"
                                               if label != "all" else ""), body)
  return errors, has_pictures


def write_report(evaluations: Sequence[Evaluation],
                 out_dir: str | os.PathLike, *, sections: Sequence[str] = (),
                 frames_per_video: int = 6, thumb_width: int = 192,
                 workers: int = 4, title: str | None = None) -> pathlib.Path:
  """Writes the report of `evaluations` (one per dataset) under `out_dir`;
  returns the path of its index.html.

  `sections` are extra HTML blocks placed after the summary and the list
  of missing inputs (e.g. training curves). `results.json` holds {"datasets": {name: report}} and, with
  several datasets, "mean_over_datasets". Pictures that cannot be read are
  listed in the report, never raised; index.html is written last, so it is
  always complete.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  results = {"datasets": {e.report["dataset"]: e.report for e in evaluations}}
  if len(evaluations) > 1:
    results["mean_over_datasets"] = mean_over_datasets(evaluations)
  # Compact: per-frame scores of a large split are ~10^5 numbers.
  atomic_files.write_json(out / RESULTS_NAME, report_lib.json_safe(results),
                          allow_nan=False)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    futures = [pool.submit(_video_page, out, e, label, video, entry,
                           frames_per_video, thumb_width)
               for e, label, video, entry in _videos(evaluations)]
    pages = [(e.report["dataset"], f.result()) for e, f in
             zip((v[0] for v in _videos(evaluations)), futures)]
  errors = [error for _, (page_errors, _) in pages for error in page_errors]
  without = collections.Counter(name for name, (_, pictures) in pages
                                if not pictures)
  errors[:0] = [f"{name}: {count} videos have no video frames in the ground "
                "truth (grey frame panels)" for name, count in without.items()]

  datasets = ", ".join(e.report["dataset"] for e in evaluations)
  return html_page.write_page(out / "index.html",
                              title or f"DiffSal evaluation: {datasets}",
                              _index_body(evaluations, sections, errors))
