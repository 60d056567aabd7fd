"""Clips/s of the grain loader against a published-style PIL loader.

  python -m tools.benchmarks.loader_speed [--layout dhf1k --workers 2 \
      --clip_len 16 --height 224 --width 384 --raw_height 360 --raw_width 640 \
      --json loader_speed.json]

Both loaders produce the same training clips (the same normalised float32
output) from the same synthetic release, with the same parallelism
(`--workers`), measured twice: as that many grain worker processes, and as
that many decoding threads in the main process (`config.data.num_threads`
with `num_workers=0`, the trainer's default). The speed-up compares each
loader's faster mode.
- pil_published: reads the raw files like the published datasets (PIL decode
  of each frame at its original size, resize, ToTensor/Normalize arithmetic
  per frame, map decode + resize; for `--layout av` also the wav and its
  log-mel patches). It runs through the same shuffle and grain batching, so
  only the per-clip work differs.
- grain_<format>: `input_pipeline.create_train_dataset` on the shards of
  `python -m data_prep convert --image_format <format>`; grain_<format>_uint8
  with config.data.image_dtype='uint8' (the trainer's default: normalisation
  left to the accelerator, `batch.normalise_on_device`).
The raw frames default to DHF1K's 360x640; clips are 16 frames at 224x384
(the published setting). The first batch of each loader (start-up) is not
timed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import grain
import ml_collections
import threadpoolctl

from diffsal_jax.data.prep import convert_release
from diffsal_jax.data import layouts
from tools import reference_loader
from diffsal_jax.data.synthetic import synth
from diffsal_jax.data.synthetic import synth_scene
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.data import input_pipeline
from diffsal_jax.models import config as model_config



def _make_release(args, raw: pathlib.Path) -> None:
  if raw.is_dir():
    return
  spec = synth_scene.SceneSpec(num_frames=args.frames, height=args.raw_height,
                               width=args.raw_width, fps=25.0, sample_rate=44100)
  if args.layout == "dhf1k":
    synth.write_dhf1k(raw, spec, synth.dhf1k_numbers(args.videos, 0, 0), fmt="frames")
  else:
    synth.write_av(raw, spec, ("DIEM",), videos_per_dataset=args.videos)


def _pipeline_config(args, shards: pathlib.Path, mode: str,
                     image_dtype: str = "float32") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = model_config.published_model_config("av" if args.layout == "av" else "visual")
  config.model.clip_len = args.clip_len
  config.model.image_size = (args.height, args.width)
  config.data = input_pipeline.default_data_config()
  config.data.update(shards=str(shards), dataset=args.layout, av_datasets=("DIEM",),
                     val_videos_per_dataset=0, image_dtype=image_dtype,
                     num_workers=args.workers if mode == "processes" else 0,
                     num_threads=args.workers if mode == "threads" else 0)
  config.batch_size = args.batch_size
  return config


def _time_batches(batches, count: int) -> float:
  """Seconds for `count` batches after the first one; then closes `batches`."""
  next(batches)
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  seconds = time.perf_counter() - start
  batches.close()
  return seconds


def time_grain(args, shards: pathlib.Path, mode: str, image_dtype: str) -> float:
  config = _pipeline_config(args, shards, mode, image_dtype)
  iterator = iter(input_pipeline.create_train_dataset(config))
  seconds = _time_batches(iterator, args.batches)
  return args.batches * args.batch_size / seconds


class ReferenceClips(grain.transforms.Map):
  """Clip dict -> the published-style example, decoded from the raw files."""

  def __init__(self, raw, layout: str, image_hw, manifest, audio_spec):
    self._args = (raw, layout, tuple(image_hw))
    self._keys = [v.key for v in manifest.videos]
    self._audio_spec = audio_spec
    self._reference = None

  def __getstate__(self):
    return {**self.__dict__, "_reference": None}

  def map(self, clip):
    if self._reference is None:   # once per worker process
      # One BLAS thread, as the grain loader and torch's DataLoader workers use.
      threadpoolctl.threadpool_limits(1, "blas")
      raw, layout, image_hw = self._args
      self._reference = reference_loader.ReferenceLoader(
          layouts.discover(layout, raw), image_hw)
    return self._reference.clip(self._keys[clip["video"]], clip["frames"].tolist(),
                                clip["target"], self._audio_spec)


def time_pil(args, raw: pathlib.Path, shards: pathlib.Path, mode: str) -> float:
  """The published-style loader on the same clips, through the same grain
  machinery (shuffle, processes or threads, batching): only the decoding differs."""
  config = _pipeline_config(args, shards, mode)
  manifest = input_pipeline.validate(config)
  table = input_pipeline.clip_table(manifest, config, "train")
  audio_spec = None
  if args.layout == "av":
    audio_spec = (batch_lib.num_audio_patches(config.model), tuple(config.model.audio_size))
  ds = grain.MapDataset.source(input_pipeline.ShuffledEpochs(table, config.data.seed))
  ds = ds.map(ReferenceClips(raw, args.layout, (args.height, args.width), manifest, audio_spec))
  ds = ds.batch(args.batch_size).to_iter_dataset(
      grain.ReadOptions(num_threads=config.data.num_threads))
  if mode == "processes":
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=args.workers))
  iterator = iter(ds)
  seconds = _time_batches(iterator, args.batches)
  return args.batches * args.batch_size / seconds


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layout", choices=("dhf1k", "av"), default="dhf1k")
  parser.add_argument("--videos", type=int, default=4)
  parser.add_argument("--frames", type=int, default=96, help="frames per synthetic video")
  parser.add_argument("--raw_height", type=int, default=360)
  parser.add_argument("--raw_width", type=int, default=640)
  parser.add_argument("--height", type=int, default=224)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--clip_len", type=int, default=16)
  parser.add_argument("--workers", type=int, default=2,
                      help="parallelism of both loaders: worker processes, then threads")
  parser.add_argument("--modes", default="processes,threads",
                      help="'processes' and/or 'threads', comma separated")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--batches", type=int, default=10, help="timed batches per loader")
  parser.add_argument("--variants", default="jpeg,jpeg_uint8,png",
                      help="grain variants: <image format>[_uint8], comma separated")
  parser.add_argument("--workdir", default="", help="keep raw data and shards here")
  parser.add_argument("--json", default="loader_speed.json", help="results file")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="loader_speed_"))
  raw = workdir / f"raw_{args.layout}_{args.raw_height}x{args.raw_width}"
  _make_release(args, raw)
  modes = [m for m in args.modes.split(",") if m]
  if not modes or set(modes) - {"processes", "threads"}:
    parser.error(f"--modes={args.modes!r}: use 'processes', 'threads' or both")
  results = {}   # loader -> {mode: clips/s}
  for variant in filter(None, args.variants.split(",")):
    fmt, _, dtype = variant.partition("_")
    shards = workdir / f"shards_{args.layout}_{fmt}_{args.height}x{args.width}"
    if not (shards / "manifest.json").is_file():
      convert_release.convert_release(args.layout, raw, shards, height=args.height,
                                  width=args.width, image_format=fmt, workers=args.workers)
    results[f"grain_{variant}"] = {m: time_grain(args, shards, m, dtype or "float32")
                                   for m in modes}
  results["pil_published"] = {m: time_pil(args, raw, shards, m) for m in modes}
  best = {name: max(rates.values()) for name, rates in results.items()}
  print(f"\n{args.layout}: {args.clip_len} frames at {args.height}x{args.width} from "
        f"{args.raw_height}x{args.raw_width} raw, {args.workers}-way parallel, "
        f"batch {args.batch_size}; clips/s")
  print(f"{'loader':18s}" + "".join(f" {m:>10s}" for m in modes) + f" {'vs PIL':>8s}")
  for name, rates in results.items():
    print(f"{name:18s}" + "".join(f" {rates[m]:10.2f}" for m in modes)
          + f" {best[name] / best['pil_published']:7.1f}x")
  report = {"args": vars(args), "clips_per_s": results,
            "speedup": {k: v / best["pil_published"] for k, v in best.items()}}
  pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  main()
