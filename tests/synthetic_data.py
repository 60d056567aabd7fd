"""Small synthetic releases and their conversions, shared by the data tests.

Sizes follow the tiny model (clips of 8 frames at 64x96, 5 audio patches of
32x48); raw frames are 60x96 so every resize rule really resizes.
"""

from __future__ import annotations

import contextlib
import io
import pathlib

import ml_collections

from diffsal_jax.data.prep import convert_release
from diffsal_jax.data.synthetic import synth
from diffsal_jax.data.synthetic import synth_scene
from diffsal_jax.data import input_pipeline
from diffsal_jax.models import config as model_config

MODEL_HW = (64, 96)
RAW_SPEC = dict(height=60, width=96, fps=25.0)
AV_TEST_DATASETS = ("DIEM", "AVAD")


def make_dhf1k(root: pathlib.Path, fmt: str, num_frames: int = 32) -> pathlib.Path:
  spec = synth_scene.SceneSpec(num_frames=num_frames, **RAW_SPEC)
  synth.write_dhf1k(root, spec, synth.dhf1k_numbers(2, 1, 1), fmt=fmt, seed=1)
  return root


def make_av(root: pathlib.Path, datasets=AV_TEST_DATASETS, videos: int = 3,
            num_frames: int = 24) -> pathlib.Path:
  spec = synth_scene.SceneSpec(num_frames=num_frames, sample_rate=44100, **RAW_SPEC)
  synth.write_av(root, spec, datasets, videos_per_dataset=videos, seed=2)
  return root


def convert_quietly(dataset: str, src, dst, **kwargs) -> tuple[int, str]:
  """Runs the converter in-process; returns (exit status, printed text)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    status = convert_release.convert_release(dataset, src, dst, height=MODEL_HW[0], width=MODEL_HW[1],
                                 **kwargs)
  return status, out.getvalue()


def pipeline_config(shards, dataset: str, variant: str = "visual",
                    batch_size: int = 2) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = model_config.tiny_model_config(variant)
  config.data = input_pipeline.default_data_config()
  config.data.shards = str(shards)
  config.data.dataset = dataset
  config.data.av_datasets = AV_TEST_DATASETS
  config.data.num_threads = 0
  config.batch_size = batch_size
  return config
