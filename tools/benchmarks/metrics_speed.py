r"""Speed of the evaluation path on synthetic videos.

  python -m tools.benchmarks.metrics_speed [--videos 100 --frames 100 \
      --height 360 --width 640 --workers 2 --json out.json]

Scores every frame with all metrics (incl. AUC-Borji and sAUC, 100 splits)
through `diffsal_jax.evaluation.evaluate.evaluate`, the runner behind
`python -m diffsal_jax.evaluate`. Ground truth and predictions come from
in-memory sources whose maps are generated per frame (a few Gaussian blobs,
8-bit quantised, ~50 fixations); the PNG decoding they replace is timed
separately and reported per frame. Options: --sauc_other, --postprocess,
--pred_height/--pred_width, --noprogress (see --help).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from diffsal_jax.data import atomic_files
from diffsal_jax.evaluation import evaluate
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import scoring


def _blobs(rng: np.random.Generator, shape, centres) -> np.ndarray:
  """Sum of separable Gaussian blobs at relative `centres`, 8-bit quantised."""
  rows, cols = np.arange(shape[0]), np.arange(shape[1])
  sigma = 0.06 * min(shape)
  out = np.zeros(shape)
  for y, x in centres:
    out += np.outer(np.exp(-(rows - y * shape[0]) ** 2 / (2 * sigma**2)),
                    np.exp(-(cols - x * shape[1]) ** 2 / (2 * sigma**2)))
  out += 0.05 * rng.random(shape)
  return np.round(out / out.max() * 255) / 255


class SyntheticGroundTruth(ground_truth.GroundTruthSource):
  """Deterministic synthetic videos: maps and fixations from blob centres."""

  dataset = "synthetic"

  def __init__(self, n_videos: int, n_frames: int, shape, n_fixations: int,
               seed: int = 0):
    self.n_videos, self.n_frames = n_videos, n_frames
    self.shape, self.n_fixations, self.seed = tuple(shape), n_fixations, seed

  def centres(self, video: str, frame_id: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, int(video), frame_id])
    return rng.uniform(0.15, 0.85, size=(3, 2))

  def videos(self, fold: int | None) -> list[str]:
    return [f"{i:04d}" for i in range(1, self.n_videos + 1)]

  def frame_ids(self, video: str) -> list[int]:
    return list(range(1, self.n_frames + 1))

  def read_map(self, video: str, frame_id: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, int(video), frame_id, 1])
    return _blobs(rng, self.shape, self.centres(video, frame_id))

  def read_fixations(self, video: str, frame_id: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, int(video), frame_id, 2])
    centres = self.centres(video, frame_id)
    picks = centres[rng.integers(0, len(centres), self.n_fixations)]
    points = picks * self.shape + rng.normal(0, 0.04 * min(self.shape),
                                             picks.shape)
    points = np.clip(np.round(points), 0, np.array(self.shape) - 1)
    fixations = np.zeros(self.shape, bool)
    fixations[points[:, 0].astype(int), points[:, 1].astype(int)] = True
    return fixations


class SyntheticPredictions(predictions.PredictionSource):
  """Blobs near the true ones, at the model resolution."""

  def __init__(self, truth: SyntheticGroundTruth, shape):
    self.truth, self.shape = truth, tuple(shape)

  def frame_ids(self, video: str) -> list[int]:
    return self.truth.frame_ids(video)

  def read(self, video: str, frame_id: int) -> np.ndarray:
    rng = np.random.default_rng([self.truth.seed, int(video), frame_id, 3])
    centres = self.truth.centres(video, frame_id)
    return _blobs(rng, self.shape, centres + rng.normal(0, 0.03, (3, 2)))


def png_decode_ms(shape, pred_shape, repeats: int = 50) -> float:
  """Milliseconds to decode one frame's PNGs (map, fixations, prediction)."""
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as folder:
    paths = []
    for size in (shape, shape, pred_shape):  # Map, fixations, prediction.
      paths.append(predictions.save_prediction(
          folder, "x", "v", len(paths), _blobs(rng, size, [(0.5, 0.5)])))
    start = time.perf_counter()
    for _ in range(repeats):
      for path in paths:
        ground_truth.read_grey(path)
    return (time.perf_counter() - start) / repeats * 1000


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m tools.benchmarks.metrics_speed",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--videos", type=int, default=100)
  parser.add_argument("--frames", type=int, default=100,
                      help="frames per video")
  parser.add_argument("--height", type=int, default=360)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--pred_height", type=int, default=224,
                      help="prediction size (resized to the ground truth)")
  parser.add_argument("--pred_width", type=int, default=384)
  parser.add_argument("--fixations", type=int, default=50,
                      help="fixations per frame")
  parser.add_argument("--sauc_other", choices=("dhf1k", "stavis"),
                      default="dhf1k")
  parser.add_argument("--postprocess", choices=("none", "stavis"),
                      default="none")
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count()),
                      help="worker processes (1 = in this process)")
  parser.add_argument("--json", help="also write the figures here")
  parser.add_argument("--noprogress", action="store_true",
                      help="no progress bars")
  args = parser.parse_args(argv)

  shape, pred_shape = (args.height, args.width), (args.pred_height,
                                                   args.pred_width)
  truth = SyntheticGroundTruth(args.videos, args.frames, shape,
                               args.fixations)
  options = scoring.EvalOptions(sauc_other=args.sauc_other,
                                postprocess=args.postprocess)
  start = time.perf_counter()
  report = evaluate.evaluate(
      truth, [(None, SyntheticPredictions(truth, pred_shape))], options,
      workers=args.workers, progress=not args.noprogress)
  seconds = time.perf_counter() - start
  n_frames = report["overall"]["n_frames"]
  figures = {
      "videos": args.videos, "frames": n_frames,
      "gt_size": f"{args.height}x{args.width}",
      "pred_size": f"{args.pred_height}x{args.pred_width}",
      "workers": args.workers, "seconds": round(seconds, 2),
      "frames_per_s": round(n_frames / seconds, 2),
      "png_decode_ms_per_frame": round(png_decode_ms(shape, pred_shape), 2),
      "means": {n: round(report["overall"]["mean"][n], 4)
                for n in metrics.METRIC_NAMES},
      "options": report["options"],
  }
  keys = ["videos", "frames", "gt_size", "pred_size", "workers", "seconds",
          "frames_per_s", "png_decode_ms_per_frame"]
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  print("| " + " | ".join(str(figures[k]) for k in keys) + " |")
  print("means: " + ", ".join(f"{k} {v}" for k, v in figures["means"].items()))
  if args.json:
    atomic_files.write_json(args.json, figures, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
