"""A loader that reads the raw release file by file, like the published code.

It is the yardstick for the converted shards: the round-trip tests compare
every frame, map, fixation set and audio window of the grain pipeline with
what this loader decodes from the raw files, and the loader benchmark times
it against the pipeline. Per frame it does what the published datasets do:
PIL decode, resize, scale and normalise in float32 (in that order).
"""

from __future__ import annotations

import functools
import io

import av
import numpy as np
from PIL import Image

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data import release_files
from diffsal_jax.data.batch import AV_MEAN, AV_STD, IMAGENET_MEAN, IMAGENET_STD


def published_normalise(frame: np.ndarray, family: str) -> np.ndarray:
  """ToTensor then Normalize, elementwise in float32, one frame (H, W, 3)."""
  x = frame.astype(np.float32)
  if family == "dhf1k":
    return (x / np.float32(255.0) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
  return (x - np.float32(AV_MEAN)) / np.float32(AV_STD)


class ReferenceLoader:
  """Clips of a raw release decoded with PIL (and PyAV for DHF1K AVIs).

  `stored_format` ('jpeg' or 'png') passes each resized frame through that
  encoder and back, i.e. gives what the shards hold; None skips that.
  """

  def __init__(self, release: layouts.Release, image_hw, stored_format: str | None = None):
    self._videos = {v.key: v for v in release.videos}
    self._image_hw = tuple(image_hw)
    self._stored_format = stored_format

  def source(self, key: str) -> layouts.VideoSource:
    return self._videos[key]

  @functools.lru_cache(maxsize=4)
  def _avi_frames(self, key: str) -> list[Image.Image]:
    with av.open(str(self._videos[key].avi_path)) as container:
      return [f.to_image() for f in container.decode(video=0)]

  def _raw_frame(self, key: str, k: int) -> Image.Image:
    src = self._videos[key]
    if src.avi_path is not None:
      return self._avi_frames(key)[k - 1]
    with open(src.frame_path(k), "rb") as f:
      return Image.open(io.BytesIO(f.read()))

  def frame_uint8(self, key: str, k: int) -> np.ndarray:
    src = self._videos[key]
    frame = image_rules.frame_to_model_size(self._raw_frame(key, k), src.family, self._image_hw)
    if self._stored_format:
      frame = image_rules.decode_image(image_rules.encode_image(frame, self._stored_format))
    return frame

  def clip_images(self, key: str, frames) -> np.ndarray:
    """(T, H, W, 3) float32, normalised like the published transforms."""
    family = self._videos[key].family
    return np.stack([published_normalise(self.frame_uint8(key, k), family) for k in frames])

  def map_uint8(self, key: str, k: int) -> np.ndarray:
    with Image.open(self._videos[key].map_path(k)) as img:
      return image_rules.map_to_model_size(img, self._image_hw)

  def map_original_bytes(self, key: str, k: int) -> bytes:
    return self._videos[key].map_path(k).read_bytes()

  def fixation_points(self, key: str, k: int) -> np.ndarray:
    path = self._videos[key].fix_path(k)
    if path.suffix == ".mat":
      return image_rules.fixation_points(release_files.read_fixation_mat(path))
    with Image.open(path) as img:
      return image_rules.fixations_from_image(img)

  def fixation_map(self, key: str, k: int) -> np.ndarray:
    """Binary uint8 map at model resolution (rule of `image_rules.render_fixations`)."""
    with Image.open(self._videos[key].map_path(k)) as img:
      orig_hw = (img.height, img.width)
    return image_rules.render_fixations(self.fixation_points(key, k), orig_hw, self._image_hw)

  def wave(self, key: str):
    from diffsal_jax.data import audio   # pylint: disable=g-import-not-at-top
    return audio.load_wav(self._videos[key].wav_path)

  def clip_audio(self, key: str, frames, num_patches: int, size) -> np.ndarray:
    from diffsal_jax.data import audio   # pylint: disable=g-import-not-at-top
    wave, rate = self.wave(key)
    patches = audio.clip_log_mel(wave, rate, self._videos[key].fps, frames[0], frames[-1],
                                 num_patches)
    return audio.resize_patches(patches, size)

  def clip(self, key: str, frames, target: int, audio_spec=None) -> dict[str, np.ndarray]:
    """One example as the published loader builds it (channels-last)."""
    out = {"img": self.clip_images(key, frames)}
    if self._videos[key].maps_dir is not None:
      out["map"] = self.map_uint8(key, target).astype(np.float32) / np.float32(255.0)
      out["fixations"] = self.fixation_map(key, target)
    if audio_spec is not None:
      out["audio"] = self.clip_audio(key, frames, *audio_spec)
    return out
