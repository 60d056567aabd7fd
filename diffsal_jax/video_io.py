"""Reading user videos (or frame folders plus a wav) and writing overlays.

Everything FFmpeg decodes is read through PyAV: any container and codec, any
frame rate and size. Frames come out as RGB `PIL.Image`s, one pass at a time
(nothing holds a whole video in memory); audio comes out as int16 samples at
the track's own rate (or `audio_rate`), at most two channels (FFmpeg downmixes
surround), and is handed to the model through `diffsal_jax.audio.load_wav`,
the same reader the datasets use.

The overlay is an H.264 mp4 at the input frame rate with one frame per input
frame: a jet heat map blended over each frame, weighted by the map so that
non-salient areas keep the original picture, plus the input's audio
re-encoded as AAC.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import pathlib
import re
import tempfile
from typing import Iterator

import av
import numpy as np
import soundfile
from PIL import Image

from diffsal_jax import audio as audio_lib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class MediaError(ValueError):
  """An input that cannot be read; the message names the file and the fix."""


@dataclasses.dataclass
class AudioTrack:
  """int16 samples (channels, samples) at `sample_rate` Hz."""
  samples: np.ndarray
  sample_rate: int

  @classmethod
  def from_wav(cls, path: str | os.PathLike) -> AudioTrack:
    try:
      data, rate = soundfile.read(os.fspath(path), dtype="int16",
                                  always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as err:
      raise MediaError(f"cannot read audio file {path}: {err}") from err
    return cls(np.ascontiguousarray(data[:, :2].T), int(rate))

  def model_wave(self) -> tuple[np.ndarray, int]:
    """Mono float32 exactly as `audio.load_wav` reads a wav of this track."""
    with tempfile.TemporaryDirectory(prefix="diffsal_audio_") as tmp:
      path = os.path.join(tmp, "track.wav")
      soundfile.write(path, self.samples.T, self.sample_rate, subtype="PCM_16")
      return audio_lib.load_wav(path)


def silent_wave(num_frames: int, fps: float) -> tuple[np.ndarray, int]:
  """Zeros at 16 kHz covering the video (log-mel of silence for the model)."""
  rate = audio_lib.SAMPLE_RATE
  return np.zeros(max(1, int(round(num_frames / fps * rate))), np.float32), rate


def _natural_key(path: pathlib.Path) -> list:
  return [int(part) if part.isdigit() else part
          for part in re.split(r"(\d+)", path.name)]


class FrameSource:
  """Frames (and audio) of one input: a video file or a folder of images."""

  def __init__(self, name: str, fps: fractions.Fraction,
               size_hw: tuple[int, int], num_frames_hint: int):
    self.name = name
    self.fps = fps
    self.size_hw = size_hw
    self.num_frames_hint = num_frames_hint

  def frames(self) -> Iterator[Image.Image]:
    raise NotImplementedError

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    raise NotImplementedError


def _frame_count_hint(container, stream, fps) -> int:
  """The container's frame count, else duration x rate (for progress only)."""
  if stream.frames:
    return int(stream.frames)
  if stream.duration and stream.time_base:
    return int(float(stream.duration * stream.time_base * fps))
  return int(float((container.duration or 0) / av.time_base * fps))


class VideoFile(FrameSource):
  """A video file; its first video stream, and its first audio stream if any."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise MediaError(f"video file not found: {self.path}")
    try:
      with av.open(str(self.path)) as container:
        if not container.streams.video:
          raise MediaError(f"{self.path} has no video stream")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate
        if not fps:
          raise MediaError(f"{self.path}: cannot tell the frame rate of its "
                           "video stream; extract the frames and pass "
                           "--frames DIR --fps N")
        hint = _frame_count_hint(container, stream, fps)
        self._has_audio = bool(container.streams.audio)
        size = (stream.codec_context.height, stream.codec_context.width)
    except av.error.FFmpegError as err:
      raise MediaError(f"cannot read video file {self.path}: {err} (is it a "
                       "complete video that ffmpeg can play?)") from err
    super().__init__(self.path.stem, fractions.Fraction(fps), size, hint)

  @property
  def has_audio(self) -> bool:
    return self._has_audio

  def frames(self) -> Iterator[Image.Image]:
    try:
      with av.open(str(self.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
          yield frame.to_image()
    except av.error.FFmpegError as err:
      raise MediaError(f"decoding {self.path} failed: {err}") from err

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    """int16 audio of the first audio stream (None when there is none)."""
    if not self._has_audio:
      return None
    chunks = []
    try:
      with av.open(str(self.path)) as container:
        stream = container.streams.audio[0]
        channels = min(2, stream.codec_context.channels or 1)
        resampler = av.AudioResampler(
            format="s16", layout="stereo" if channels == 2 else "mono",
            rate=audio_rate or stream.codec_context.sample_rate)
        for frame in container.decode(stream):
          chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        rate = resampler.rate
    except av.error.FFmpegError as err:
      raise MediaError(
          f"decoding the audio of {self.path} failed: {err}") from err
    if not chunks:
      return None
    # Packed s16 frames are (1, samples * channels), interleaved.
    samples = np.concatenate([c.reshape(-1) for c in chunks])
    return AudioTrack(np.ascontiguousarray(samples.reshape(-1, channels).T),
                      int(rate))


class FrameFolder(FrameSource):
  """Numbered images in a folder (natural order), plus an optional wav."""

  def __init__(self, folder: str | os.PathLike, fps: float,
               wav: str | os.PathLike | None = None):
    self.folder = pathlib.Path(folder)
    if not self.folder.is_dir():
      raise MediaError(f"frame folder not found: {self.folder}")
    self.paths = sorted((p for p in self.folder.iterdir()
                         if p.suffix.lower() in IMAGE_SUFFIXES),
                        key=_natural_key)
    if not self.paths:
      raise MediaError(f"{self.folder} holds no images "
                       f"({', '.join(IMAGE_SUFFIXES)})")
    if not fps or fps <= 0:
      raise MediaError(f"--fps is required with --frames {self.folder} (the "
                       "frame rate aligns the audio and the overlay)")
    self.wav = pathlib.Path(wav) if wav else None
    if self.wav is not None and not self.wav.is_file():
      raise MediaError(f"wav file not found: {self.wav}")
    with self._open(self.paths[0]) as first:
      size = (first.height, first.width)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    super().__init__(self.folder.name, rate, size, len(self.paths))

  @staticmethod
  def _open(path: pathlib.Path) -> Image.Image:
    try:
      image = Image.open(path)
      image.load()
      return image
    except (OSError, ValueError) as err:
      raise MediaError(f"cannot read image {path}: {err}") from err

  @property
  def has_audio(self) -> bool:
    return self.wav is not None

  def frames(self) -> Iterator[Image.Image]:
    for path in self.paths:
      with self._open(path) as image:
        if (image.height, image.width) != self.size_hw:
          raise MediaError(f"{path} is {image.height}x{image.width}, the first "
                           f"frame {self.size_hw[0]}x{self.size_hw[1]}: all "
                           "frames must have one size")
        yield image.convert("RGB")

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    del audio_rate  # The wav is used as it is, like the dataset loaders do.
    return AudioTrack.from_wav(self.wav) if self.wav is not None else None


def _jet_table() -> np.ndarray:
  """(256, 3) uint8 jet colour map: blue (0) to red (255)."""
  x = np.linspace(0.0, 1.0, 256)[:, None]
  centres = np.array([0.75, 0.5, 0.25])  # red, green, blue
  rgb = np.clip(1.5 - np.abs(4.0 * (x - centres)), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


_JET = _jet_table()


def blend_heatmap(frame: np.ndarray, saliency: np.ndarray,
                  alpha: float = 0.6) -> np.ndarray:
  """Jet heat map of uint8 `saliency` (H, W) over RGB `frame`, map-weighted."""
  weight = (alpha / 255.0) * saliency.astype(np.float32)[..., None]
  heat = _JET[saliency].astype(np.float32)
  out = frame.astype(np.float32) * (1.0 - weight) + heat * weight
  return np.round(out).astype(np.uint8)


class OverlayWriter:
  """H.264 + AAC mp4 written to a temporary name, renamed on `close`."""

  def __init__(self, path: str | os.PathLike, fps: fractions.Fraction,
               size_hw: tuple[int, int], audio: AudioTrack | None):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    handle, self._temp = tempfile.mkstemp(dir=self.path.parent, suffix=".mp4",
                                          prefix=f".{self.path.stem}.")
    os.close(handle)
    self._container = av.open(self._temp, "w", format="mp4")
    # yuv420p needs even sizes: odd ones get one replicated row/column.
    self._height, self._width = (s + s % 2 for s in size_hw)
    self._video = self._container.add_stream("libx264", rate=fps)
    self._video.height, self._video.width = self._height, self._width
    self._video.pix_fmt = "yuv420p"
    self._video.codec_context.options = {"crf": "20", "preset": "veryfast"}
    self._audio = audio
    self._audio_stream = None
    if audio is not None:
      layout = "stereo" if audio.samples.shape[0] == 2 else "mono"
      self._audio_stream = self._container.add_stream(
          "aac", rate=audio.sample_rate, layout=layout)
    self._frames = 0

  def write(self, frame: np.ndarray, saliency: np.ndarray,
            alpha: float) -> None:
    image = blend_heatmap(frame, saliency, alpha)
    pad = ((0, self._height - image.shape[0]),
           (0, self._width - image.shape[1]), (0, 0))
    if any(p[1] for p in pad):
      image = np.pad(image, pad, mode="edge")
    video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    video_frame.pts = self._frames
    self._container.mux(self._video.encode(video_frame))
    self._frames += 1

  def _write_audio(self) -> None:
    stream, track = self._audio_stream, self._audio
    layout = stream.codec_context.layout.name
    chunk = 1024 * 16
    for start in range(0, track.samples.shape[1], chunk):
      block = track.samples[:, start:start + chunk]
      frame = av.AudioFrame.from_ndarray(
          np.ascontiguousarray(block.T).reshape(1, -1), format="s16",
          layout=layout)
      frame.sample_rate = track.sample_rate
      frame.pts = start
      self._container.mux(stream.encode(frame))
    self._container.mux(stream.encode(None))

  def close(self) -> None:
    """Flushes the encoders and moves the file into place."""
    try:
      self._container.mux(self._video.encode(None))
      if self._audio_stream is not None:
        self._write_audio()
      self._container.close()
      os.replace(self._temp, self.path)
    except BaseException:
      self.abort()
      raise

  def abort(self) -> None:
    try:
      self._container.close()
    except Exception:  # pylint: disable=broad-except (already failing)
      pass
    if os.path.exists(self._temp):
      os.unlink(self._temp)


def probe(path: str | os.PathLike) -> dict:
  """Frame count, frame rate, size, duration and audio presence of a video."""
  with av.open(os.fspath(path)) as container:
    video = container.streams.video[0]
    count = sum(1 for _ in container.decode(video))
    info = {"frames": count, "fps": float(video.average_rate),
            "size_hw": (video.codec_context.height, video.codec_context.width),
            "duration": float(container.duration or 0) / av.time_base,
            "has_audio": bool(container.streams.audio)}
  return info
