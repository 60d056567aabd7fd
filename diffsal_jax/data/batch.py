"""The batch contract: what every batch holds, and how frames are normalised.

The grain loader (`input_pipeline`), the train step, the in-training
evaluation (`training/validation.py`) and the video predictor all build or
read batches of this one shape. Per process, B = local batch rows:

  key        shape              dtype    meaning
  img        (B, T, H, W, 3)    float32  frames normalised like the published
                                         transforms (see `normalise`), or
             (B, T, H, W, 3)    uint8    raw RGB when config.data.image_dtype
                                         is 'uint8' (`normalise_on_device`)
  map        (B, H, W)          float32  target saliency map of the clip's
                                         target frame, 0..1 (stored 8-bit / 255)
  fixations  (B, H, W)          uint8    1 at fixated pixels of that frame
  audio      (B, P, h, w)       float32  log-mel patches (AV model only);
                                         P = `num_audio_patches`, (h, w) =
                                         config.model.audio_size
  video      (B,)               int32    manifest index of the video (-1: pad)
  frame      (B,)               int32    1-based target frame number
  valid      (B,)               bool     False on padding rows of evaluation

T = config.model.clip_len, (H, W) = config.model.image_size. Training
batches carry TRAIN_KEYS; evaluation adds the rest; the predictor sends
only MODEL_KEYS. Padding rows are all zero.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import ml_collections
import numpy as np

from diffsal_jax.models.config import num_audio_patches  # noqa: F401 (part of the contract)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AV_MEAN = (114.7748, 107.7354, 99.475)
AV_STD = (38.7568578, 37.88248729, 40.02898126)
FAMILIES = ("dhf1k", "av")                # normalisation rules (see below)

MODEL_KEYS = ("img", "audio")             # what the network reads
TRAIN_KEYS = ("img", "map", "audio")      # what the train step reads
TRUTH_KEYS = ("map", "fixations")         # what the scores compare against


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Shapes and dtypes of one batch of `rows` clips (see the module table)."""
  rows: int
  clip_len: int
  image_hw: tuple[int, int]
  image_dtype: str = "float32"             # 'float32' or 'uint8'
  audio: tuple[int, int, int] | None = None  # (P, h, w); None: visual model
  with_truth: bool = False                 # map and fixations
  with_index: bool = False                 # video, frame, valid

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, rows: int, *,
                  with_truth: bool = False, with_index: bool = False
                  ) -> "BatchSpec":
    m = config.model
    audio = ((num_audio_patches(m), *m.audio_size) if m.variant == "av"
             else None)
    return cls(rows, m.clip_len, tuple(m.image_size),
               config.data.image_dtype, audio, with_truth, with_index)

  def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of every array the batch holds."""
    b, (h, w) = self.rows, self.image_hw
    out = {"img": ((b, self.clip_len, h, w, 3), np.dtype(self.image_dtype))}
    if self.audio:
      out["audio"] = ((b, *self.audio), np.dtype(np.float32))
    if self.with_truth:
      out["map"] = ((b, h, w), np.dtype(np.float32))
      out["fixations"] = ((b, h, w), np.dtype(np.uint8))
    if self.with_index:
      out.update(video=((b,), np.dtype(np.int32)),
                 frame=((b,), np.dtype(np.int32)), valid=((b,), np.dtype(bool)))
    return out

  def zeros(self) -> dict[str, np.ndarray]:
    """A batch of zeros (what padding rows hold)."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
            self.shapes().items()}

  def check(self, batch: dict[str, np.ndarray]) -> None:
    """Raises ValueError naming the first key whose shape or dtype differs."""
    for key, (shape, dtype) in self.shapes().items():
      if key not in batch:
        raise ValueError(f"batch lacks {key!r} {shape} {dtype}")
      got = np.asarray(batch[key]) if not hasattr(batch[key], "shape") else batch[key]
      if tuple(got.shape) != shape or np.dtype(got.dtype) != dtype:
        raise ValueError(f"batch[{key!r}] is {tuple(got.shape)} {got.dtype}, "
                         f"the contract says {shape} {dtype}")


def normalisation_table(family: str) -> np.ndarray:
  """(256, 3) float32: the published normalisation of each uint8 value.

  DHF1K: ToTensor (x / 255) then Normalize (ImageNet); AV: ToTensor with
  norm_value 1 (0..255 kept) then Normalize with the STAViS statistics.
  """
  values = np.arange(256, dtype=np.float32)[:, None]
  if family == "dhf1k":
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    return (values / np.float32(255.0) - mean) / std
  return (values - np.float32(AV_MEAN)) / np.float32(AV_STD)


@functools.lru_cache(maxsize=2)
def _byte_pair_table(family: str) -> np.ndarray:
  """(3, 65536) float64 words, each two float32 results for a pair of bytes.

  Read as uint16 (little-endian), RGB bytes come in pairs RG, BR, GB (phase
  0, 1, 2 of every 3 words); one lookup then writes two output floats.
  """
  table = normalisation_table(family)
  words = np.arange(65536)
  pairs = np.empty((3, 65536, 2), np.float32)
  for phase in range(3):
    pairs[phase, :, 0] = table[words & 255, (2 * phase) % 3]
    pairs[phase, :, 1] = table[words >> 8, (2 * phase + 1) % 3]
  return pairs.view(np.float64)[..., 0]


def normalise(frames: np.ndarray, family: str) -> np.ndarray:
  """uint8 (..., H, W, 3) -> float32 by table lookup, frame by frame (the
  lookups of one frame stay in cache), two bytes per lookup when possible."""
  out = np.empty(frames.shape, np.float32)
  frame_bytes = frames.shape[-3] * frames.shape[-2] * 3
  if frame_bytes % 6 or sys.byteorder != "little":
    table = normalisation_table(family)
    for c in range(3):
      np.take(table[:, c], frames[..., c], out=out[..., c], mode="clip")
    return out
  pairs = _byte_pair_table(family)
  for src, dst in zip(np.ascontiguousarray(frames).reshape(-1, frame_bytes),
                      out.reshape(-1, frame_bytes)):
    words, doubles = src.view(np.uint16).reshape(-1, 3), dst.view(np.float64).reshape(-1, 3)
    for phase in range(3):
      np.take(pairs[phase], words[:, phase], out=doubles[:, phase], mode="clip")
  return out


def normalise_on_device(img, dataset: str):
  """uint8 'img' batches (config.data.image_dtype='uint8') -> the float32
  the loader would have produced, as a jax array (a gather, so bit-identical)."""
  import jax.numpy as jnp   # pylint: disable=g-import-not-at-top (loader workers never need jax)
  table = jnp.asarray(normalisation_table(dataset))
  return table[jnp.asarray(img).astype(jnp.int32), jnp.arange(3)]
