"""Restores a DiffSal checkpoint and predicts a map for every video frame.

Windows: frame f (1-based) is predicted from the T = config.model.clip_len
frames f - T/2 .. f + T/2 - 1, the clip whose target it is in the published
loaders (DHF1K clips target their (T/2+1)-th frame, the AV ones their rounded
median). Near the start and the end the clip is padded by repeating the
first / last frame, so every frame gets a map. A clip's audio is that of its
first to last frame, as in training.

This shares main's `--mode=predict` path: the same resize rules
(`diffsal_jax.data.image_rules`), normalisation (`data/batch.py`, on the host or
the device as config.data.image_dtype says), audio features
(`audio.clip_log_mel`), checkpoint restore (`model_setup.load_for_eval`) and
jitted sampler (`validation.make_sampler`), and batches of
config.eval_batch_size whose noise comes from the same keys
(`fold_in(fold_in(key(seed), validation.SAMPLING_SALT), batch)`).
Windows are batched in the order main's test split uses (full windows in
frame order, then the padded ones), so for a video that is alone in a test split the maps equal main's.
Another batch size draws other noise: equally valid maps, not the same ones.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from PIL import Image

from diffsal_jax.data import image_rules
from diffsal_jax.data import audio as audio_lib
from diffsal_jax.training import checkpointing
from diffsal_jax.data import batch as batch_lib
from diffsal_jax.training import model_setup
from diffsal_jax.training import train_config
from diffsal_jax.training import train_state as ts
from diffsal_jax.training import validation
from diffsal_jax.inference import video_io

NORMALISATIONS = ("auto", "dhf1k", "av")


class CheckpointMismatch(ValueError):
  """The checkpoint holds another model variant than the config asks for."""


class ConfigMissing(ValueError):
  """No --config and no config saved beside the checkpoint."""


# ------------------------------------------------------------ model set-up --

def load_config(checkpoint: str, config: ml_collections.ConfigDict | None
                ) -> ml_collections.ConfigDict:
  """--config if given, else the workdir's saved config."""
  if config is not None:
    return ml_collections.ConfigDict(config.to_dict())
  saved = os.path.join(checkpoint, model_setup.SAVED_CONFIG)
  if os.path.isfile(saved):
    with open(saved) as f:
      return ml_collections.ConfigDict(json.load(f))
  raise ConfigMissing(
      f"--config is required: {checkpoint} has no saved "
      f"{model_setup.SAVED_CONFIG}. Pass "
      "the config the weights were trained or converted with, e.g. "
      "--config=configs/av_finetune.py (audio-visual) or configs/pretrain.py")


def checkpoint_variant(directory: str) -> str | None:
  """'av' or 'visual' from the variable names stored (None if unreadable)."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      meta = checkpointer.metadata(directory)
  except Exception:  # pylint: disable=broad-except (the restore reports it)
    return None
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  params = tree.get(checkpointing.PARAMS, {}) if hasattr(tree, "get") else {}
  return "av" if "audio_net" in params else "visual"


def _check_variant(directory: str, config: ml_collections.ConfigDict) -> None:
  found, wanted = checkpoint_variant(directory), config.model.variant
  if found is None or found == wanted:
    return
  fix = "configs/av_finetune.py" if found == "av" else "configs/pretrain.py"
  raise CheckpointMismatch(
      f"{directory} holds the {found!r} model but the config asks for the "
      f"{wanted!r} one; pass --config={fix}"
      + (". Audio-visual prediction needs an audio-visual checkpoint" if
         wanted == "av" else ""))


def resolve_normalisation(config: ml_collections.ConfigDict,
                          choice: str) -> str:
  """'dhf1k' (ImageNet mean/std) or 'av' (STAViS statistics, 0..255 scale).

  'auto' takes the family the config was trained on (config.data.dataset):
  DHF1K pre-training -> 'dhf1k', audio-visual fine-tuning -> 'av'.
  """
  if choice != "auto":
    return choice
  data = config.get("data")
  if data is not None and data.get("dataset") in batch_lib.FAMILIES:
    return data.dataset
  return "av" if config.model.variant == "av" else "dhf1k"


@dataclasses.dataclass
class Window:
  """One clip: the frame it predicts, its 1-based frames, uint8 pixels."""
  target: int
  frames: list[int]
  clip: np.ndarray


def clip_frames(target: int, num_frames: int, clip_len: int) -> list[int]:
  """Frames target - T/2 .. target + T/2 - 1, clamped to 1..num_frames."""
  first = target - clip_len // 2
  return [min(max(first + k, 1), num_frames) for k in range(clip_len)]


class ClipWindows:
  """Turns a stream of frames into windows, in main's batching order.

  Full windows come out as soon as their last frame arrives (target frames
  T/2+1 .. N-T/2+1, in order); the padded ones of the start and the end come
  from `finish`. Only the first T-1 and the last T frames are kept.
  """

  def __init__(self, clip_len: int):
    self.clip_len = clip_len
    self.count = 0
    self._first: list[np.ndarray] = []
    self._recent: collections.deque = collections.deque(maxlen=clip_len)

  def push(self, frame: np.ndarray) -> list[Window]:
    self.count += 1
    if len(self._first) < self.clip_len - 1:
      self._first.append(frame)
    self._recent.append(frame)
    if self.count < self.clip_len:
      return []
    target = self.count - self.clip_len // 2 + 1
    return [Window(target, clip_frames(target, self.count, self.clip_len),
                   np.stack(self._recent))]

  def _frame(self, k: int) -> np.ndarray:
    if k <= len(self._first):
      return self._first[k - 1]
    return self._recent[k - (self.count - len(self._recent)) - 1]

  def finish(self) -> list[Window]:
    n, half = self.count, self.clip_len // 2
    if n == 0:
      return []
    full = range(half + 1, n - half + 2) if n >= self.clip_len else range(0)
    edges = [f for f in range(1, n + 1) if f not in full]
    return [Window(f, frames, np.stack([self._frame(k) for k in frames]))
            for f in edges for frames in [clip_frames(f, n, self.clip_len)]]


class Predictor:
  """A restored model, its sampler and the input rules of its data family."""

  def __init__(self, config: ml_collections.ConfigDict, checkpoint: str, *,
               prefer: str = "best", normalisation: str = "auto",
               batch_size: int = 0, steps: int = 0, eta: float | None = None,
               seed: int | None = None):
    config = ml_collections.ConfigDict(config.to_dict())
    self.family = resolve_normalisation(config, normalisation)
    # The sampler normalises with these rules when data.image_dtype is
    # 'uint8'; for 'float32' (the default) `_inputs` does it on the host.
    # Either way main's compiled sampler is used unchanged.
    config.data.dataset = self.family
    config.eval_batch_size = batch_size or config.eval_batch_size
    config.diffusion.sampling_steps = steps or config.diffusion.sampling_steps
    config.diffusion.eta = config.diffusion.eta if eta is None else eta
    config.seed = config.seed if seed is None else seed
    train_config.validate_config(config, needs_data=False)
    directory = checkpointing.resolve_variables_dir(checkpoint, prefer)
    _check_variant(directory, config)
    self.config = config
    self.model = model_setup.abstract_model(config)
    self.params, self.batch_stats = model_setup.load_for_eval(
        self.model, config, directory)
    self.sampler = validation.make_sampler(self.model.model_def, config,
                                           self.model.mesh)
    self.uses_audio = config.model.variant == "av"
    self.checkpoint = directory
    logging.info("Restored %s (%s model); frames normalised as %r", directory,
                 config.model.variant, self.family)

  @property
  def clip_len(self) -> int:
    return self.config.model.clip_len

  @property
  def batch_size(self) -> int:
    return self.config.eval_batch_size

  def _windows(self, frames: Iterable[Image.Image]) -> Iterator[Window]:
    windows = ClipWindows(self.clip_len)
    size = tuple(self.config.model.image_size)
    for image in frames:
      yield from windows.push(image_rules.frame_to_model_size(
          image, self.family, size))
    if windows.count == 0:
      raise video_io.MediaError("no frames could be decoded")
    yield from windows.finish()

  def _audio_features(self, batch: list[Window], wave: np.ndarray, rate: int,
                      fps: float, times, pool) -> np.ndarray:
    patches = batch_lib.num_audio_patches(self.config.model)
    size = tuple(self.config.model.audio_size)

    def one(window: Window) -> np.ndarray:
      mel = audio_lib.clip_log_mel(wave, rate, fps, window.frames[0],
                                   window.frames[-1], patches,
                                   frame_times=times)
      return audio_lib.resize_patches(mel, size)

    return np.stack(list(pool.map(one, batch)))

  def _inputs(self, batch: list[Window], audio, fps: float, times,
              pool) -> dict:
    rows = self.batch_size
    img = np.zeros((rows, *batch[0].clip.shape), np.uint8)
    img[:len(batch)] = [w.clip for w in batch]
    if self.config.data.image_dtype == "float32":
      img = batch_lib.normalise(img, self.family)
      img[len(batch):] = 0.0   # padding rows, as the loader leaves them
    local = {"img": img}
    if self.uses_audio:
      features = self._audio_features(batch, *audio, fps, times, pool)
      local["audio"] = np.zeros((rows, *features.shape[1:]), np.float32)
      local["audio"][:len(batch)] = features
    sharding = ts.batch_sharding(self.model.mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local.items()}

  def predict(self, frames: Iterable[Image.Image], fps: float,
              audio: tuple[np.ndarray, int] | None = None,
              times: Sequence[float] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (frame number, (H, W) float32 map at the model's size).

    `audio`: (mono wave, rate) as `audio.load_wav` returns, sample 0 shown
    with the first frame; required by the audio-visual model (see
    `video_io.silent_wave` for a video without sound).
    `times`: (N,) presentation times in seconds from the first frame (a
    variable-rate video's `FrameTiming.times`); a clip's audio then runs from
    half a mean period (1/fps) before its first frame's time to half one
    after its last frame's. None: frame f at (f-1)/fps, as in training.
    Maps come in main's order (full windows first), each frame once.
    """
    if self.uses_audio and audio is None:
      raise ValueError("the audio-visual model needs the audio (wave, rate)")
    key = jax.random.fold_in(jax.random.key(self.config.seed),
                             validation.SAMPLING_SALT)
    pending = None
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for index, batch in enumerate(_batched(self._windows(frames),
                                             self.batch_size)):
        inputs = self._inputs(batch, audio, float(fps), times, pool)
        maps = self.sampler(self.params, self.batch_stats, inputs,
                            jax.random.fold_in(key, index))   # asynchronous
        if pending is not None:
          yield from _unpack(*pending)
        pending = (maps, [w.target for w in batch])
    if pending is not None:
      yield from _unpack(*pending)


def _batched(windows: Iterator[Window], size: int) -> Iterator[list[Window]]:
  batch = []
  for window in windows:
    batch.append(window)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _unpack(maps: jax.Array, targets: list[int]
            ) -> Iterator[tuple[int, np.ndarray]]:
  rows = validation.local_rows(maps)
  for target, saliency in zip(targets, rows):
    yield target, np.asarray(saliency, np.float32)
