"""Validation and prediction with the DDIM sampler.

Maps are sampled on device (encoders once per clip, the Saliency-UNet per
DDIM step) and scored there with the jittable metrics (CC, NSS, SIM, KLD) at
the model's resolution; scores are averaged per video (NaN frames skipped),
then over videos, as the published evaluation does. With `with_auc`, AUC-Judd
and shuffled AUC (NumPy, on the host) are added for a subsample of at most
`config.auc_max_frames` clips; sAUC draws its negatives from the other
sampled frames (the DHF1K protocol of `evaluation.scoring`).

These are quick, resolution-reduced numbers for choosing checkpoints and
following training; benchmark numbers at the original resolution come from
`predict` (PNG maps) plus `python -m diffsal_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffsal_jax.models import diffusion
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import input_pipeline
from diffsal_jax.data import layouts
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import metrics_jax
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import scoring
from diffsal_jax.training import train_state as ts

DEVICE_METRICS = {"cc": metrics_jax.cc, "nss": metrics_jax.nss,
                  "sim": metrics_jax.sim, "kld": metrics_jax.kld}
_TRUTH_INPUT = {"cc": "map", "sim": "map", "kld": "map", "nss": "fixations"}
# Folded into the seed for the sampling noise of evaluation and prediction,
# so it differs from the training noise; the video predictor uses it too.
SAMPLING_SALT = 0xE7A1


def make_sampler(model_def: ts.ModelDef, config: ml_collections.ConfigDict,
                 mesh: Mesh) -> Callable:
  """jit(params, batch_stats, inputs, key) -> (B,H,W) maps, batch-sharded."""
  schedule = diffusion.make_schedule(config.diffusion.num_timesteps)
  uint8_images = config.data.image_dtype == "uint8"

  def sample(params, batch_stats, inputs, key):
    model = ts.merge_model(model_def, params, batch_stats)
    img = inputs["img"]
    if uint8_images:
      img = batch_lib.normalise_on_device(img, config.data.dataset)
    audio = inputs.get("audio") if model_def.uses_audio else None
    maps = diffusion.sample_saliency(
        model, img, key, audio, schedule=schedule,
        steps=config.diffusion.sampling_steps, eta=config.diffusion.eta)
    return maps[..., 0]

  return jax.jit(sample, out_shardings=ts.batch_sharding(mesh))


@jax.jit
def score_batch(maps: jax.Array, truth: dict[str, jax.Array]
                ) -> dict[str, jax.Array]:
  """Per-sample device metrics, each (B,)."""
  return {name: jax.vmap(fn)(maps, truth[_TRUTH_INPUT[name]])
          for name, fn in DEVICE_METRICS.items()}


def _global(local: np.ndarray, mesh: Mesh) -> jax.Array:
  return jax.make_array_from_process_local_data(ts.batch_sharding(mesh), local)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas of a row block appear once
      seen.add(start)
      rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


def eval_batches(config: ml_collections.ConfigDict, split: str
                 ) -> Iterator[dict[str, np.ndarray]]:
  return iter(input_pipeline.create_eval_dataset(
      config, split, process_index=jax.process_index(),
      process_count=jax.process_count()))


def num_eval_batches(config: ml_collections.ConfigDict, split: str) -> int:
  table = input_pipeline.clip_table(input_pipeline.validate(config), config,
                                    split)
  return math.ceil(len(table) / config.eval_batch_size)


@dataclasses.dataclass
class _VideoSums:
  """Per-video sums and counts of finite scores (indexed by manifest id)."""
  sums: dict[str, np.ndarray]
  counts: dict[str, np.ndarray]

  @classmethod
  def create(cls, names, num_videos: int) -> _VideoSums:
    return cls({n: np.zeros(num_videos) for n in names},
               {n: np.zeros(num_videos) for n in names})

  def add(self, name: str, videos: np.ndarray, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    np.add.at(self.sums[name], videos[finite], values[finite])
    np.add.at(self.counts[name], videos[finite], 1)

  def means(self) -> dict[str, float]:
    """Mean over videos of the per-video means (summed over processes)."""
    out = {}
    for name in self.sums:
      sums, counts = (np.asarray(multihost_utils.process_allgather(
          x[name])).reshape(-1, x[name].size).sum(0)
                      for x in (self.sums, self.counts))
      seen = counts > 0
      out[name] = float(np.mean(sums[seen] / counts[seen])) if seen.any() else (
          float("nan"))
    return out


@dataclasses.dataclass
class _AucFrames:
  """The sampled frames kept on the host for AUC-Judd and sAUC."""
  stride: int
  maps: list = dataclasses.field(default_factory=list)
  fixations: list = dataclasses.field(default_factory=list)
  videos: list = dataclasses.field(default_factory=list)
  seen: int = 0

  def add(self, maps: np.ndarray, fixations: np.ndarray, videos: np.ndarray):
    for m, f, v in zip(maps, fixations, videos):
      if self.seen % self.stride == 0:
        peak = max(float(m.max()), 1e-12)  # uint8 like the PNG predictions
        self.maps.append(np.round(m / peak * 255).astype(np.uint8))
        self.fixations.append((f.shape, np.flatnonzero(f).astype(np.int32)))
        self.videos.append(int(v))
      self.seen += 1

  def score_into(self, sums: _VideoSums, seed: int) -> None:
    for i, (pred, fix, video) in enumerate(zip(self.maps, self.fixations,
                                               self.videos)):
      rng = np.random.default_rng([seed, i])
      fixations = np.zeros(fix[0], bool)
      fixations.flat[fix[1]] = True
      other = scoring.dhf1k_other_map(self.fixations, i, 10, rng, fix[0])
      video = np.array([video])
      sums.add("auc_judd", video, np.array([metrics.auc_judd(
          pred.astype(np.float64), fixations, rng=rng)]))
      sums.add("sauc", video, np.array([metrics.auc_shuffled(
          pred.astype(np.float64), fixations, other, rng=rng)]))


def evaluate_split(params, batch_stats, sampler: Callable,
                   config: ml_collections.ConfigDict, mesh: Mesh, split: str, *,
                   with_auc: bool = False, max_batches: int = -1,
                   progress: bool = True,
                   out_dir: str | None = None) -> dict[str, float]:
  """Samples and scores `split`; the sampling key is fixed by config.seed.

  With `out_dir`, also writes the maps as `predict_split` does (the same
  maps: same batches and keys), so a report needs no second sampling pass.
  """
  manifest = input_pipeline.validate(config, jax.process_count())
  names = list(DEVICE_METRICS) + (["auc_judd", "sauc"] if with_auc else [])
  sums = _VideoSums.create(names, len(manifest.videos))
  total = num_eval_batches(config, split)
  if max_batches > 0:
    total = min(total, max_batches)
  auc = _AucFrames(stride=max(1, math.ceil(
      total * config.eval_batch_size / config.auc_max_frames)))
  key = jax.random.fold_in(jax.random.key(config.seed), SAMPLING_SALT)
  batches = eval_batches(config, split)
  for i in tqdm.trange(total, desc=f"eval {split}", leave=False,
                       disable=not progress or jax.process_index() != 0):
    batch = next(batches)
    inputs = {k: _global(batch[k], mesh) for k in batch_lib.MODEL_KEYS if k in batch}
    maps = sampler(params, batch_stats, inputs, jax.random.fold_in(key, i))
    if out_dir is not None:
      _save_maps(manifest, batch, local_rows(maps), out_dir)
    truth = {k: _global(batch[k], mesh) for k in ("map", "fixations")}
    scores = score_batch(maps, truth)
    valid = batch["valid"]
    videos = batch["video"][valid]
    for name in DEVICE_METRICS:
      sums.add(name, videos, local_rows(scores[name])[valid])
    if with_auc:
      auc.add(local_rows(maps)[valid], batch["fixations"][valid] > 0, videos)
  if with_auc:
    auc.score_into(sums, config.seed)
  return sums.means()


def prediction_folder(entry) -> tuple[str, str]:
  """(dataset, video) folder names that `diffsal_jax.evaluate` reads."""
  if entry.dataset == "DHF1K":
    return "dhf1k", f"{int(entry.name):04d}"
  by_folder = {v: k for k, v in layouts.AV_FOLDERS.items()}
  return by_folder[entry.dataset], entry.name


def predict_split(params, batch_stats, sampler: Callable,
                  config: ml_collections.ConfigDict, mesh: Mesh, split: str,
                  out_dir: str, *, progress: bool = True) -> int:
  """Writes `out_dir/<dataset>/<video>/<frame:05d>.png`; returns the count."""
  manifest = input_pipeline.validate(config, jax.process_count())
  key = jax.random.fold_in(jax.random.key(config.seed), SAMPLING_SALT)
  batches = eval_batches(config, split)
  written = 0
  for i in tqdm.trange(num_eval_batches(config, split), desc=f"predict {split}",
                       disable=not progress or jax.process_index() != 0):
    batch = next(batches)
    inputs = {k: _global(batch[k], mesh) for k in batch_lib.MODEL_KEYS if k in batch}
    maps = local_rows(sampler(params, batch_stats, inputs,
                              jax.random.fold_in(key, i)))
    written += _save_maps(manifest, batch, maps, out_dir)
  return written


def _save_maps(manifest, batch: dict[str, np.ndarray], maps: np.ndarray,
               out_dir: str) -> int:
  """Writes this process's valid rows of `maps`; returns how many."""
  written = 0
  for m, video, frame, valid in zip(maps, batch["video"], batch["frame"],
                                    batch["valid"]):
    if valid:
      dataset, folder = prediction_folder(manifest.videos[int(video)])
      predictions.save_prediction(out_dir, dataset, folder, int(frame), m)
      written += 1
  return written
