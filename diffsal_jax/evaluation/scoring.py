"""Scores of one frame: the sAUC negatives ("other map") and all seven metrics.

The library behind `python -m diffsal_jax.evaluate` (whose runner,
`evaluate.evaluate`, reads the frames and calls these) and the host-side
AUCs of training's validation. Maps are NumPy arrays of one frame:

  prediction   `(h, w)` float in [0, 1] (an 8-bit PNG / 255), any size:
               resized to the ground truth's size with `metrics.resize_map`;
  saliency map `(H, W)` float in [0, 1];
  fixations    `(H, W)` bool, True at fixated pixels;
  other map    `(H, W)` bool, fixated pixels the sAUC negatives come from.

A frame's fixations are kept compactly as `FrameFixations`: `((H0, W0),
flat indices)` with int32 indices into the `(H0, W0)` fixation map the
release stores, which may differ in size from the frame being scored
(`fixation_map` rescales them).

Conventions, by the published evaluation they follow:
  * DHF1K (`sauc_other="dhf1k"`, no post-processing): sAUC negatives pool
    the fixations of `n_other_frames` (10) random other annotated frames
    (`dhf1k_other_map`).
  * STAViS, the audio-visual sets (`sauc_other="stavis"`,
    `postprocess="stavis"`): negatives are the union of every frame of the
    same video minus the frame's own fixated pixels (`createShuffmap1.m`,
    `stavis_other_map`); the prediction first goes through
    `postprocessMap.m` with sigma 2 (`stavis_postprocess`).
  * The metrics themselves follow the MIT benchmark's MATLAB code, edge
    cases included (`metrics`); `edge_cases="nan"` keeps the older rule
    that made SIM / KLD of degenerate frames NaN.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from diffsal_jax.evaluation import metrics

# ((H0, W0) of the stored fixation map, int32 flat indices of fixated pixels).
FrameFixations = tuple[tuple[int, int], np.ndarray]

METRIC_INDEX = {name: i for i, name in enumerate(metrics.METRIC_NAMES)}


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """How frames are scored.

  n_splits, step: AUC-Borji / sAUC draws of negatives and threshold step.
  sauc_other: "dhf1k" pools the fixations of `n_other_frames` random other
    frames of the evaluated set; "stavis" takes the union of all frames of
    the same video minus the frame's own fixated pixels (createShuffmap1).
  postprocess: "stavis" applies the STAViS evaluation post-processing to the
    prediction (scale by max, Gaussian blur sigma 2) before resizing.
  seed: first entry of every frame's random generator (see `video_seed`).
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

  pred: `(H, W)` in [0, 1] (im2double of the saved map). Returns `(H, W)`
  float64. Scales by 255, clips to [0, 255], divides by the max, min-max
  normalises (normalizeImage1.m: a constant map becomes 0.5) and blurs. An
  all-zero map becomes NaN everywhere (MATLAB's 0 / 0), so every metric of
  that frame is NaN and the frame is skipped, as in the STAViS scripts.
  """
  pred = np.clip(255.0 * np.asarray(pred, np.float64), 0.0, 255.0)
  if not pred.any():
    return np.full(pred.shape, np.nan)
  pred = pred / pred.max() * 255.0
  span = pred.max() - pred.min()
  pred = (pred - pred.min()) / span if span > 0 else pred - pred.max() + 0.5
  # 13x13 sampled Gaussian, mirrored borders = fspecial + imfilter symmetric.
  return scipy.ndimage.gaussian_filter(pred, 2.0, mode="reflect", truncate=3.0)


def fixation_map(entry: FrameFixations, shape) -> np.ndarray:
  """`shape` bool map of `entry`, coordinates rescaled if its size differs.

  A pixel (r, c) of an `(H0, W0)` map lands on ((r + 0.5) H / H0, (c + 0.5)
  W / W0), rounded down and kept inside the map.
  """
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
  """DHF1K sAUC negatives: `shape` bool union of the fixations of `n_other`
  distinct random frames of `pool` other than `pool[own_index]` (all of them
  when the pool is smaller), rescaled to `shape`."""
  count = min(n_other, len(pool) - 1)
  picks = rng.choice(len(pool) - 1, count, replace=False)
  picks = picks + (picks >= own_index)
  out = np.zeros(shape, bool)
  for index in picks:
    out |= fixation_map(pool[index], shape)
  return out


def stavis_other_map(video_union: np.ndarray,
                     fixations: np.ndarray) -> np.ndarray:
  """STAViS sAUC negatives (createShuffmap1.m): the union of all the video's
  fixations minus this frame's fixated pixels; `(H, W)` bool in, bool out."""
  return video_union & ~fixations


def score_frame(pred: np.ndarray, gt_map: np.ndarray, fixations: np.ndarray,
                other_map: np.ndarray, rng: np.random.Generator,
                options: EvalOptions) -> np.ndarray:
  """All metrics of one frame: `(7,)` float64 in `metrics.METRIC_NAMES` order.

  pred: `(h, w)` in [0, 1], post-processed (`options.postprocess`) and then
  resized once to `gt_map.shape`; gt_map: `(H, W)` saliency map; fixations,
  other_map: `(H, W)` bool. `rng` draws the AUC-Judd jitter and the AUC-B /
  sAUC negatives. NaN marks a metric undefined on this frame.
  """
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


def video_seed(video: str) -> int:
  """A stable number for `video` (CRC-32 of its name) to seed its draws."""
  return zlib.crc32(video.encode("utf-8"))


def frame_rng(options: EvalOptions, fold: int | None, video: str,
              frame: int) -> np.random.Generator:
  """The generator of one frame's draws, seeded from names, not run order,
  so a video scores the same in any run: (seed, fold or 0, CRC-32 of the
  video name, frame)."""
  return np.random.default_rng(
      [options.seed, fold or 0, video_seed(video), frame])
