r"""Scores saliency predictions with the benchmark metrics.

  python -m diffsal_jax.evaluate --pred DIR --data SHARDS_OR_RAW \
      --dataset {dhf1k,avad,coutrot1,coutrot2,diem,etmd,summe} \
      [--workers 2] [--out PREFIX] [--report DIR] [--noprogress]
  python -m diffsal_jax.evaluate --pred f1/ --pred f2/ --pred f3/ \
      --fold 1 --fold 2 --fold 3 --data /data/stavis --dataset diem

Flags are absl's, as for `main` and `predict`: several folders, folds or
videos by repeating the flag (`--pred A --pred B`, `--videos 0601 --videos
0602`), booleans as `--progress` / `--noprogress`. Exit status: 0 scored,
1 no prediction frame matched the ground truth, 2 bad flags or input (the
message names the file).

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

import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence

import numpy as np
import tqdm
from absl import flags

from diffsal_jax import cli_flags
from diffsal_jax import console
from diffsal_jax.data import release_files
from diffsal_jax.data import shards
from diffsal_jax.evaluation import report as report_lib
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import html_report
from diffsal_jax.evaluation import predictions as predictions_lib
from diffsal_jax.evaluation import release_ground_truth
from diffsal_jax.evaluation import scoring

_SPLIT_DIR = re.compile(r"split(\d+)_results")


@dataclasses.dataclass(frozen=True)
class _VideoJob:
  fold: int | None
  video: str
  frame_ids: tuple[int, ...]  # Frames to score.
  fixations: dict[int, scoring.FrameFixations]  # Every annotated frame.
  pool_start: int  # Index of the video's first frame in the fold's pool.
  missing_frames: tuple[int, ...] = ()  # Annotated, without prediction.


_WORKER: dict = {}


def _init_worker(source, predictions, options, pools) -> None:
  _WORKER.update(source=source, predictions=predictions, options=options,
                 pools=pools)


def _read_fixations(job) -> tuple[str, dict[int, scoring.FrameFixations], str]:
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
    rng = scoring.frame_rng(options, job.fold, job.video, frame)
    gt_map = source.read_map(job.video, frame)
    fixations = scoring.fixation_map(job.fixations[frame], gt_map.shape)
    if options.sauc_other == "stavis":
      if union is None:
        union = np.zeros(gt_map.shape, bool)
        for entry in job.fixations.values():
          union |= scoring.fixation_map(entry, gt_map.shape)
      other = scoring.stavis_other_map(union, fixations)
    else:
      own = job.pool_start + position[frame]
      other = scoring.dhf1k_other_map(_WORKER["pools"][job.fold], own,
                                      options.n_other_frames, rng,
                                      gt_map.shape)
    pred = predictions.read(job.video, frame)
    scores[row] = scoring.score_frame(pred, gt_map, fixations, other, rng,
                                      options)
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
             options: scoring.EvalOptions, workers: int = 1,
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


def _define_flags(values: flags.FlagValues) -> None:
  on = {"flag_values": values}
  flags.DEFINE_multi_string("pred", None, (
      "Prediction folder (layouts above); several folders are folds 1, 2, ... "
      "unless --fold says otherwise"), **on)
  flags.DEFINE_string("data", None, (
      "Ground truth: the output folder of `python -m data_prep convert` "
      "(holds manifest.json), or the raw release: DHF1K root with "
      "annotation/, or the STAViS data root with annotations/ and "
      "fold_lists/."), **on)
  flags.DEFINE_enum("dataset", None, ground_truth.DATASETS, (
      "Dataset scored; also picks its published protocol (--sauc_other, "
      "--postprocess)."), **on)
  flags.DEFINE_multi_integer("fold", None, (
      "Fold number of each --pred folder, in order, or, with one folder, the "
      "folds to read from its split<k>_results/. Default: split<k>_results/ "
      "found in --pred, else every annotated video that has predictions"),
      **on)
  flags.DEFINE_multi_string("videos", None, "Only these video names", **on)
  flags.DEFINE_integer("workers", min(2, os.cpu_count()),
                       "Worker processes (1 = in this process).", **on)
  flags.DEFINE_string("out", None, "Output prefix for .csv and .json "
                      "(default: <first --pred>/metrics_<dataset>).", **on)
  flags.DEFINE_enum("sauc_other", None, ("dhf1k", "stavis"), (
      "sAUC negatives: dhf1k = 10 random other frames of the evaluated set; "
      "stavis = the same video's other fixations (default: dhf1k for DHF1K, "
      "stavis for the AV sets)."), **on)
  flags.DEFINE_enum("postprocess", None, ("none", "stavis"), (
      "Prediction post-processing before scoring (default: stavis for the "
      "AV sets, as their published evaluation does; none for DHF1K)."), **on)
  flags.DEFINE_integer("n_splits", None, "AUC-B/sAUC draws (100).", **on)
  flags.DEFINE_float("step", None, "AUC-B/sAUC threshold step (0.1).", **on)
  flags.DEFINE_integer("seed", None, "Random seed (0).", **on)
  flags.DEFINE_enum("edge_cases", None, ("mit", "nan"), (
      "Degenerate frames: mit (default) scores them as the MIT benchmark "
      "code does (SIM 0 for an all-zero prediction or map, KLD 0 for an "
      "all-zero map); nan makes those SIM/KLD values NaN and skips them."),
      **on)
  flags.DEFINE_string("report", None, (
      "Also write an HTML report to this folder: DIR/index.html with the "
      "summary table, per-video plots, the best and worst videos and a page "
      "per video with frame strips and per-frame CC/NSS (open it in any "
      "browser; no network needed)."), **on)
  flags.DEFINE_integer("report_frames", 6, "Frames per video in the "
                       "report's strips.", lower_bound=1, **on)
  flags.DEFINE_bool("progress", True, "Progress bars on stderr.", **on)
  flags.mark_flags_as_required(["pred", "data", "dataset"], flag_values=values)


_PROG = "python -m diffsal_jax.evaluate"


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on `argv` (without the program name; default
  sys.argv[1:]); returns the exit status (SystemExit for --help and usage
  errors, see `cli_flags.parse_or_exit`)."""
  args, _ = cli_flags.parse_or_exit(
      _define_flags, sys.argv[1:] if argv is None else argv, __doc__, _PROG)
  try:
    source = release_ground_truth.open_ground_truth(args.data, args.dataset)
    folds = resolve_folds(args.pred, args.fold, args.dataset)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  options = scoring.EvalOptions.for_dataset(
      args.dataset, sauc_other=args.sauc_other, postprocess=args.postprocess,
      n_splits=args.n_splits, step=args.step, seed=args.seed,
      edge_cases=args.edge_cases)
  predictions = [(fold, predictions_lib.PredictionDir(root, args.dataset))
                 for fold, root in folds]
  try:
    report = evaluate(source, predictions, options, args.workers,
                      args.videos, progress=args.progress)
  # A raw file that cannot be used, a shard damaged on disk or a prediction
  # that does not decode: each names the file and the fix.
  except (release_files.ReleaseError, shards.DamagedShardError,
          predictions_lib.DamagedPredictionError) as error:
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
  if args.report:
    paths.append(html_report.write_report(
        [html_report.Evaluation(report, source, dict(predictions))],
        args.report, frames_per_video=args.report_frames,
        workers=args.workers))
  print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
  return 0


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  console.quiet_libraries()
  sys.exit(main())


if __name__ == "__main__":
  cli()
