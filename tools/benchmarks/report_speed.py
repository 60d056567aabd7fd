r"""Time and size of the evaluation's HTML report for a DHF1K-size split.

  python -m tools.benchmarks.report_speed [--videos 100 --frames 500 \
      --height 360 --width 640 --report_frames 6 --workers 4 --json out.json]

Writes the report (`evaluation.html_report.write_report`) of a synthetic
evaluation shaped like DHF1K's validation set: 100 videos of 500 frames at
360x640 with per-frame scores (so the per-frame curves are full length),
pictures generated per frame as in `metrics_speed` (maps, fixations,
predictions at the model's 224x384, RGB frames). Scoring is not timed here
(see `metrics_speed`); what is timed is the report alone: reading the strip
frames' pictures, thumbnails, SVG plots and pages. Prints a table and, with
--json, writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

from diffsal_jax.evaluation import html_report
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import report as report_lib
from diffsal_jax.evaluation import scoring
from tools.benchmarks import metrics_speed


class _FramedTruth(metrics_speed.SyntheticGroundTruth):
  """The synthetic ground truth plus RGB frames (a gradient and the blobs)."""

  def read_frames(self, video, frame_ids):
    pictures = []
    for frame in frame_ids:
      heat = self.read_map(video, frame)
      picture = np.empty((*self.shape, 3), np.uint8)
      picture[..., 0] = np.round(heat * 255)
      picture[..., 1] = np.linspace(0, 200, self.shape[1])[None, :]
      picture[..., 2] = 90
      pictures.append(picture)
    return pictures


@dataclasses.dataclass(frozen=True)
class _Job:
  fold: None
  video: str
  frame_ids: tuple[int, ...]
  missing_frames: tuple[int, ...] = ()


def synthetic_report(truth: _FramedTruth, seed: int = 0) -> dict:
  """An evaluation report with random plausible per-frame scores."""
  rng = np.random.default_rng(seed)
  results = []
  for video in truth.videos(None):
    frames = tuple(truth.frame_ids(video))
    scores = rng.uniform(0.2, 0.9, (len(frames), len(metrics.METRIC_NAMES)))
    results.append((_Job(None, video, frames), scores))
  report = report_lib.summarise(results, {None: {}})
  report.update(dataset="dhf1k", unmatched_prediction_frames=0,
                frame_count_notes={}, options=dataclasses.asdict(
                    scoring.EvalOptions.for_dataset("dhf1k")))
  return report


def _folder_bytes(folder: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m tools.benchmarks.report_speed", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--videos", type=int, default=100)
  parser.add_argument("--frames", type=int, default=500,
                      help="frames per video")
  parser.add_argument("--height", type=int, default=360)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--report_frames", type=int, default=6)
  parser.add_argument("--workers", type=int, default=4, help="threads")
  parser.add_argument("--out", default=None,
                      help="report folder (default: a temporary one)")
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  truth = _FramedTruth(args.videos, args.frames, (args.height, args.width),
                       n_fixations=50)
  predictions = metrics_speed.SyntheticPredictions(truth, (224, 384))
  report = synthetic_report(truth)
  with tempfile.TemporaryDirectory() as scratch:
    out = pathlib.Path(args.out or os.path.join(scratch, "report"))
    start = time.perf_counter()
    index = html_report.write_report(
        [html_report.Evaluation(report, truth, {None: predictions})], out,
        frames_per_video=args.report_frames, workers=args.workers)
    seconds = time.perf_counter() - start
    files = sum(1 for p in out.rglob("*") if p.is_file())
    size_mb = _folder_bytes(out) / 1e6
    index_kb = index.stat().st_size / 1e3
  row = {"videos": args.videos, "frames_per_video": args.frames,
         "size_hw": [args.height, args.width],
         "report_frames": args.report_frames, "workers": args.workers,
         "cpus": os.cpu_count(), "seconds": round(seconds, 2),
         "files": files, "size_mb": round(size_mb, 2),
         "index_kb": round(index_kb, 1)}
  print("| videos | frames/video | strip frames | threads | seconds | files |"
        " MB | index.html kB |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.videos} | {args.frames} | {args.report_frames} | "
        f"{args.workers} | {seconds:.1f} | {files} | {size_mb:.1f} | "
        f"{index_kb:.0f} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
