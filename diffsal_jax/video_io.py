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

import concurrent.futures
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
from absl import logging
from PIL import Image

from diffsal_jax import audio as audio_lib
from diffsal_jax import video_timing

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
        packets = [(p.pts, p.duration or 0) for p in container.demux(stream)
                   if p.size]
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
  """H.264 + AAC mp4 written to a temporary name, renamed on `close`.

  Frame k is written with the input's timestamp `timing.pts[k]` (in the
  input's time base) and its duration, so a variable-rate input keeps its
  timing and the overlay lasts as long as the input.
  """

  def __init__(self, path: str | os.PathLike, timing: video_timing.FrameTiming,
               size_hw: tuple[int, int], audio: AudioTrack | None):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    handle, self._temp = tempfile.mkstemp(dir=self.path.parent, suffix=".mp4",
                                          prefix=f".{self.path.stem}.")
    os.close(handle)
    self._container = av.open(self._temp, "w", format="mp4")
    # yuv420p needs even sizes: odd ones get one replicated row/column.
    self._height, self._width = (s + s % 2 for s in size_hw)
    rate = fractions.Fraction(timing.fps).limit_denominator(100000)
    self._video = self._container.add_stream("libx264", rate=rate)
    self._video.height, self._video.width = self._height, self._width
    self._video.pix_fmt = "yuv420p"
    self._video.codec_context.time_base = timing.time_base
    # No B-frames: with them the mp4 muxer reported 1.62 s for a 2.08 s
    # variable-rate clip (measured); without, the span of the frames.
    self._video.codec_context.options = {"crf": "20", "preset": "veryfast",
                                         "bf": "0"}
    ends = np.append(timing.pts[1:], timing.end)
    self._durations = dict(zip(timing.pts.tolist(),
                               (ends - timing.pts).tolist()))
    self._pts = timing.pts
    self._audio = audio
    self._audio_stream = None
    if audio is not None:
      layout = "stereo" if audio.samples.shape[0] == 2 else "mono"
      self._audio_stream = self._container.add_stream(
          "aac", rate=audio.sample_rate, layout=layout)
    self._frames = 0

  def _mux_video(self, packets) -> None:
    for packet in packets:
      packet.duration = self._durations.get(packet.pts, 0)
      self._container.mux(packet)

  def write(self, frame: np.ndarray, saliency: np.ndarray,
            alpha: float) -> None:
    image = blend_heatmap(frame, saliency, alpha)
    pad = ((0, self._height - image.shape[0]),
           (0, self._width - image.shape[1]), (0, 0))
    if any(p[1] for p in pad):
      image = np.pad(image, pad, mode="edge")
    if self._frames >= len(self._pts):
      raise ValueError(f"{self.path}: more frames than the timing lists")
    video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    video_frame.pts = int(self._pts[self._frames])
    self._mux_video(self._video.encode(video_frame))
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
      self._mux_video(self._video.encode(None))
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
