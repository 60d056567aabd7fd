"""Averages per-frame saliency scores and writes the evaluation report.

Frames -> video means (NaN frames skipped) -> fold means over videos; the
overall row pools the videos of every fold, as the STAViS scripts do.
Annotated frames without a prediction (`n_missing_frames`) are counted per
video, fold and overall, printed and written, never dropped silently.
"""

from __future__ import annotations

import csv
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from diffsal_jax.data import atomic_files
from diffsal_jax.evaluation import metrics

METRIC_TITLES = ("CC", "SIM", "KLD", "NSS", "AUC-J", "AUC-B", "sAUC")
PER_FRAME_METRICS = ("cc", "nss")  # kept per frame in the JSON report


def nanmean(values: Sequence[float]) -> float:
  """Mean of the finite values; NaN when there is none."""
  finite = [v for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float("nan")


def _summary(rows: dict[str, Sequence[float]]) -> dict[str, float]:
  return {name: nanmean(rows[name]) for name in metrics.METRIC_NAMES}


def summarise(results: Sequence[tuple[object, np.ndarray]],
              missing: dict[int | None, dict[str, int]]) -> dict:
  """Per-video, per-fold and pooled means.

  `results` holds (job, scores) pairs: job has `fold`, `video`, `frame_ids`
  and `missing_frames`; scores is (n_frames, len(METRIC_NAMES)). `missing`
  maps, per fold, each video without any prediction to its number of
  annotated frames.
  """
  folds: dict[str, dict] = {}
  nan_frames = dict.fromkeys(metrics.METRIC_NAMES, 0)
  all_videos = []
  for job, scores in sorted(results, key=lambda r: (r[0].fold or 0,
                                                    r[0].video)):
    entry = {"n_frames": len(job.frame_ids),
             "n_missing_frames": len(job.missing_frames)}
    entry.update(_summary(dict(zip(metrics.METRIC_NAMES, scores.T))))
    # Per-frame CC and NSS (for the HTML report's curves) and the annotated
    # frames that had no prediction.
    entry["per_frame"] = {"frame_ids": list(job.frame_ids),
                          **{name: scores[:, metrics.METRIC_NAMES.index(name)]
                             .tolist() for name in PER_FRAME_METRICS}}
    entry["missing_frame_ids"] = list(job.missing_frames)
    for name, column in zip(metrics.METRIC_NAMES, scores.T):
      nan_frames[name] += int(np.isnan(column).sum())
    label = "all" if job.fold is None else str(job.fold)
    folds.setdefault(label, {"videos": {}})["videos"][job.video] = entry
    all_videos.append(entry)
  for fold, fold_missing in missing.items():
    label = "all" if fold is None else str(fold)
    fold_entry = folds.setdefault(label, {"videos": {}})
    videos = list(fold_entry["videos"].values())
    fold_entry.update(n_videos=len(videos), missing_videos=list(fold_missing),
                      missing_video_frames=dict(fold_missing),
                      n_frames=sum(v["n_frames"] for v in videos),
                      n_missing_frames=sum(fold_missing.values()) + sum(
                          v["n_missing_frames"] for v in videos),
                      mean=_summary({n: [v[n] for v in videos]
                                     for n in metrics.METRIC_NAMES}))
  overall = {"n_videos": len(all_videos),
             "n_frames": sum(v["n_frames"] for v in all_videos),
             "n_missing_frames": sum(f.get("n_missing_frames", 0)
                                     for f in folds.values()),
             "mean": _summary({n: [v[n] for v in all_videos]
                               for n in metrics.METRIC_NAMES})}
  return {"folds": folds, "overall": overall, "nan_frames": nan_frames}


def json_safe(value):
  """`value` with dict keys as strings and NaN/inf floats as None (JSON)."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def summary_rows(report: dict) -> list[tuple[str, int, int, int, dict]]:
  """(label, videos, scored frames, frames without prediction, means)."""
  rows = [(label, f["n_videos"], f["n_frames"], f["n_missing_frames"],
           f["mean"]) for label, f in report["folds"].items()]
  if len(rows) > 1:
    overall = report["overall"]
    rows.append(("all folds", overall["n_videos"], overall["n_frames"],
                 overall["n_missing_frames"], overall["mean"]))
  return rows


def markdown_table(report: dict) -> str:
  """One row per fold (plus the pooled row when there are several)."""
  head = ["fold", "videos", "frames", "frames without prediction",
          *METRIC_TITLES]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, n_videos, n_frames, n_missing, means in summary_rows(report):
    cells = [f"{means[n]:.4f}" for n in metrics.METRIC_NAMES]
    lines.append("| " + " | ".join([label, str(n_videos), str(n_frames),
                                     str(n_missing), *cells]) + " |")
  return "\n".join(lines)


def without_per_frame(report: dict) -> dict:
  """`report` without the videos' `per_frame` scores (a copy)."""
  folds = {label: {**fold, "videos": {
      video: {k: v for k, v in entry.items() if k != "per_frame"}
      for video, entry in fold["videos"].items()}}
           for label, fold in report["folds"].items()}
  return {**report, "folds": folds}


def write_reports(report: dict, prefix: pathlib.Path) -> list[pathlib.Path]:
  """Writes <prefix>.json (everything but the per-frame scores) and
  <prefix>.csv (video and means)."""
  json_path = prefix.with_name(prefix.name + ".json")
  csv_path = prefix.with_name(prefix.name + ".csv")
  # The per-frame lists stay out of this (indented) file: they would be one
  # line per number; the HTML report's results.json keeps them.
  atomic_files.write_json(json_path, json_safe(without_per_frame(report)),
                          indent=2, allow_nan=False)

  def write_csv(stream) -> None:
    writer = csv.writer(stream)
    writer.writerow(["fold", "video", "n_frames", "n_missing_frames",
                     *metrics.METRIC_NAMES])
    for label, fold in report["folds"].items():
      for video, entry in fold["videos"].items():
        writer.writerow([label, video, entry["n_frames"],
                         entry["n_missing_frames"],
                         *(entry[n] for n in metrics.METRIC_NAMES)])
      for video, count in fold["missing_video_frames"].items():
        # Videos without any prediction: no scores, all frames missing.
        writer.writerow([label, video, 0, count,
                         *([""] * len(metrics.METRIC_NAMES))])
    for label, _, n_frames, n_missing, means in summary_rows(report):
      writer.writerow([label, "(mean)", n_frames, n_missing,
                       *(means[n] for n in metrics.METRIC_NAMES)])

  atomic_files.write_atomic(csv_path, write_csv)
  return [json_path, csv_path]


def warn_about(report: dict) -> None:
  """Prints skipped videos, unmatched frames and NaN counts to stderr."""
  for label, fold in report["folds"].items():
    if fold["missing_videos"]:
      print(f"warning: fold {label}: {len(fold['missing_videos'])} videos have"
            f" no predictions and were skipped: "
            f"{list(fold['missing_videos'])[:5]}", file=sys.stderr)
    if fold["n_missing_frames"]:
      partial = [v for v, e in fold["videos"].items()
                 if e["n_missing_frames"]]
      print(f"warning: fold {label}: {fold['n_missing_frames']} annotated "
            f"frames have no prediction and were not scored (videos with "
            f"some frames missing: {partial[:5]}); check --pred",
            file=sys.stderr)
  notes = report["frame_count_notes"]
  if notes:
    video, note = next(iter(notes.items()))
    print(f"warning: {len(notes)} videos' ground truth was cut to the frames "
          f"every source of the release has (e.g. {video}: {note}); see "
          "frame_count_notes in the JSON report", file=sys.stderr)
  if report["unmatched_prediction_frames"]:
    print(f"warning: {report['unmatched_prediction_frames']} prediction frames"
          " have no ground truth and were skipped", file=sys.stderr)
  for name, count in report["nan_frames"].items():
    if count:
      print(f"warning: {name} undefined (NaN) on {count} frames (empty "
            "fixations or constant maps); skipped in the averages",
            file=sys.stderr)
