r"""Scores saliency predictions with the benchmark metrics.

  python -m diffsal_jax.evaluate --pred DIR [DIR ...] --data SHARDS_OR_RAW \
      --dataset {dhf1k,avad,coutrot1,coutrot2,diem,etmd,summe} \
      [--fold K ...] [--workers 2] [--out PREFIX]

Prediction layouts (frame = 1-based ground-truth frame number):
  ours       <pred>/<dataset>/<video>/<frame:05d>.png, 8-bit grey, written by
             `predictions.save_prediction` (video = ground-truth folder name,
             e.g. 0601 for DHF1K).
  published  DHF1K: <pred>/<video>/<frame>.png (video with or without leading
             zeros, as diff_sal writes them); AV sets: <pred>/<dataset>/
             <video>/pred_sal_%06d.jpg (diff_sal's split<k>_results/ folders).
Every prediction frame with ground truth is scored; scores are averaged per
video (skipping NaN frames), then over videos; with folds, the overall row
pools the videos of all folds (as the STAViS scripts do). Annotated frames
without a prediction are counted per video and fold and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import re
import sys
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import scipy.ndimage
import tqdm

from diffsal_jax.data import release_files
from diffsal_jax.data import shards
from diffsal_jax.evaluation import report as report_lib
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import predictions as predictions_lib
from diffsal_jax.evaluation import release_ground_truth

_SPLIT_DIR = re.compile(r"split(\d+)_results")
FrameFixations = tuple[tuple[int, int], np.ndarray]  # (shape, flat indices)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How frames are scored.

  sauc_other: "dhf1k" pools the fixations of `n_other_frames` random other
    frames of the evaluated set; "stavis" takes the union of all frames of
    the same video minus the frame's own fixated pixels (createShuffmap1).
  postprocess: "stavis" applies the STAViS evaluation post-processing to the
    prediction (scale by max, Gaussian blur sigma 2) before resizing.
  edge_cases: "mit" scores degenerate frames as the MIT MATLAB code does
    (SIM 0 for an all-zero prediction or map, KLD 0 for an all-zero map; see
    `metrics`); "nan" makes those SIM and KLD values NaN as well (skipped
    in the means, the behaviour before the MIT conventions).
  """
  n_splits: int = 100
  step: float = 0.1
  sauc_other: str = "dhf1k"
  n_other_frames: int = 10
  postprocess: str = "none"
  seed: int = 0
  edge_cases: str = "mit"

  @classmethod
  def for_dataset(cls, dataset: str, **overrides) -> EvalOptions:
    """Published protocol of `dataset`; None-valued overrides are ignored."""
    is_av = dataset != "dhf1k"
    values = {"sauc_other": "stavis" if is_av else "dhf1k",
              "postprocess": "stavis" if is_av else "none"}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def stavis_postprocess(pred: np.ndarray) -> np.ndarray:
  """STAViS eval post-processing (postprocessMap.m with sigma 2).

  pred: `(H, W)` in [0, 1] (im2double of the saved map). Scales by 255,
  clips to [0, 255], divides by the max, min-max normalises
  (normalizeImage1.m: a constant map becomes 0.5) and blurs. An all-zero map
  becomes NaN everywhere (MATLAB's 0 / 0), so every metric of that frame is
  NaN and the frame is skipped, as in the STAViS scripts.
  """
  pred = np.clip(255.0 * np.asarray(pred, np.float64), 0.0, 255.0)
  if not pred.any():
    return np.full(pred.shape, np.nan)
  pred = pred / pred.max() * 255.0
  span = pred.max() - pred.min()
  pred = (pred - pred.min()) / span if span > 0 else pred - pred.max() + 0.5
  # 13x13 sampled Gaussian, mirrored borders = fspecial + imfilter symmetric.
  return scipy.ndimage.gaussian_filter(pred, 2.0, mode="reflect", truncate=3.0)


def _fixation_map(entry: FrameFixations, shape) -> np.ndarray:
  """Binary map of `entry`, coordinates rescaled if its frame size differs."""
  src_shape, flat = entry
  out = np.zeros(shape, bool)
  rows, cols = np.divmod(flat, src_shape[1])
  if tuple(src_shape) != tuple(shape):
    rows = np.minimum(((rows + 0.5) * shape[0] / src_shape[0]).astype(int),
                      shape[0] - 1)
    cols = np.minimum(((cols + 0.5) * shape[1] / src_shape[1]).astype(int),
                      shape[1] - 1)
  out[rows, cols] = True
  return out


def dhf1k_other_map(pool: Sequence[FrameFixations], own_index: int,
                    n_other: int, rng: np.random.Generator,
                    shape) -> np.ndarray:
  """Union of the fixations of `n_other` random pool frames but our own."""
  count = min(n_other, len(pool) - 1)
  picks = rng.choice(len(pool) - 1, count, replace=False)
  picks = picks + (picks >= own_index)
  out = np.zeros(shape, bool)
  for index in picks:
    out |= _fixation_map(pool[index], shape)
  return out


def stavis_other_map(video_union: np.ndarray,
                     fixations: np.ndarray) -> np.ndarray:
  """Union of all the video's fixations minus this frame's fixated pixels."""
  return video_union & ~fixations


def score_frame(pred: np.ndarray, gt_map: np.ndarray, fixations: np.ndarray,
                other_map: np.ndarray, rng: np.random.Generator,
                options: EvalOptions) -> np.ndarray:
  """All metrics of one frame, in `metrics.METRIC_NAMES` order."""
  if fixations.shape != gt_map.shape:
    raise ValueError(f"fixation map shape {fixations.shape} differs from "
                     f"saliency map shape {gt_map.shape}")
  if options.postprocess == "stavis":
    pred = stavis_postprocess(pred)
  pred = metrics.resize_map(pred, gt_map.shape)  # Once, for every metric.
  scores = np.array([
      metrics.cc(pred, gt_map),
      metrics.sim(pred, gt_map),
      metrics.kld(pred, gt_map),
      metrics.nss(pred, fixations),
      metrics.auc_judd(pred, fixations, rng=rng),
      metrics.auc_borji(pred, fixations, options.n_splits, options.step, rng),
      metrics.auc_shuffled(pred, fixations, other_map, options.n_splits,
                           options.step, rng),
  ])
  if options.edge_cases == "nan":
    flat = lambda x: bool(x.max() == x.min())  # noqa: E731
    if flat(pred) or flat(gt_map):
      scores[METRIC_INDEX["sim"]] = np.nan
    if not gt_map.any():
      scores[METRIC_INDEX["kld"]] = np.nan
  elif options.edge_cases != "mit":
    raise ValueError(f"edge_cases must be 'mit' or 'nan', got "
                     f"{options.edge_cases!r}")
  return scores


METRIC_INDEX = {name: i for i, name in enumerate(metrics.METRIC_NAMES)}


def video_seed(video: str) -> int:
  """A stable number for `video` (CRC-32 of its name) to seed its draws."""
  return zlib.crc32(video.encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class _VideoJob:
  fold: int | None
  video: str
  frame_ids: tuple[int, ...]  # Frames to score.
  fixations: dict[int, FrameFixations]  # Every annotated frame.
  pool_start: int  # Index of the video's first frame in the fold's pool.
  missing_frames: tuple[int, ...] = ()  # Annotated, without prediction.


_WORKER: dict = {}


def _init_worker(source, predictions, options, pools) -> None:
  _WORKER.update(source=source, predictions=predictions, options=options,
                 pools=pools)


def _read_fixations(job) -> tuple[str, dict[int, FrameFixations], str]:
  """(video, frame -> fixations, the source's frame-count note)."""
  source, video = job
  return video, {
      frame: (fix.shape, np.flatnonzero(fix).astype(np.int32))
      for frame in source.frame_ids(video)
      for fix in [source.read_fixations(video, frame)]}, source.frame_count_note(video)


def _score_video(job: _VideoJob) -> tuple[_VideoJob, np.ndarray]:
  source, options = _WORKER["source"], _WORKER["options"]
  predictions = _WORKER["predictions"][job.fold]
  position = {frame: i for i, frame in enumerate(sorted(job.fixations))}
  union = None
  scores = np.full((len(job.frame_ids), len(metrics.METRIC_NAMES)), np.nan)
  for row, frame in enumerate(job.frame_ids):
    # Seeded from names, not run order: a video scores the same in any run.
    rng = np.random.default_rng(
        [options.seed, job.fold or 0, video_seed(job.video), frame])
    gt_map = source.read_map(job.video, frame)
    fixations = _fixation_map(job.fixations[frame], gt_map.shape)
    if options.sauc_other == "stavis":
      if union is None:
        union = np.zeros(gt_map.shape, bool)
        for entry in job.fixations.values():
          union |= _fixation_map(entry, gt_map.shape)
      other = stavis_other_map(union, fixations)
    else:
      own = job.pool_start + position[frame]
      other = dhf1k_other_map(_WORKER["pools"][job.fold], own,
                              options.n_other_frames, rng, gt_map.shape)
    pred = predictions.read(job.video, frame)
    scores[row] = score_frame(pred, gt_map, fixations, other, rng, options)
  return job, scores


def _run(function, jobs: list, workers: int, desc: str, progress: bool,
         total: int, done: Callable[[object], int],
         init_args: tuple | None = None) -> list:
  """Maps `function` over `jobs` (any order) with a tqdm bar and ETA."""
  with contextlib.ExitStack() as stack:
    bar = stack.enter_context(tqdm.tqdm(
        total=total, desc=desc, disable=not progress, file=sys.stderr,
        unit="frame" if init_args else "video"))
    if workers <= 1:
      if init_args:
        _init_worker(*init_args)
      outputs = map(function, jobs)
    else:
      context = multiprocessing.get_context("spawn")  # JAX is not fork-safe.
      pool = stack.enter_context(context.Pool(
          workers, _init_worker if init_args else None, init_args or ()))
      outputs = pool.imap_unordered(function, jobs)
    results = []
    for output in outputs:
      bar.update(done(output))
      results.append(output)
    return results


def evaluate(source: ground_truth.GroundTruthSource,
             predictions: Sequence[tuple[int | None,
                                         predictions_lib.PredictionSource]],
             options: EvalOptions, workers: int = 1,
             videos: Sequence[str] | None = None,
             progress: bool = True) -> dict:
  """Scores every predicted frame of every (fold, predictions) pair.

  Fold None means every annotated video that has predictions. A video's
  scores depend only on its own frames and on the fold's annotated videos
  (the sAUC pool), never on which videos are predicted or picked with
  `videos`. Returns the report dict of `report` (NaN where a mean
  is undefined), with annotated frames that have no prediction counted and,
  in `frame_count_notes`, the scored videos whose release sources disagreed
  on the frame count by a frame or two (cut to the frames all of them have).
  """
  by_fold = dict(predictions)
  annotated_videos = {fold: source.videos(fold) for fold, _ in predictions}
  selected, missing = {}, {}
  for fold, fold_predictions in predictions:
    names = [v for v in annotated_videos[fold] if not videos or v in videos]
    selected[fold] = [v for v in names if fold_predictions.frame_ids(v)]
    missing[fold] = [v for v in names if v not in selected[fold]]
  # The DHF1K-style sAUC pool holds every annotated video of the fold, so it
  # does not change with the predicted subset.
  pooled = options.sauc_other == "dhf1k"
  needed = sorted({v for fold in selected for v in (
      annotated_videos[fold] if pooled else selected[fold])})
  read = _run(_read_fixations, [(source, v) for v in needed], workers,
              "reading fixations", progress, len(needed), lambda _: 1)
  fixations = {video: frames for video, frames, _ in read}
  scored = {v for names in selected.values() for v in names}
  notes = {video: note for video, _, note in read if note and video in scored}
  jobs, pools, unmatched = [], {}, 0
  for fold, names in selected.items():
    pool, pool_start = [], {}
    for video in annotated_videos[fold] if pooled else ():
      pool_start[video] = len(pool)
      pool.extend(fixations[video][f] for f in sorted(fixations[video]))
    pools[fold] = pool
    for video in names:
      annotated = fixations[video]
      predicted = set(by_fold[fold].frame_ids(video))
      frames = tuple(f for f in sorted(annotated) if f in predicted)
      unmatched += len(predicted) - len(frames)
      jobs.append(_VideoJob(
          fold, video, frames, annotated, pool_start.get(video, 0),
          tuple(f for f in sorted(annotated) if f not in predicted)))
  results = _run(_score_video, jobs, workers, "scoring", progress,
                 sum(len(job.frame_ids) for job in jobs),
                 lambda output: len(output[0].frame_ids),
                 init_args=(source, by_fold, options, pools))
  missing_frames = {fold: {v: len(fixations[v]) if v in fixations else
                           len(source.frame_ids(v)) for v in names}
                    for fold, names in missing.items()}
  report = report_lib.summarise(results, missing_frames)
  report.update(dataset=source.dataset, options=dataclasses.asdict(options),
                unmatched_prediction_frames=unmatched,
                frame_count_notes=dict(sorted(notes.items())))
  return report


def resolve_folds(pred_dirs: Sequence[str], folds: Sequence[int] | None,
                  dataset: str) -> list[tuple[int | None, pathlib.Path]]:
  """Pairs prediction folders with folds (see --help of --fold)."""
  roots = [pathlib.Path(p) for p in pred_dirs]
  for root in roots:
    if not root.is_dir():
      raise FileNotFoundError(f"--pred {root} is not a directory")
  if dataset == "dhf1k":
    if folds or len(roots) > 1:
      raise ValueError("DHF1K has no folds: give one --pred and no --fold")
    return [(None, roots[0])]
  if folds:
    if len(roots) == 1:
      roots = roots * len(folds)
    if len(roots) != len(folds):
      raise ValueError(f"{len(roots)} --pred folders for {len(folds)} folds:"
                       " give one folder per fold or one for all folds")
    # A folder holding diff_sal's split<k>_results/ stands for its fold k.
    split = lambda k, root: root / f"split{k}_results"  # noqa: E731
    return [(k, split(k, r) if split(k, r).is_dir() else r)
            for k, r in zip(folds, roots)]
  if len(roots) > 1:
    return list(enumerate(roots, 1))
  splits = sorted((int(m.group(1)), p) for p in roots[0].iterdir()
                  if (m := _SPLIT_DIR.fullmatch(p.name)) and p.is_dir())
  return splits or [(None, roots[0])]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m diffsal_jax.evaluate", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pred", nargs="+", required=True, help=(
      "prediction folder(s); several folders are folds 1, 2, ... unless "
      "--fold says otherwise"))
  parser.add_argument("--data", required=True, metavar="SHARDS_OR_RAW", help=(
      "ground truth: the output folder of `python -m data_prep convert` "
      "(holds manifest.json), or the raw release: DHF1K root with "
      "annotation/, or the STAViS data root with annotations/ and "
      "fold_lists/"))
  parser.add_argument("--dataset", required=True,
                      choices=ground_truth.DATASETS)
  parser.add_argument("--fold", nargs="+", type=int, help=(
      "fold number of each --pred folder (or, with one folder, the folds to "
      "read from its split<k>_results/). Default: split<k>_results/ found "
      "in --pred, else every annotated video that has predictions"))
  parser.add_argument("--videos", nargs="+", help="only these video names")
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count()),
                      help="worker processes (1 = in this process)")
  parser.add_argument("--out", help=(
      "output prefix for .csv and .json (default: <first --pred>/"
      "metrics_<dataset>)"))
  parser.add_argument("--sauc-other", choices=("dhf1k", "stavis"), help=(
      "sAUC negatives: dhf1k = 10 random other frames of the evaluated set; "
      "stavis = the same video's other fixations (default: dhf1k for DHF1K, "
      "stavis for the AV sets)"))
  parser.add_argument("--postprocess", choices=("none", "stavis"), help=(
      "prediction post-processing before scoring (default: stavis for the "
      "AV sets, as their published evaluation does; none for DHF1K)"))
  parser.add_argument("--n-splits", type=int, help="AUC-B/sAUC draws (100)")
  parser.add_argument("--step", type=float, help="AUC-B/sAUC step (0.1)")
  parser.add_argument("--seed", type=int, help="random seed (0)")
  parser.add_argument("--edge-cases", choices=("mit", "nan"), help=(
      "degenerate frames: mit (default) scores them as the MIT benchmark "
      "code does (SIM 0 for an all-zero prediction or map, KLD 0 for an "
      "all-zero map); nan makes those SIM/KLD values NaN and skips them"))
  parser.add_argument("--no-progress", action="store_true")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    source = release_ground_truth.open_ground_truth(args.data, args.dataset)
    folds = resolve_folds(args.pred, args.fold, args.dataset)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  options = EvalOptions.for_dataset(
      args.dataset, sauc_other=args.sauc_other, postprocess=args.postprocess,
      n_splits=args.n_splits, step=args.step, seed=args.seed,
      edge_cases=args.edge_cases)
  predictions = [(fold, predictions_lib.PredictionDir(root, args.dataset))
                 for fold, root in folds]
  try:
    report = evaluate(source, predictions, options, args.workers,
                      args.videos, progress=not args.no_progress)
  # A raw file that cannot be used, or a shard damaged on disk: both name
  # the file and the fix.
  except (release_files.ReleaseError, shards.DamagedShardError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  report["prediction_dirs"] = {str(f): str(r) for f, r in folds}
  if not report["overall"]["n_frames"]:
    print(f"error: no prediction frames matched the ground truth; check "
          f"--pred against the layouts in --help ({folds})", file=sys.stderr)
    return 1
  prefix = pathlib.Path(args.out or pathlib.Path(args.pred[0]) /
                        f"metrics_{args.dataset}")
  paths = report_lib.write_reports(report, prefix)
  report_lib.warn_about(report)
  print(report_lib.markdown_table(report))
  print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
  return 0


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  sys.exit(main())


if __name__ == "__main__":
  cli()
