"""Tests for diffsal_jax.data.audio against an in-test VGGish reference front end.

The reference below is written from torchvggish's documented algorithm
(mel_features.py / vggish_input.py) with plain loops, independently of the
vectorised module code.
"""

import math

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
from PIL import Image

from diffsal_jax.data import audio
from diffsal_jax.models import layers

LOG_SILENCE = math.log(0.01)


# --------------------------------------------------------------------------
# Reference VGGish front end (loops, straight from the documented algorithm).


def _reference_mel_matrix():
  def to_mel(hertz):
    return 1127.0 * np.log(1.0 + np.asarray(hertz) / 700.0)

  bin_mel = to_mel(np.linspace(0.0, 8000.0, 257))
  edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
  weights = np.zeros((257, 64))
  for band in range(64):
    low, centre, high = edges[band], edges[band + 1], edges[band + 2]
    for fft_bin in range(1, 257):  # HTK: the DC bin keeps weight 0.
      up = (bin_mel[fft_bin] - low) / (centre - low)
      down = (high - bin_mel[fft_bin]) / (high - centre)
      weights[fft_bin, band] = max(0.0, min(up, down))
  return weights


_REFERENCE_MEL = _reference_mel_matrix()


def _reference_log_mel(wave_16k):
  periodic_hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(400) / 400)
  num_frames = 1 + (len(wave_16k) - 400) // 160
  rows = []
  for frame in range(num_frames):  # No centring: frame k starts at 160 k.
    chunk = wave_16k[frame * 160:frame * 160 + 400] * periodic_hann
    rows.append(np.abs(np.fft.rfft(chunk, n=512)))
  return np.log(np.array(rows) @ _REFERENCE_MEL + 0.01)


def _reference_patches(log_mel):
  starts = range(0, log_mel.shape[0] - 64 + 1, 11)
  return np.stack([log_mel[s:s + 64] for s in starts])


def _reference_kaiser_resample(wave, sample_rate):
  """resampy 'kaiser_best' as documented, one output sample at a time."""
  zeros, steps, rolloff, beta = 50, 8192, 0.9173473712608761, 12.984585247040012
  half = steps * zeros
  table = (rolloff * np.sinc(rolloff * np.linspace(0, zeros, half + 1)) *
           np.kaiser(2 * half + 1, beta)[half:])
  ratio = 16000 / sample_rate
  scale = min(1.0, ratio)
  table = table * scale
  delta = np.append(np.diff(table), 0.0)
  step = int(scale * steps)
  out = np.zeros(int(len(wave) * 16000.0 / sample_rate))
  for t in range(len(out)):
    time = t * (1.0 / ratio)
    base = int(time)
    for frac, sign in ((scale * (time - base), -1), (scale * (1 - time + base),
                                                      1)):
      pos = frac * steps
      taps = np.arange((len(table) - int(pos)) // step)
      index = int(pos) + taps * step
      weights = table[index] + (pos - int(pos)) * delta[index]
      source = base - taps if sign < 0 else base + 1 + taps
      ok = (source >= 0) & (source < len(wave))
      out[t] += np.dot(weights[ok], wave[source[ok]])
  return out


# --------------------------------------------------------------------------
# Real-sounding synthetic audio, int16-quantised like a wav file.


def _quantise(wave):
  return np.round(np.clip(wave, -1, 1) * 32767) / 32768.0


def _speech_like(sample_rate, seconds, seed=0):
  """Glottal pulse train with a moving pitch through gliding formants."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(sample_rate * seconds)) / sample_rate
  pitch = 140 + 35 * np.sin(2 * np.pi * 2.3 * t) + 10 * rng.standard_normal()
  pulses = np.diff(np.floor(np.cumsum(pitch / sample_rate)), prepend=0.0)
  source = pulses + 0.02 * rng.standard_normal(len(t))  # Breath noise.
  voiced = np.zeros_like(t)
  vowels = [(730, 1090, 2440), (270, 2290, 3010), (570, 840, 2410)]
  for index, formants in enumerate(vowels):
    part = np.zeros_like(t)
    for centre, bandwidth in zip(formants, (80, 100, 140)):
      radius = math.exp(-math.pi * bandwidth / sample_rate)
      theta = 2 * math.pi * centre / sample_rate
      part += scipy.signal.lfilter(
          [1 - radius], [1, -2 * radius * math.cos(theta), radius**2], source)
    gate = (np.floor(t * 6) % 3) == index  # A new vowel every 1/6 s.
    voiced += part * gate
  syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None)**0.5
  wave = voiced * syllables
  return _quantise(0.4 * wave / np.abs(wave).max())


def _music_like(sample_rate, seconds):
  """Triads with 12 harmonics, vibrato and decaying notes."""
  t = np.arange(int(sample_rate * seconds)) / sample_rate
  wave = np.zeros_like(t)
  chords = [(261.6, 329.6, 392.0), (220.0, 277.2, 329.6), (196.0, 246.9, 293.7)]
  for index, chord in enumerate(chords):
    gate = (np.floor(t * 2) % 3) == index
    decay = np.exp(-3.0 * (t % 0.5))
    for root in chord:
      freq = root * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * t))
      phase = 2 * np.pi * np.cumsum(freq) / sample_rate
      for harmonic in range(1, 13):
        if root * harmonic < 0.45 * sample_rate:
          wave += gate * decay * np.sin(harmonic * phase) / harmonic**1.2
  return _quantise(0.3 * wave / np.abs(wave).max())


def _noise_bursts(sample_rate, seconds, seed=1):
  rng = np.random.default_rng(seed)
  t = np.arange(int(sample_rate * seconds)) / sample_rate
  return _quantise(0.1 * rng.standard_normal(len(t)) * ((t % 0.3) < 0.06))


SIGNALS = {"speech": _speech_like, "music": _music_like,
           "noise_bursts": _noise_bursts}


# --------------------------------------------------------------------------
# Log-mel front end.


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_log_mel_matches_reference_front_end(name):
  wave = SIGNALS[name](16000, 1.5)
  ours = audio.log_mel_16k(wave)
  reference = _reference_log_mel(wave)
  assert ours.dtype == np.float32 and ours.shape == reference.shape == (148, 64)
  # Acceptance is 0.02 (log domain); the port is exact up to float32 output.
  assert np.abs(ours - reference).max() < 1e-4
  assert ours.min() >= LOG_SILENCE - 1e-6  # log(mel + 0.01) floor.


@pytest.mark.parametrize("samples,frames", [(0, 0), (399, 0), (400, 1),
                                            (559, 1), (560, 2), (35280, 219)])
def test_log_mel_frame_count_has_no_centring(samples, frames):
  assert audio.log_mel_16k(np.zeros(samples)).shape == (frames, 64)


def test_silence_gives_log_offset_floor():
  np.testing.assert_allclose(audio.log_mel_16k(np.zeros(1600)), LOG_SILENCE,
                             atol=1e-6)


def test_librosa_defaults_are_not_the_vggish_front_end():
  """Why log_mel_16k does not just call librosa's defaults."""
  wave = _music_like(16000, 1.0)
  ours = audio.log_mel_16k(wave)
  # Default librosa centres frames: one more frame per padded hop.
  centred = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=512,
                                           hop_length=160, win_length=400)
  assert centred.shape[1] != ours.shape[0]
  # Slaney mel bands with area normalisation are far off in level.
  slaney = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125,
                               fmax=7500).T
  assert np.abs(slaney - audio.mel_matrix()).max() > 0.5
  # HTK edges without normalisation: same support, triangles linear in Hz
  # rather than mel, so close but not equal.
  htk = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125,
                            fmax=7500, htk=True, norm=None).T
  np.testing.assert_array_equal(htk > 0, audio.mel_matrix() > 0)
  assert 1e-3 < np.abs(htk - audio.mel_matrix()).max() < 0.01
  np.testing.assert_allclose(audio.mel_matrix(), _REFERENCE_MEL, atol=1e-12)


# --------------------------------------------------------------------------
# Resampling.


@pytest.mark.parametrize("sample_rate", [44100, 48000, 22050, 8000, 44056])
def test_kaiser_best_matches_documented_resampy_algorithm(sample_rate):
  wave = _speech_like(sample_rate, 0.05)
  ours = audio.resample_to_16k(wave, sample_rate)
  reference = _reference_kaiser_resample(wave, sample_rate)
  expected_length = int(len(wave) * 16000 / sample_rate)
  assert ours.shape == reference.shape == (expected_length,)
  assert np.abs(ours - reference).max() < 1e-9


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_kaiser_best_matches_resampy_when_installed(sample_rate):
  resampy = pytest.importorskip("resampy")
  wave = _music_like(sample_rate, 35280 / sample_rate)
  expected = resampy.resample(wave, sample_rate, 16000)
  ours = audio.resample_to_16k(wave, sample_rate)
  assert np.abs(ours - expected).max() < 1e-9


def test_resample_identity_at_16k_and_bad_method():
  wave = np.linspace(-1, 1, 1000)
  np.testing.assert_array_equal(audio.resample_to_16k(wave, 16000), wave)
  with pytest.raises(ValueError, match="unknown resampling method"):
    audio.resample_to_16k(wave, 44100, method="linear")


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_soxr_differs_from_published_resampler_only_in_top_bands(name):
  """soxr (librosa's default) vs resampy kaiser_best, in the log-mel domain."""
  wave = SIGNALS[name](44100, 0.8)
  kaiser = audio.log_mel_16k(audio.resample_to_16k(wave, 44100))
  soxr = audio.log_mel_16k(audio.resample_to_16k(wave, 44100, "soxr_hq"))
  difference = np.abs(kaiser - soxr).max(axis=0)
  print(f"{name}: soxr_hq vs kaiser_best max |dlogmel| bands 0-59 "
        f"{difference[:60].max():.4f}, band 63 {difference[63]:.4f}")
  assert difference[:60].max() < 0.02
  assert difference.argmax() >= 60  # soxr's pass band ends below 7.5 kHz.


# --------------------------------------------------------------------------
# Clip window rule (indices worked out by hand from spec section 6).


def _ramp(num_samples):
  return (np.arange(num_samples) + 1.0) / (num_samples + 1.0)


@pytest.mark.parametrize(
    "sample_rate,fps,frames,num_samples,start,stop,offset",
    [
        # 1764 samples/frame: start max(0, -882) = 0; end 26460 + 882.
        (44100, 25, (1, 16), 441000, 0, 27343, 17640 - 27343 // 2),
        # 1601.6 samples/frame: 14414.41 - 800.80; 40040.04 + 800.80 (both
        # truncated, not rounded); an even-length excerpt.
        (48000, 29.97, (10, 26), 480000, 13613, 40841, 17640 - 27228 // 2),
        # 533.3 samples/frame: 52800 - 266.7; end clipped to the 60000 samples.
        (16000, 30, (100, 115), 60000, 52533, 60000, 17640 - 7467 // 2),
    ])
def test_clip_window_rule(sample_rate, fps, frames, num_samples, start, stop,
                          offset):
  wave = _ramp(num_samples)
  buffer = audio.clip_excerpt_buffer(wave, sample_rate, fps, *frames)
  assert buffer.shape == (35280,)
  length = stop - start
  np.testing.assert_array_equal(buffer[offset:offset + length],
                                wave[start:stop])
  assert not buffer[:offset].any() and not buffer[offset + length:].any()


def test_clip_window_longer_than_buffer_is_centre_cropped():
  # 48 kHz at 10 fps: frames 1..16 span samples 0..74400 (74401 > 35280).
  wave = _ramp(100000)
  buffer = audio.clip_excerpt_buffer(wave, 48000, 10, 1, 16)
  np.testing.assert_array_equal(buffer, wave[19560:19560 + 35280])


def test_clip_window_empty_excerpt_is_silent_and_frames_are_one_based():
  wave = _ramp(16000)
  # start(20) = 11840 > end(5) = 2880: the published slice is empty.
  assert not audio.clip_excerpt_buffer(wave, 16000, 25, 20, 5).any()
  assert not audio.clip_excerpt_buffer(wave, 16000, 25, 900, 916).any()
  with pytest.raises(ValueError, match="1-based"):
    audio.clip_excerpt_buffer(wave, 16000, 25, 0, 15)
  with pytest.raises(audio.AudioError, match="mono"):
    audio.clip_excerpt_buffer(np.zeros((100, 2)), 16000, 25, 1, 2)


def test_published_buffer_samples():
  assert audio.published_buffer_samples(16) == audio.BUFFER_SAMPLES == 35280
  assert audio.published_buffer_samples(8) == 17640


@pytest.mark.parametrize("sample_rate,frames", [(44100, 78), (48000, 72),
                                                (22050, 158), (16000, 219)])
def test_buffer_frames_per_sample_rate(sample_rate, frames):
  # 35280 samples -> int(35280 * 16000 / rate) -> 1 + (n - 400) // 160.
  wave_16k = audio.resample_to_16k(np.zeros(35280), sample_rate)
  assert audio.log_mel_16k(wave_16k).shape == (frames, 64)


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_clip_log_mel_end_to_end(sample_rate):
  wave = _speech_like(sample_rate, 2.0)
  ours = audio.clip_log_mel(wave, sample_rate, 25.0, 10, 25)
  buffer = audio.clip_excerpt_buffer(wave, sample_rate, 25.0, 10, 25)
  patches = _reference_patches(
      _reference_log_mel(_reference_kaiser_resample(buffer, sample_rate)))
  # 78 frames -> 2 patches at 44.1 kHz, 72 frames -> 1 patch at 48 kHz.
  order = {2: [0, 0, 0, 0, 1, 1, 1, 1, 0], 1: [0] * 9}[len(patches)]
  assert ours.shape == (9, 64, 64) and ours.dtype == np.float32
  assert np.abs(ours - patches[order]).max() < 1e-4


# --------------------------------------------------------------------------
# Patch framing and the repetition rule.

NINE_PATCH_ORDERS = {
    1: [0] * 9,
    2: [0, 0, 0, 0, 1, 1, 1, 1, 0],
    3: [0, 0, 0, 1, 1, 1, 2, 2, 2],
    4: [0, 0, 1, 1, 2, 2, 3, 3, 0],
    5: [0, 1, 2, 3, 4, 0, 1, 2, 3],
    6: [0, 1, 2, 3, 4, 5, 0, 1, 2],
    7: [0, 1, 2, 3, 4, 5, 6, 0, 1],
    8: [0, 1, 2, 3, 4, 5, 6, 7, 0],
    9: list(range(9)),
    10: list(range(9)),
    15: list(range(9)),
}


def _numbered_log_mel(num_frames):
  """Frame f holds f + band / 100, so each patch's first frame is visible."""
  return (np.arange(num_frames)[:, None] + np.arange(64) / 100).astype(
      np.float32)


@pytest.mark.parametrize("available", sorted(NINE_PATCH_ORDERS))
def test_frame_patches_published_repetition(available):
  log_mel = _numbered_log_mel(64 + 11 * (available - 1))
  patches = audio.frame_patches(log_mel)
  assert patches.shape == (9, 64, 64) and patches.dtype == np.float32
  np.testing.assert_array_equal(patches[:, 0, 0] / 11,
                                NINE_PATCH_ORDERS[available])
  reference = _reference_patches(log_mel)
  np.testing.assert_array_equal(patches,
                                reference[NINE_PATCH_ORDERS[available]])


@pytest.mark.parametrize("available,expected", [(1, [0] * 5),
                                                (2, [0, 0, 1, 1, 0]),
                                                (3, [0, 1, 2, 0, 1]),
                                                (7, [0, 1, 2, 3, 4])])
def test_patch_order_generalises_to_five(available, expected):
  np.testing.assert_array_equal(audio.patch_order(available, 5), expected)


def test_frames_after_last_full_patch_are_dropped():
  patches = audio.frame_patches(_numbered_log_mel(64 + 11 + 10))  # 2 patches.
  np.testing.assert_array_equal(patches[:, 0, 0] / 11, NINE_PATCH_ORDERS[2])


@pytest.mark.parametrize("num_frames", [0, 1, 63])
def test_short_audio_is_padded_with_silence(num_frames):
  log_mel = _numbered_log_mel(num_frames)
  patches = audio.frame_patches(log_mel, num_patches=5)
  assert patches.shape == (5, 64, 64)
  for patch in patches:
    np.testing.assert_array_equal(patch[:num_frames], log_mel)
    np.testing.assert_allclose(patch[num_frames:], LOG_SILENCE, rtol=1e-6)


def test_frame_patches_rejects_wrong_band_count():
  with pytest.raises(audio.AudioError, match="frames, 64"):
    audio.frame_patches(np.zeros((100, 32)))


# --------------------------------------------------------------------------
# Patch resize.


def _torch_bilinear_by_hand(image, out_h, out_w):
  """align_corners=False bilinear, coordinates clamped, one pixel at a time."""
  in_h, in_w = image.shape

  def source(i, in_size, out_size):
    position = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    low = min(int(position), in_size - 1)
    return low, min(low + 1, in_size - 1), position - low

  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    y0, y1, fy = source(i, in_h, out_h)
    for j in range(out_w):
      x0, x1, fx = source(j, in_w, out_w)
      top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
      bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
      out[i, j] = (1 - fy) * top + fy * bottom
  return out


def test_resize_matches_torch_bilinear_formula():
  image = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
  ours = audio.resize_patches(image[None], size=(7, 9))
  np.testing.assert_allclose(ours[0], _torch_bilinear_by_hand(image, 7, 9),
                             atol=1e-6)


def test_resize_published_size_keeps_corners_and_constants():
  patches = np.random.default_rng(1).standard_normal((9, 64, 64)).astype(
      np.float32)
  resized = audio.resize_patches(patches)
  assert resized.shape == (9, 112, 192) and resized.dtype == np.float32
  # The first/last output centres fall outside the input centres: clamped.
  np.testing.assert_allclose(resized[:, 0, 0], patches[:, 0, 0], atol=1e-6)
  np.testing.assert_allclose(resized[:, -1, -1], patches[:, -1, -1], atol=1e-6)
  flat = audio.resize_patches(np.full((2, 64, 64), LOG_SILENCE, np.float32))
  np.testing.assert_allclose(flat, LOG_SILENCE, rtol=1e-6)


@pytest.mark.parametrize("size", [(112, 192), (48, 40), (21, 80)])
def test_resize_matches_pil_triangle_filter(size):
  """PIL's float bilinear is the antialiased filter torchvision >= 0.17 uses."""
  image = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
  pil = np.asarray(Image.fromarray(image).resize(
      (size[1], size[0]), Image.Resampling.BILINEAR))
  ours = audio.resize_patches(image[None], size=size)[0]
  np.testing.assert_allclose(ours, pil, atol=1e-5)
  if size == (112, 192):  # Upscaling: antialias changes nothing.
    plain = audio.resize_patches(image[None], size=size, antialias=False)[0]
    np.testing.assert_allclose(plain, ours, atol=1e-6)


def test_resize_matrix_equals_the_models_linear_resize_matrix():
  """data/ and models/ may not import each other, so each keeps its torch
  bilinear (align_corners=False) matrix; without antialiasing they agree."""
  for in_size, out_size in ((64, 112), (64, 192), (7, 3), (5, 5), (3, 13)):
    np.testing.assert_array_equal(
        audio._resize_matrix(in_size, out_size, False),  # pylint: disable=protected-access
        layers.linear_resize_matrix(in_size, out_size).astype(np.float32))


# --------------------------------------------------------------------------
# Wav loading.


def test_load_wav_mono_int16_scale(tmp_path):
  samples = np.array([0, 1, -1, 32767, -32768, 1234], np.int16)
  path = tmp_path / "mono.wav"
  soundfile.write(path, samples, 22050, subtype="PCM_16")
  wave, sample_rate = audio.load_wav(path)
  assert sample_rate == 22050 and wave.dtype == np.float32
  np.testing.assert_array_equal(wave, samples / 32768.0)


def test_load_wav_averages_stereo(tmp_path):
  samples = np.array([[100, -300], [32767, 32767], [-2, 4]], np.int16)
  path = tmp_path / "stereo.wav"
  soundfile.write(path, samples, 48000, subtype="PCM_16")
  wave, _ = audio.load_wav(path)
  np.testing.assert_allclose(wave, samples.mean(axis=1) / 32768.0, rtol=1e-6)


def test_load_wav_missing_file(tmp_path):
  path = tmp_path / "absent.wav"
  with pytest.raises(FileNotFoundError, match="absent.wav") as info:
    audio.load_wav(path)
  assert isinstance(info.value, audio.AudioError)


@pytest.mark.parametrize("content", [b"", b"RIFF\0\0\0\0WAVEfmt ",
                                     bytes(range(256)) * 8])
def test_load_wav_corrupt_file(tmp_path, content):
  path = tmp_path / "broken.wav"
  path.write_bytes(content)
  with pytest.raises(audio.AudioError, match="broken.wav"):
    audio.load_wav(path)


def test_load_wav_without_samples(tmp_path):
  path = tmp_path / "empty.wav"
  soundfile.write(path, np.zeros(0, np.int16), 16000, subtype="PCM_16")
  with pytest.raises(audio.AudioError, match="no samples"):
    audio.load_wav(path)
