"""The overlay video: a jet heat map blended over each input frame.

An H.264 mp4 with one frame per input frame at the input's own timestamps
(variable frame rates kept), weighted by the map so that non-salient areas
keep the original picture, plus the (aligned) input audio re-encoded as AAC.
Written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import fractions
import os
import pathlib

import av
import numpy as np

from diffsal_jax.data import atomic_files
from diffsal_jax.inference import video_timing
from diffsal_jax.inference.video_io import AudioTrack
from diffsal_jax.reporting import panels


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
    self._temp = atomic_files.temp_path(self.path)
    self._container = av.open(str(self._temp), "w", format="mp4")
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
    image = panels.blend_heatmap(frame, saliency, alpha)
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
