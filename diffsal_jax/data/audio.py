"""VGGish-compatible log-mel patches for DiffSal audio clips (NumPy + librosa).

The published DiffSal loader turns the audio of a video clip into 9 log-mel
patches with the torchvggish front end. This module reproduces that pipeline:

  load_wav            int16 wav / 32768, mono (`wave_from_int16` for samples
                      already in memory).
  clip_excerpt_buffer the clip's samples, centred in a zero buffer (35280).
  resample_to_16k     resampy 'kaiser_best' compatible (the published
                      resampler), or soxr through librosa.
  log_mel_16k         25 ms periodic-Hann frames, 10 ms hop, |rfft 512|,
                      64 HTK mel bands 125-7500 Hz, log(mel + 0.01).
  frame_patches       64-frame patches, hop 11, repeated to a fixed count.
  resize_patches      bilinear resize of each patch to 112x192.

`clip_log_mel` chains the middle four steps per training clip. Everything is
vectorised; mel matrix, window, resampling and resize matrices are cached.
"""

import functools
import math
import os
from typing import Sequence

import librosa
import numpy as np
import soundfile

from diffsal_jax.data.resample import SAMPLE_RATE, resample_to_16k  # noqa: F401 (re-exported)

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz.
HOP_SAMPLES = 160  # 10 ms at 16 kHz.
FFT_LENGTH = 512  # Next power of two above the window.
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 64
PATCH_HOP_FRAMES = 11
NUM_PATCHES = 9
BUFFER_SAMPLES = 35280  # int(22050 / 10 * 16): published max_audio_win.
PATCH_SIZE = (112, 192)
SILENCE_LOG_MEL = math.log(LOG_OFFSET)  # Log-mel value of a silent frame.

class AudioError(ValueError):
  """An audio file or buffer that cannot be turned into features."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
  """The wav file does not exist."""


def load_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Reads a wav as float32 mono in [-1, 1) like the published loader.

  Samples are read as int16 (soundfile converts other encodings) and divided
  by 32768, as the published code does. The published mel loader only works
  on mono files (a stereo array cannot be copied into its 1-D buffer); here
  multi-channel files are averaged to mono, as torchvggish's
  `waveform_to_examples` does with multi-channel input.

  Returns:
    (wave, sample_rate): wave float32 of shape (num_samples,).

  Raises:
    AudioFileNotFoundError: `path` does not exist.
    AudioError: the file is unreadable, corrupt or has no samples.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioFileNotFoundError(
        f"audio file not found: {path} (check the dataset's audio folder)")
  try:
    samples, sample_rate = soundfile.read(path, dtype="int16", always_2d=True)
  except (soundfile.SoundFileError, RuntimeError, OSError) as err:
    raise AudioError(f"cannot decode audio file {path}: {err} (expected a "
                     "PCM wav; re-encode it, e.g. ffmpeg -i IN -ac 1 OUT.wav)"
                     ) from err
  return wave_from_int16(samples, sample_rate, what=f"audio file {path}")


def wave_from_int16(samples: np.ndarray, sample_rate: int,
                    what: str = "audio") -> tuple[np.ndarray, int]:
  """int16 samples -> (float32 mono wave, rate), the scale of `load_wav`.

  Args:
    samples: int16 array of shape (num_samples, channels), as
      `soundfile.read(..., dtype="int16", always_2d=True)` gives it.
    sample_rate: Hz.
    what: names the source in errors.

  Returns:
    (wave, sample_rate): wave float32 of shape (num_samples,), samples /
    32768, channels averaged (in float64) when there are several.

  Raises:
    AudioError: no samples, or not a 2-D int16 array.
  """
  samples = np.asarray(samples)
  if samples.dtype != np.int16 or samples.ndim != 2:
    raise AudioError(f"{what}: expected int16 samples of shape (samples, "
                     f"channels), got {samples.dtype} {samples.shape}")
  if samples.shape[0] == 0:
    raise AudioError(f"{what} contains no samples")
  wave = samples.astype(np.float32) / np.float32(32768.0)
  if wave.shape[1] > 1:
    wave = wave.mean(axis=1, dtype=np.float64).astype(np.float32)
  else:
    wave = wave[:, 0]
  return np.ascontiguousarray(wave), int(sample_rate)


def published_buffer_samples(sample_duration: int = 16) -> int:
  """Length of the published zero buffer: 22.05 kHz at 10 fps for the clip."""
  return int(22050 / 10 * sample_duration)


def frame_sample_bounds(frame: int, sample_rate: int, fps: float,
                        num_samples: int) -> tuple[int, int]:
  """Inclusive sample range [start, end] of 1-based video frame `frame`.

  Frame f is centred at (f-1)/fps seconds and spans one frame period; start is
  clipped at 0 and end at `num_samples` (then truncated to int), with the
  floating-point operations in the published order so indices agree exactly.
  """
  return time_sample_bounds((frame - 1) * (1.0 / float(fps)), sample_rate,
                            fps, num_samples)


def time_sample_bounds(centre_s: float, sample_rate: int, fps: float,
                       num_samples: int) -> tuple[int, int]:
  """Inclusive sample range [start, end] of a frame shown at `centre_s` s.

  The frame spans one (nominal or average) frame period 1/fps centred on its
  presentation time; `frame_sample_bounds` is this with (f-1)/fps, so with
  centre_s = (f-1) * (1.0/fps) the indices equal the published ones exactly.
  """
  fps = float(fps)
  period_samples = sample_rate / fps
  centre = centre_s * sample_rate
  start = int(max(0, centre - period_samples / 2))
  end = int(min(num_samples, abs(centre + period_samples / 2)))
  return start, end


def clip_excerpt_buffer(wave: np.ndarray, sample_rate: int, fps: float,
                        first_frame: int, last_frame: int,
                        buffer_samples: int = BUFFER_SAMPLES,
                        frame_times: Sequence[float] | None = None
                        ) -> np.ndarray:
  """The audio of frames first..last (1-based) centred in a zero buffer.

  Takes wave[start(first) : end(last) + 1] and places it so that its sample
  L//2 lands on buffer sample buffer_samples//2 (the published placement for
  both odd and even L). An excerpt longer than the buffer, on which the
  published code crashes, is centre-cropped the same way. An empty excerpt
  (last_frame < first_frame, which the published loop padding can produce, or
  frames past the end of the audio) gives a silent buffer.

  `frame_times` (seconds from the first frame, index f-1 for frame f): the
  presentation times of a variable-frame-rate video; each frame's window is
  then centred on its own time instead of (f-1)/fps (`time_sample_bounds`).

  Returns:
    float64 array of shape (buffer_samples,).
  """
  if first_frame < 1 or last_frame < 1:
    raise ValueError(f"frames are 1-based, got first_frame={first_frame}, "
                     f"last_frame={last_frame}")
  wave = np.asarray(wave)
  if wave.ndim != 1:
    raise AudioError(
        f"expected mono audio of shape (samples,), got {wave.shape}")
  if frame_times is None:
    start, _ = frame_sample_bounds(first_frame, sample_rate, fps,
                                   wave.shape[0])
    _, end = frame_sample_bounds(last_frame, sample_rate, fps, wave.shape[0])
  else:
    start, _ = time_sample_bounds(frame_times[first_frame - 1], sample_rate,
                                  fps, wave.shape[0])
    _, end = time_sample_bounds(frame_times[last_frame - 1], sample_rate, fps,
                                wave.shape[0])
  excerpt = wave[start:end + 1]
  offset = buffer_samples // 2 - excerpt.shape[0] // 2
  if offset < 0:
    excerpt = excerpt[-offset:-offset + buffer_samples]
    offset = 0
  buffer = np.zeros(buffer_samples, np.float64)
  buffer[offset:offset + excerpt.shape[0]] = excerpt
  return buffer


def _hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
  """HTK mel scale in VGGish's natural-log form (1127 ln(1 + f/700))."""
  return 1127.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0)


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
  """(257, 64) VGGish mel weights: HTK bands, triangles linear in mel.

  librosa.filters.mel(htk=True, norm=None) puts the band edges at the same
  frequencies but draws the triangles linearly in Hz: weights differ by up to
  1.8% (log-mel by up to ~0.015 on pure tones). The VGGish construction is
  therefore built directly: unnormalised triangles linear in the mel domain,
  DC bin zeroed.
  """
  bin_hertz = np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1)
  bin_mel = _hertz_to_mel(bin_hertz)
  edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ),
                      NUM_BANDS + 2)
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bin_mel[:, None] - lower) / (centre - lower)
  falling = (upper - bin_mel[:, None]) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights[0, :] = 0.0
  weights.setflags(write=False)
  return weights


@functools.lru_cache(maxsize=1)
def _analysis_window() -> np.ndarray:
  window = librosa.filters.get_window("hann", WINDOW_SAMPLES, fftbins=True)
  window.setflags(write=False)
  return window


def log_mel_16k(wave_16k: np.ndarray) -> np.ndarray:
  """VGGish log-mel spectrogram of 16 kHz mono audio: (frames, 64) float32.

  frames = 1 + (samples - 400) // 160 (0 when shorter than one window).
  Choices that differ from librosa.feature.melspectrogram defaults:
    * no centring or padding (librosa: center=True, reflect padding); frames
      start at 0, 160, 320, ...
    * 400-sample periodic Hann windows zero-padded at the end to the 512-point
      FFT. librosa.stft(win_length=400, n_fft=512) would instead centre the
      window in the 512 frame, shifting frames by 56 samples and changing
      their count, so frames are cut with librosa.util.frame and
      transformed with numpy's rfft;
    * magnitude, not power (librosa: power=2);
    * HTK mel bands 125-7500 Hz, triangles linear in mel, no area
      normalisation, DC bin zeroed (librosa: Slaney scale and norm, 0 Hz to
      Nyquist), see `mel_matrix`;
    * natural log(mel + 0.01) (librosa.power_to_db: 10 log10, top_db clip).
  """
  wave_16k = np.asarray(wave_16k, np.float64)
  if wave_16k.ndim != 1:
    raise AudioError(f"expected mono audio of shape (samples,), got "
                     f"{wave_16k.shape}")
  if wave_16k.shape[0] < WINDOW_SAMPLES:
    return np.zeros((0, NUM_BANDS), np.float32)
  frames = librosa.util.frame(wave_16k, frame_length=WINDOW_SAMPLES,
                              hop_length=HOP_SAMPLES, axis=0)
  magnitude = np.abs(np.fft.rfft(frames * _analysis_window(), FFT_LENGTH))
  return np.log(magnitude @ mel_matrix() + LOG_OFFSET).astype(np.float32)


def patch_order(num_available: int,
                num_patches: int = NUM_PATCHES) -> np.ndarray:
  """Indices of the patches kept, by the published repetition rule.

  With n available patches: each is repeated num_patches // n times in place
  (none are repeated when n > num_patches), the first num_patches % n of that
  sequence are appended, and the result is cut to num_patches.
  """
  if num_available < 1 or num_patches < 1:
    raise ValueError(f"need at least one patch, got num_available="
                     f"{num_available}, num_patches={num_patches}")
  order = np.arange(num_available)
  if num_available == num_patches:
    return order
  repeats = num_patches // num_available
  if repeats:
    order = np.repeat(order, repeats)
  order = np.concatenate([order, order[:num_patches % num_available]])
  return order[:num_patches]


def frame_patches(log_mel: np.ndarray,
                  num_patches: int = NUM_PATCHES) -> np.ndarray:
  """Cuts (frames, 64) log-mel into (num_patches, 64, 64) float32 patches.

  Patches are 64 frames long with a hop of 11 frames (complete patches only),
  then repeated or cut to `num_patches` by `patch_order`. Audio shorter than
  one patch (< 64 frames, on which the published code crashes) is padded at
  the end with silent frames, log(0.01), giving one patch.
  """
  log_mel = np.asarray(log_mel, np.float32)
  if log_mel.ndim != 2 or log_mel.shape[1] != NUM_BANDS:
    raise AudioError(f"expected log-mel of shape (frames, {NUM_BANDS}), got "
                     f"{log_mel.shape}")
  if log_mel.shape[0] < PATCH_FRAMES:
    pad = ((0, PATCH_FRAMES - log_mel.shape[0]), (0, 0))
    log_mel = np.pad(log_mel, pad, constant_values=SILENCE_LOG_MEL)
  windows = np.lib.stride_tricks.sliding_window_view(
      log_mel, PATCH_FRAMES, axis=0)[::PATCH_HOP_FRAMES]  # (n, bands, frames)
  order = patch_order(windows.shape[0], num_patches)
  return np.ascontiguousarray(windows[order].transpose(0, 2, 1))


def clip_log_mel(wave: np.ndarray, sample_rate: int, fps: float,
                 first_frame: int, last_frame: int,
                 num_patches: int = NUM_PATCHES,
                 buffer_samples: int = BUFFER_SAMPLES,
                 resample_method: str = "kaiser_best",
                 frame_times: Sequence[float] | None = None) -> np.ndarray:
  """Log-mel patches of a video clip as the published loader computes them.

  Args:
    wave: (samples,) float mono audio on the int16 / 32768 scale (`load_wav`).
    sample_rate: its rate in Hz. 35280 buffer samples are 0.8 s at 44.1 kHz
      but 0.735 s at 48 kHz, so the count of distinct patches depends on it.
    fps: video frame rate.
    first_frame, last_frame: 1-based frame numbers (frame 1 starts at t=0),
      as in the published loader; the audio taken runs from the start of the
      first frame's period to the end of the last one's.
    num_patches: patches returned (9 published; tiny models use fewer).
    buffer_samples: the zero buffer the excerpt is centred in.
    resample_method: see `resample_to_16k`.
    frame_times: per-frame presentation times (see `clip_excerpt_buffer`).

  Returns:
    (num_patches, 64 frames, 64 bands) float32.
  """
  buffer = clip_excerpt_buffer(wave, sample_rate, fps, first_frame,
                               last_frame, buffer_samples, frame_times)
  wave_16k = resample_to_16k(buffer, sample_rate, resample_method)
  return frame_patches(log_mel_16k(wave_16k), num_patches)


@functools.lru_cache(maxsize=32)
def _resize_matrix(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
  """(out, in) bilinear interpolation matrix, align_corners=False.

  antialias=True is the triangle filter widened by the downscale factor (PIL,
  torch antialias=True); for upscaling it equals plain bilinear with clamped
  edges (torch antialias=False), which is the only case the published loader
  hits (64 -> 112 and 64 -> 192). Without antialias it is
  `models.layers.linear_resize_matrix` in float32 (data/ may not import
  models/; tests/test_audio.py checks they agree).
  """
  scale = in_size / out_size
  centre = scale * (np.arange(out_size) + 0.5)  # In input pixel units.
  if antialias and scale > 1.0:
    taps = np.arange(in_size) + 0.5
    matrix = np.maximum(0.0, 1.0 - np.abs(taps - centre[:, None]) / scale)
    matrix /= matrix.sum(axis=1, keepdims=True)
  else:
    source = np.maximum(centre - 0.5, 0.0)  # torch clamps negative sources.
    low = np.minimum(source.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - (source - low))
    np.add.at(matrix, (rows, high), source - low)
  matrix = matrix.astype(np.float32)
  matrix.setflags(write=False)
  return matrix


def resize_patches(patches: np.ndarray, size: tuple[int, int] = PATCH_SIZE,
                   antialias: bool = True) -> np.ndarray:
  """Bilinear resize of (n, H, W) patches to (n, *size) float32.

  Matches torchvision.transforms.Resize((112, 192)) on a (1, 64, 64) tensor,
  which the published loader applies to each patch (64 frames -> 112 rows, 64
  bands -> 192 columns): torch bilinear, align_corners=False. `antialias`
  only matters when shrinking; True follows torchvision >= 0.17.
  """
  patches = np.asarray(patches, np.float32)
  if patches.ndim != 3:
    raise ValueError(
        f"expected patches of shape (n, H, W), got {patches.shape}")
  rows = _resize_matrix(patches.shape[1], size[0], antialias)
  cols = _resize_matrix(patches.shape[2], size[1], antialias)
  return np.einsum("oh,nhw,pw->nop", rows, patches, cols, optimize=True)
