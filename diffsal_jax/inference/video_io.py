"""Reading user videos (or frame folders plus a wav) and writing overlays.

Everything FFmpeg decodes is read through PyAV: any container and codec, any
frame rate and size. Frames come out as RGB `PIL.Image`s, one pass at a time
(nothing holds a whole video in memory); audio comes out as int16 samples at
the track's own rate (or `audio_rate`), at most two channels (FFmpeg downmixes
surround), and is handed to the model through `diffsal_jax.data.audio`'s
`wave_from_int16`, the conversion `load_wav` applies to the datasets' wavs.

Every input is probed when its source is made (before any model work):
timestamps (`video_timing.FrameTiming`), display matrix, decodability; the
corrections made are listed in `FrameSource.notes`. The overlay writer is in
`diffsal_jax.inference.overlay`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fractions
import os
import pathlib
import re
from typing import Iterator

import av
import numpy as np
import soundfile
from absl import logging
from PIL import Image

from diffsal_jax.data import audio as audio_lib
from diffsal_jax.inference import video_timing

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
    """Mono float32 (samples,) and the rate, exactly as `audio.load_wav`
    reads a 16-bit wav of this track (`audio.wave_from_int16`, in memory).
    Raises audio.AudioError for a track without samples."""
    return audio_lib.wave_from_int16(self.samples.T, self.sample_rate,
                                     what=f"audio track ({self.sample_rate} Hz)")


def silent_wave(duration: float) -> tuple[np.ndarray, int]:
  """Zeros at 16 kHz covering `duration` seconds (log-mel of silence)."""
  rate = audio_lib.SAMPLE_RATE
  return np.zeros(max(1, int(round(duration * rate))), np.float32), rate


def _natural_key(path: pathlib.Path) -> list:
  return [int(part) if part.isdigit() else part
          for part in re.split(r"(\d+)", path.name)]


class FrameSource:
  """Frames (and audio) of one input: a video file or a folder of images.

  Everything a run needs is probed when the source is made (before any model
  work): `size_hw` is the displayed (upright) size, `timing` the frames'
  presentation times, `notes` the corrections made (for the summary).
  """

  def __init__(self, name: str, timing: video_timing.FrameTiming,
               size_hw: tuple[int, int]):
    self.name = name
    self.timing = timing
    self.size_hw = size_hw
    self.notes: list[str] = []
    self.resized_frames: list[int] = []

  @property
  def fps(self) -> fractions.Fraction:
    """Nominal (constant rate) or mean (variable rate) frames per second."""
    return fractions.Fraction(self.timing.fps).limit_denominator(100000)

  @property
  def num_frames_hint(self) -> int:
    return self.timing.num_frames

  def frames(self) -> Iterator[Image.Image]:
    raise NotImplementedError

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    raise NotImplementedError

  def _fit(self, image: Image.Image, frame: int, what: str) -> Image.Image:
    """Scales a frame of another size to the first frame's, noting it."""
    height, width = self.size_hw
    if (image.height, image.width) == (height, width):
      return image
    self.resized_frames.append(frame)
    if len(self.resized_frames) == 1:   # once per pass; the summary lists all
      logging.warning("%s: frame %d (%s) is %dx%d, the first frame %dx%d: "
                      "scaled to %dx%d", self.name, frame, what, image.height,
                      image.width, height, width, height, width)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def resize_note(frames: list[int], size_hw: tuple[int, int]) -> str:
  """The summary line for frames scaled to the first frame's size."""
  shown = ", ".join(map(str, frames[:10])) + (" ..." if len(frames) > 10
                                               else "")
  return (f"{len(frames)} frame(s) of another size than the first "
          f"(frames {shown}) scaled to {size_hw[0]}x{size_hw[1]}")


def _decode_error(path, err) -> MediaError:
  return MediaError(f"cannot decode the video of {path}: {err} (re-encode it, "
                    "e.g. ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4)")


class VideoFile(FrameSource):
  """A video file; its first video stream, and its first audio stream if any.

  The probe demuxes the video packets (their timestamps: frame count,
  constant or variable rate, span; no decoding) and decodes the first frame
  (decodability, display matrix, size). Frames come out upright, as players
  show them; the audio is aligned so that its sample 0 is shown with the
  first frame.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise MediaError(f"video file not found: {self.path}")
    try:
      with av.open(str(self.path)) as container:
        if not container.streams.video:
          raise MediaError(f"{self.path} has no video stream")
        stream = container.streams.video[0]
        nominal = stream.average_rate or stream.guessed_rate
        if not nominal:
          raise MediaError(f"{self.path}: cannot tell the frame rate of its "
                           "video stream; extract the frames and pass "
                           "--frames DIR --fps N")
        time_base = stream.time_base
        # Packets an edit list cuts (is_discard) are decoded but not shown.
        packets = [(p.pts, p.duration or 0) for p in container.demux(stream)
                   if p.size and not p.is_discard]
        audio = container.streams.audio[0] if container.streams.audio else None
        self._audio_start = (float(audio.start_time * audio.time_base)
                             if audio is not None and audio.start_time
                             is not None else None)
      with av.open(str(self.path)) as container:
        first = next(container.decode(container.streams.video[0]), None)
        if first is None:
          raise MediaError(f"{self.path}: no video frame could be decoded "
                           "(an empty or damaged stream; re-encode it)")
        self.transposes = video_timing.display_transposes(first)
        upright = video_timing.apply_transposes(first.to_image(),
                                                self.transposes)
    except av.error.FFmpegError as err:
      raise MediaError(f"cannot read video file {self.path}: {err} (is it a "
                       "complete video that ffmpeg can play?)") from err
    except ValueError as err:
      if isinstance(err, MediaError):
        raise
      raise MediaError(f"{self.path}: {err}; re-encode it upright, e.g. "
                       "ffmpeg -i IN -c:a copy OUT.mp4") from err
    if not packets:
      raise MediaError(f"{self.path}: its video stream holds no frames")
    timing, self._first_pts, note = self._timing(packets, time_base, nominal)
    super().__init__(self.path.stem, timing, (upright.height, upright.width))
    self.notes += [note] if note else []
    self._video_start = float(self._first_pts * time_base)
    self.audio_offset: float | None = None
    self._has_audio = audio is not None
    if timing.vfr:
      self.notes.append(
          f"variable frame rate: {timing.num_frames} frames over "
          f"{timing.duration:.3f} s (mean {timing.fps:.3f} fps); each frame's "
          "audio window and overlay frame follow its own timestamp")
    if self.transposes:
      self.notes.append(
          "display matrix: " + video_timing.describe_transposes(
              self.transposes) + f", maps and overlay upright at "
          f"{self.size_hw[0]}x{self.size_hw[1]} (HxW)")
    if self.notes:
      logging.warning("%s: %s", self.path, "; ".join(self.notes))

  def _timing(self, packets, time_base, nominal):
    if any(pts is None for pts, _ in packets):
      note = ("no frame timestamps in the container: constant "
              f"{float(nominal):g} fps assumed")
      return video_timing.FrameTiming.constant(len(packets), nominal), 0, note
    last_pts, last_duration = max(packets)
    try:
      timing = video_timing.FrameTiming.from_pts(
          [p for p, _ in packets], time_base, last_duration, nominal)
    except ValueError as err:
      raise MediaError(f"{self.path}: {err} (re-mux it, e.g. ffmpeg -i IN "
                       "-c copy OUT.mp4)") from err
    return timing, min(p for p, _ in packets), None

  @property
  def has_audio(self) -> bool:
    return self._has_audio

  def frames(self) -> Iterator[Image.Image]:
    """Upright RGB frames in presentation order.

    Raises MediaError when the decoder's frames disagree with the probed
    timestamps (a damaged stream: its audio would be misaligned).
    """
    self.resized_frames = []
    count = 0
    try:
      with av.open(str(self.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
          if count >= self.timing.num_frames or (
              frame.pts is not None and frame.pts - self._first_pts
              != self.timing.pts[count]):
            raise MediaError(
                f"{self.path}: decoded frame {count + 1} (pts {frame.pts}) "
                "is not the one its container lists; re-encode it, e.g. "
                "ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4")
          count += 1
          image = video_timing.apply_transposes(frame.to_image(),
                                                self.transposes)
          yield self._fit(image, count, f"pts {frame.pts}")
    except av.error.FFmpegError as err:
      raise _decode_error(self.path, err) from err
    if count != self.timing.num_frames:
      raise MediaError(f"{self.path}: only {count} of its "
                       f"{self.timing.num_frames} frames could be decoded; "
                       "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    """int16 audio of the first audio stream (None when there is none).

    Aligned to the first video frame: audio that starts later is preceded by
    silence, audio that starts earlier is cut (`audio_offset`, seconds, says
    by how much; positive = the audio started late).
    """
    if not self._has_audio:
      return None
    chunks, start = [], None
    try:
      with av.open(str(self.path)) as container:
        stream = container.streams.audio[0]
        channels = min(2, stream.codec_context.channels or 1)
        resampler = av.AudioResampler(
            format="s16", layout="stereo" if channels == 2 else "mono",
            rate=audio_rate or stream.codec_context.sample_rate)
        for frame in container.decode(stream):
          if start is None and frame.time is not None:
            start = frame.time
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
    samples = np.ascontiguousarray(samples.reshape(-1, channels).T)
    if start is None:
      start = self._audio_start if self._audio_start is not None else (
          self._video_start)
    self.audio_offset = start - self._video_start
    shift = int(round(self.audio_offset * rate))
    if shift > 0:
      samples = np.pad(samples, ((0, 0), (shift, 0)))
    elif shift < 0:
      samples = samples[:, -shift:]
    if shift:
      self.notes.append(
          f"audio starts {abs(self.audio_offset):.3f} s "
          f"{'after' if shift > 0 else 'before'} the first video frame: "
          + (f"{shift / rate:.3f} s of silence put before it" if shift > 0
             else f"its first {-shift / rate:.3f} s cut") +
          " (model and overlay)")
      logging.warning("%s: %s", self.path, self.notes[-1])
    return AudioTrack(samples, int(rate))


# Files that operating systems leave in folders (macOS AppleDouble `._*`
# and `.DS_Store`, other dotfiles, Windows thumbnail caches).
SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini")


def _is_hidden(path: pathlib.Path) -> bool:
  return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


class FrameFolder(FrameSource):
  """Numbered images in a folder (natural order), plus an optional wav.

  Hidden and system files are skipped. Every image is decoded once when the
  folder is opened: a truncated or corrupt file is named before any model
  work (its header alone can look fine), and images of another size than the
  first are listed (they are scaled to it, with a warning).
  """

  def __init__(self, folder: str | os.PathLike, fps: float,
               wav: str | os.PathLike | None = None):
    self.folder = pathlib.Path(folder)
    if not self.folder.is_dir():
      raise MediaError(f"frame folder not found: {self.folder}")
    entries = [p for p in self.folder.iterdir() if p.is_file()]
    hidden = [p for p in entries if _is_hidden(p)]
    self.paths = sorted((p for p in entries if not _is_hidden(p) and
                         p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not self.paths:
      raise MediaError(f"{self.folder} holds no images "
                       f"({', '.join(IMAGE_SUFFIXES)})")
    if not fps or fps <= 0:
      raise MediaError(f"--fps is required with --frames {self.folder} (the "
                       "frame rate aligns the audio and the overlay)")
    self.wav = pathlib.Path(wav) if wav else None
    if self.wav is not None and not self.wav.is_file():
      raise MediaError(f"wav file not found: {self.wav}")
    # Threads: PIL decodes without the GIL, and a full decode of every frame
    # is the only check that finds a truncated image.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      sizes = list(pool.map(self._size, self.paths))
    super().__init__(self.folder.name,
                     video_timing.FrameTiming.constant(len(self.paths), fps),
                     sizes[0])
    other = [k for k, size in enumerate(sizes, 1) if size != sizes[0]]
    if hidden:
      logging.info("%s: skipped %d hidden/system files (%s)", self.folder,
                   len(hidden), ", ".join(p.name for p in hidden[:5]))
    if other:
      self.notes.append(resize_note(other, self.size_hw))
      logging.warning("%s: %s", self.folder, self.notes[-1])

  @classmethod
  def _size(cls, path: pathlib.Path) -> tuple[int, int]:
    with cls._open(path) as image:
      return image.height, image.width

  @staticmethod
  def _open(path: pathlib.Path) -> Image.Image:
    try:
      image = Image.open(path)
      image.load()
      return image
    except (OSError, ValueError, Image.DecompressionBombError) as err:
      raise MediaError(f"cannot read image {path}: {err} (remove it or "
                       "replace it with a readable image)") from err

  @property
  def has_audio(self) -> bool:
    return self.wav is not None

  def frames(self) -> Iterator[Image.Image]:
    self.resized_frames = []
    for k, path in enumerate(self.paths, 1):
      with self._open(path) as image:
        yield self._fit(image.convert("RGB"), k, str(path))

  def audio(self, audio_rate: int = 0) -> AudioTrack | None:
    del audio_rate  # The wav is used as it is, like the dataset loaders do.
    return AudioTrack.from_wav(self.wav) if self.wav is not None else None


def probe(path: str | os.PathLike) -> dict:
  """Frame count, frame rate, size, durations and audio presence of a video.

  duration: the container's, seconds; span: first frame's start to the last
  frame's end from the decoded frames' timestamps and durations.
  """
  with av.open(os.fspath(path)) as container:
    video = container.streams.video[0]
    frames = [(f.pts, f.duration or 0) for f in container.decode(video)]
    starts = [p for p, _ in frames]
    last = max(frames)
    info = {"frames": len(frames), "fps": float(video.average_rate),
            "size_hw": (video.codec_context.height, video.codec_context.width),
            "duration": float(container.duration or 0) / av.time_base,
            "span": float((last[0] + last[1] - min(starts)) * video.time_base),
            "has_audio": bool(container.streams.audio)}
  return info
