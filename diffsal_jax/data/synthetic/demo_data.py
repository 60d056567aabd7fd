"""Synthetic raw data + shards for the demo configs, built once on demand.

`configs/demo.py` sets `config.synthetic_data.enabled`; the trainer then calls
`ensure_synthetic_shards`, which writes a synthetic release with
`diffsal_jax.data.synthetic.synth` and converts it with `diffsal_jax.data.prep.convert_release` into
`<dir>/shards` (default dir: `<workdir>/synthetic_data`). The shards appear
by an atomic rename when complete, so an interrupted build is redone.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from diffsal_jax.data.prep import convert_release
from diffsal_jax.data.synthetic import synth
from diffsal_jax.data.synthetic import synth_scene


def scene_spec(s: ml_collections.ConfigDict) -> synth_scene.SceneSpec:
  """The scenes of `config.synthetic_data` (`s`)."""
  height, width = s.raw_size
  return synth_scene.SceneSpec(num_frames=s.frames_per_video, height=height,
                               width=width, fps=s.fps)


# Worker processes (writing the release, then converting it) pay off from
# about this many videos: the visual demo's 260 convert in 9 s instead of
# 15 s on 2 cores, while 5 small ones take 2.6 s instead of 0.4 s
# (starting the spawned workers).
_PARALLEL_MIN_VIDEOS = 64


def _workers(s: ml_collections.ConfigDict) -> int:
  videos = (s.train_videos + s.val_videos + 1 if s.layout == "dhf1k" else
            len(s.av_datasets) * s.videos_per_dataset)
  return min(4, os.cpu_count() or 1) if videos >= _PARALLEL_MIN_VIDEOS else 1


def _write_release(raw_dir: str, s: ml_collections.ConfigDict) -> None:
  spec = scene_spec(s)
  if s.layout == "dhf1k":
    numbers = synth.dhf1k_numbers(s.train_videos, s.val_videos, 1)
    synth.write_dhf1k(raw_dir, spec, numbers, seed=s.seed, workers=_workers(s))
  else:
    synth.write_av(raw_dir, spec, tuple(s.av_datasets), s.videos_per_dataset,
                   seed=s.seed, workers=_workers(s))


def _build(root: str, config: ml_collections.ConfigDict) -> None:
  s = config.synthetic_data
  os.makedirs(root, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
    raw, shards = os.path.join(tmp, "raw"), os.path.join(tmp, "shards")
    _write_release(raw, s)
    height, width = config.model.image_size
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
      status = convert_release.convert_release(
          s.layout, raw, shards, height=height, width=width,
          workers=_workers(s))
    if status != 0:
      raise RuntimeError(f"converting the synthetic data failed:\n"
                         f"{quiet.getvalue()}")
    for name in ("raw", "shards"):
      final = os.path.join(root, name)
      shutil.rmtree(final, ignore_errors=True)
    os.replace(raw, os.path.join(root, "raw"))
    os.replace(shards, os.path.join(root, "shards"))


def ensure_synthetic_shards(config: ml_collections.ConfigDict,
                            workdir: str) -> str:
  """Returns the shards folder, building it first if it is missing."""
  root = config.synthetic_data.dir or os.path.join(workdir, "synthetic_data")
  shards = os.path.join(root, "shards")
  if not os.path.isfile(os.path.join(shards, "manifest.json")):
    if jax.process_index() == 0:
      logging.info("Building synthetic %s data in %s",
                   config.synthetic_data.layout, root)
      _build(root, config)
    multihost_utils.sync_global_devices("synthetic data ready")
  return shards
