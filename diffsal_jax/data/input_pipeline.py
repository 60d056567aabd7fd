"""grain input pipeline: clips from the shards of `python -m data_prep convert`.

Which clips, per split, follows the published loaders (spec section 6;
rules in `diffsal_jax.data.clip_sampling`), with T = config.model.clip_len:
DHF1K train takes non-overlapping clips, val/test slide by one frame; AV
train/val take one centred clip per 74 frames, test one per frame. There is
no augmentation (the published transforms have none). Clips whose target map
is all zero are left out (the published loader swaps them at run time for a
random other clip). For AV, 'val' is `val_videos_per_dataset` videos per
dataset held out of the fold's train list; 'test' is the fold's test list.

Frames are normalised like the published transforms, with float32 ops in the
same order (done once per uint8 value, then looked up per pixel), maps are
divided by 255, and the audio is `diffsal_jax.data.audio.clip_log_mel` of frames
first..last of the clip, resized to config.model.audio_size.

Training is an infinite stream (`config.data.num_epochs = 0`), reshuffled
each epoch; one epoch is `num_train_clips(config) // config.batch_size`
global steps. Evaluation pads the last batches (`valid` False) so every
process yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from typing import Any

from absl import flags
import grain
import ml_collections
import numpy as np

from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import clip_sampling
from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import shards as shards_lib

DATASETS = ("dhf1k", "av")
SPLITS = ("train", "val", "test")
_blas_controller = None   # per process, see _one_blas_thread


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults of `config.data` (the trainer embeds this)."""
  c = ml_collections.ConfigDict()
  c.shards = ""                     # OUT folder of `python -m data_prep convert`
  c.dataset = "dhf1k"               # 'dhf1k' or 'av'
  c.av_datasets = layouts.AV_DATASETS
  c.fold = 1                        # AV fold 1..3
  # AV videos per dataset held out of the fold's train list for 'val' (0: train
  # on the whole list like the published code; then use split 'test').
  c.val_videos_per_dataset = 1
  # 'float32': 'img' normalised on the host (the contract); 'uint8': raw pixels,
  # 4x less to decode, copy and transfer; normalise them on the accelerator
  # with `batch.normalise_on_device` (bit-identical result).
  c.image_dtype = "float32"
  c.num_workers = 0                 # grain worker processes (0: main process only)
  c.num_threads = 2                 # decoding threads per process
  c.prefetch_buffer = 2             # batches buffered per process
  c.seed = 0
  c.num_epochs = 0                  # 0: repeat forever
  return c


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def config_problems(config: ml_collections.ConfigDict, process_count: int = 1,
                    *, needs_shards: bool = True) -> list[str]:
  """Problems with the fields this module reads, each naming its field.

  The one place these rules live: `validate` raises the first, and the
  trainer's `train_config.validate_config` reports them with its own.
  """
  data, problems = config.data, []

  def check(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  check(data.dataset in DATASETS,
        f"config.data.dataset={data.dataset!r} must be one of {DATASETS}")
  check(1 <= data.fold <= 3, f"config.data.fold={data.fold} must be 1, 2 or 3")
  unknown = set(data.av_datasets) - set(layouts.AV_DATASETS)
  check(not unknown, f"config.data.av_datasets has unknown {sorted(unknown)}; "
        f"choose from {layouts.AV_DATASETS}")
  check(data.num_workers >= 0 and data.num_threads >= 0 and data.prefetch_buffer >= 0,
        "config.data.num_workers, num_threads and prefetch_buffer must be >= 0")
  check(data.image_dtype in ("float32", "uint8"),
        f"config.data.image_dtype={data.image_dtype!r} must be 'float32' or 'uint8'")
  check(data.val_videos_per_dataset >= 0, "config.data.val_videos_per_dataset must be >= 0")
  check(config.batch_size >= process_count and config.batch_size % process_count == 0,
        f"config.batch_size={config.batch_size} must be a multiple of the "
        f"{process_count} processes")
  check(config.model.variant != "av" or data.dataset == "av",
        "config.model.variant='av' needs config.data.dataset='av' (DHF1K has no audio)")
  check(not needs_shards or (bool(data.shards) and os.path.isdir(data.shards)),
        f"config.data.shards={data.shards!r} is not a directory: run `python -m "
        "data_prep convert --dst DIR ...` and set config.data.shards=DIR")
  return problems


def validate(config: ml_collections.ConfigDict, process_count: int = 1
             ) -> manifest_lib.Manifest:
  """Checks the fields this module reads (ValueError naming the first bad
  one); returns the shards' manifest, checked against the config."""
  problems = config_problems(config, process_count)
  _check(not problems, problems[0] if problems else "")
  data = config.data
  manifest = manifest_lib.load_manifest(data.shards)
  _check(manifest.dataset == data.dataset, f"config.data.dataset={data.dataset!r} but "
         f"{data.shards} holds {manifest.dataset!r} shards")
  _check(tuple(config.model.image_size) == manifest.image_hw,
         f"config.model.image_size={tuple(config.model.image_size)} but {data.shards} "
         f"stores {manifest.image_hw}: convert with --height/--width to match")
  return manifest


# --------------------------------------------------------- videos and clips --

def _held_out(keys: list[str], count: int) -> set[str]:
  """`count` videos per dataset, chosen by hash of the name (order-independent)."""
  chosen = set()
  for dataset in {k.split("/")[0] for k in keys}:
    names = sorted((k for k in keys if k.split("/")[0] == dataset),
                   key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    chosen.update(names[:count])
  return chosen


def split_videos(manifest: manifest_lib.Manifest, data, split: str) -> list[int]:
  """Manifest indices of the videos of `split` ('train', 'val', 'test')."""
  _check(split in SPLITS, f"split={split!r} must be one of {SPLITS}")
  index = manifest.index_of()
  if manifest.dataset == "dhf1k":
    keys = manifest.splits.get(split, [])
  else:
    fold = manifest.folds.get(str(data.fold), {"train": [], "test": []})
    wanted = set(data.av_datasets)
    keys = [k for k in fold["test" if split == "test" else "train"]
            if k.split("/")[0] in wanted]
    if split != "test":
      val = _held_out(keys, data.val_videos_per_dataset)
      keys = [k for k in keys if (k in val) == (split == "val")]
  _check(bool(keys), f"no {split!r} videos in {data.shards} for config.data "
         f"(dataset={data.dataset!r}, fold={data.fold}, av_datasets={tuple(data.av_datasets)}, "
         f"val_videos_per_dataset={data.val_videos_per_dataset})")
  return sorted(index[k] for k in keys)


@dataclasses.dataclass
class ClipTable:
  """Clips as arrays: video index, (N, T) frame numbers, target frame."""
  video: np.ndarray
  frames: np.ndarray
  target: np.ndarray

  def __len__(self) -> int:
    return len(self.video)

  def __getitem__(self, i: int) -> dict[str, Any]:
    if i < 0:   # padding of the evaluation set
      return {"video": -1, "frames": self.frames[0] * 0, "target": -1}
    return {"video": int(self.video[i]), "frames": self.frames[i], "target": int(self.target[i])}


def clip_table(manifest, config, split: str) -> ClipTable:
  clip_len = config.model.clip_len
  rows = []
  for v in split_videos(manifest, config.data, split):
    entry = manifest.videos[v]
    if manifest.dataset == "dhf1k":
      clips = clip_sampling.dhf1k_clips(entry.num_frames, clip_len, split)
    else:
      clips = clip_sampling.av_clips(entry.num_frames, clip_len, exhaustive=split == "test")
    empty = set(entry.empty_map_frames)
    rows += [(v, frames, target) for frames, target in clips if target not in empty]
  _check(bool(rows), f"split {split!r} of {config.data.shards} yields no clip of "
         f"{clip_len} frames (videos too short?)")
  return ClipTable(np.array([r[0] for r in rows], np.int32),
                   np.array([r[1] for r in rows], np.int32),
                   np.array([r[2] for r in rows], np.int32))


def num_train_clips(config: ml_collections.ConfigDict) -> int:
  """Training clips per epoch (all processes together)."""
  return len(clip_table(validate(config), config, "train"))


# ----------------------------------------------------------------- loading --

def _one_blas_thread():
  """Context that runs BLAS (the log-mel matmuls) on one thread.

  Loader processes run side by side; a multi-threaded OpenBLAS in each made
  the audio features 5-20x slower on a busy host (measured).
  """
  global _blas_controller
  if _blas_controller is None:
    import threadpoolctl   # pylint: disable=g-import-not-at-top (librosa dependency)
    _blas_controller = threadpoolctl.ThreadpoolController()
  return _blas_controller.limit(limits=1, user_api="blas")


class BatchLoader(grain.transforms.Map):
  """A batch of clip dicts -> example arrays: decodes only the clips' frames
  and targets, straight into the batch arrays (no per-clip arrays to stack).
  """

  def __init__(self, manifest, config, videos, *, with_gt: bool, with_valid: bool):
    self._manifest = manifest
    self._with_gt, self._with_valid = with_gt, with_valid
    self._store = shards_lib.ShardStore(config.data.shards, manifest, videos)
    self._family = None if config.data.image_dtype == "uint8" else manifest.dataset
    # Frames are decoded as uint8 first; `map` normalises them if asked.
    self._spec = dataclasses.replace(
        batch_lib.BatchSpec.from_config(config, 0, with_truth=with_gt,
                                        with_index=True), image_dtype="uint8")
    self._audio = self._spec.audio

  def _clip_audio(self, video: int, first: int, last: int) -> np.ndarray:
    from diffsal_jax.data import audio   # pylint: disable=g-import-not-at-top
    entry = self._manifest.videos[video]
    rate, length = entry.audio["sample_rate"], entry.audio["num_samples"]
    start, _ = audio.frame_sample_bounds(first, rate, entry.fps, length)
    _, end = audio.frame_sample_bounds(last, rate, entry.fps, length)
    # Zeros cost nothing until touched; only the clip's samples are read.
    wave = np.zeros(length, np.float32)
    if end >= start:
      wave[start:end + 1] = self._store.audio(video, start, end + 1)
    num_patches, size = self._audio[0], self._audio[1:]
    with _one_blas_thread():
      patches = audio.clip_log_mel(wave, rate, entry.fps, first, last, num_patches)
      return audio.resize_patches(patches, size)

  def map(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dataclasses.replace(self._spec, rows=len(clips["video"])).zeros()
    img = out["img"]
    out["video"][:], out["frame"][:] = clips["video"], clips["target"]
    out["valid"][:] = clips["video"] >= 0
    uint8 = self._family is None
    for i, (video, frames, target) in enumerate(
        zip(out["video"], clips["frames"], out["frame"])):
      if video < 0:   # padding of the evaluation set: zeros
        continue
      frames = [int(f) for f in frames]
      self._store.frames_uint8(video, frames, out=img[i])
      if self._with_gt:
        truth = self._store.ground_truth(video, target)
        np.divide(truth.map, np.float32(255.0), out=out["map"][i], dtype=np.float32)
        out["fixations"][i] = image_rules.render_fixations(
            truth.points, self._manifest.videos[video].orig_hw, self._manifest.image_hw)
      if self._audio:
        out["audio"][i] = self._clip_audio(video, frames[0], frames[-1])
    if not uint8:
      # Once per batch: the float32 clips (4x the bytes) are written once.
      out["img"] = batch_lib.normalise(img, self._family)
      out["img"][~out["valid"]] = 0.0
    if not self._with_valid:
      del out["valid"]
    return out


# ---------------------------------------------------------------- datasets --

class _PaddedClips:
  """The clips at `indices` of a table; index -1 is a padding clip."""

  def __init__(self, table: ClipTable, indices: list[int]):
    self._table, self._indices = table, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._table[self._indices[i]]


class ShuffledEpochs:
  """The clip table repeated `num_epochs` times (0: forever), each epoch in
  its own seeded order. Random access like grain's shuffle + repeat, but one
  NumPy permutation per epoch: grain's per-index shuffle cost 0.4-2.5 ms per
  clip (measured), a quarter of the whole clip's loading time."""

  def __init__(self, table: ClipTable, seed: int, num_epochs: int = 0):
    self._table, self._seed = table, seed
    self._length = len(table) * num_epochs if num_epochs else sys.maxsize
    self._orders = {}   # epoch -> permutation; the latest two are kept

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> dict[str, Any]:
    if not 0 <= i < self._length:
      raise IndexError(i)
    epoch, position = divmod(i, len(self._table))
    order = self._orders.get(epoch)
    if order is None:
      order = np.random.default_rng([self._seed, epoch]).permutation(len(self._table))
      self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
      self._orders[epoch] = order
    return self._table[int(order[position])]


def _to_iter(ds: grain.MapDataset, data) -> grain.IterDataset:
  read = grain.ReadOptions(num_threads=data.num_threads,
                           prefetch_buffer_size=data.prefetch_buffer)
  iter_ds = ds.to_iter_dataset(read)
  if data.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read its absl flags; outside an absl app
      # (scripts, pytest) nothing parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.num_workers, per_worker_buffer_size=max(1, data.prefetch_buffer)))
  return iter_ds


def create_train_dataset(config: ml_collections.ConfigDict, *, process_index: int = 0,
                         process_count: int = 1) -> grain.IterDataset:
  """Batches of this process: 'img', 'map', 'fixations', ['audio'], 'video', 'frame'.

  'img' (B, T, H, W, 3) is float32 normalised, or uint8 when
  config.data.image_dtype == 'uint8' (see `batch.normalise_on_device`).

  All processes shuffle the same global order (config.data.seed) and take
  every process_count-th clip, so their batches together form the global
  batch. Deterministic given the seed, whatever num_workers is.
  """
  manifest = validate(config, process_count)
  table = clip_table(manifest, config, "train")
  ds = grain.MapDataset.source(ShuffledEpochs(table, config.data.seed, config.data.num_epochs))
  ds = ds[process_index::process_count]
  ds = ds.batch(config.batch_size // process_count, drop_remainder=True)
  ds = ds.map(BatchLoader(manifest, config, np.unique(table.video), with_gt=True,
                          with_valid=False))
  return _to_iter(ds, config.data)


def create_eval_dataset(config: ml_collections.ConfigDict, split: str, *,
                        process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """One pass over `split` in order, with 'video', 'frame' and 'valid'.

  Batch size: config.eval_batch_size if set, else config.batch_size, split
  over processes. DHF1K 'test' has no 'map' / 'fixations' (no public maps).
  """
  manifest = validate(config, process_count)
  table = clip_table(manifest, config, split)
  batch_size = config.get("eval_batch_size", config.batch_size)
  _check(batch_size % process_count == 0 and batch_size >= process_count,
         f"config.eval_batch_size={batch_size} must be a multiple of the "
         f"{process_count} processes")
  per_batch = batch_size // process_count
  mine = list(range(process_index, len(table), process_count))
  per_process = -(-(-(-len(table) // process_count)) // per_batch) * per_batch
  mine += [-1] * (per_process - len(mine))
  videos = np.unique(table.video)
  with_gt = all(manifest.videos[v].has_maps for v in videos)
  ds = grain.MapDataset.source(_PaddedClips(table, mine))
  ds = ds.batch(per_batch).map(BatchLoader(manifest, config, videos, with_gt=with_gt,
                                            with_valid=True))
  return _to_iter(ds, config.data)
