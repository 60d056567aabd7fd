"""User videos as phones and other tools write them: rotation, variable frame
rate, late audio, size changes, hidden files; all without the model.

Inputs are tiny (64x48, about ten frames) and built in each test with PyAV.
"""

import fractions
import io

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from diffsal_jax.data import audio as audio_lib
from diffsal_jax.inference import overlay
from diffsal_jax.inference import predict
from diffsal_jax.inference import video_io
from diffsal_jax.inference import video_timing

WIDTH, HEIGHT, RATE = 64, 48, 16000
MS = fractions.Fraction(1, 1000)
# Irregular presentation times (s): a phone / screen capture pattern.
VFR_TIMES = (0.0, 0.04, 0.08, 0.3, 0.5, 0.9, 1.0, 1.5, 2.0, 2.04)


def marked_frame(value: int = 0) -> np.ndarray:
  """(48, 64, 3) uint8: white 8x8 square at the top-left corner."""
  image = np.full((HEIGHT, WIDTH, 3), value, np.uint8)
  image[:8, :8] = 255
  return image


def write_video(path, times=None, rotation=None, hflip=False, vflip=False,
                audio_start=None, click=None, audio_seconds=3.0):
  """H.264 (lossless, no B-frames) mp4 with frames at `times` (s, ms steps),
  a display matrix when `rotation` (counter-clockwise degrees, as PyAV's
  set_display_rotation) or a flip is given, and mono AAC starting at
  `audio_start` s holding one click `click` s into the track."""
  times = times if times is not None else [k / 25 for k in range(10)]
  with av.open(str(path), "w") as container:
    video = container.add_stream("libx264", rate=25)
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv444p"
    video.codec_context.time_base = MS
    video.codec_context.options = {"qp": "0", "bf": "0"}
    if rotation is not None or hflip or vflip:
      video.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
    audio = None
    if audio_start is not None:
      audio = container.add_stream("aac", rate=RATE, layout="mono")
    for k, t in enumerate(times):
      frame = av.VideoFrame.from_ndarray(marked_frame(10 * k), format="rgb24")
      frame.pts, frame.time_base = round(t * 1000), MS
      for packet in video.encode(frame):
        packet.duration = 40
        container.mux(packet)
    container.mux(video.encode(None))
    if audio is not None:
      wave = np.zeros(int(audio_seconds * RATE), np.int16)
      if click is not None:
        wave[int(click * RATE)] = 20000
      for start in range(0, wave.size, 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024],
                                           format="s16", layout="mono")
        frame.sample_rate, frame.time_base = RATE, fractions.Fraction(1, RATE)
        frame.pts = start + round(audio_start * RATE)
        container.mux(audio.encode(frame))
      container.mux(audio.encode(None))
  return path


def corner(image: Image.Image) -> str:
  """Which corner holds the white square: 'tl', 'tr', 'bl' or 'br'."""
  pixels = np.asarray(image.convert("L"), np.float32)
  h, w = pixels.shape
  quads = {"tl": pixels[:4, :4], "tr": pixels[:4, w - 4:],
           "bl": pixels[h - 4:, :4], "br": pixels[h - 4:, w - 4:]}
  return max(quads, key=lambda k: quads[k].mean())


# ---------------------------------------------------------------- rotation --

@pytest.mark.parametrize("rotation,hflip,vflip,size_hw,where", [
    (-90, False, False, (64, 48), "tr"),   # phone portrait: 90 clockwise
    (90, False, False, (64, 48), "bl"),
    (180, False, False, (48, 64), "br"),
    (0, True, False, (48, 64), "tr"),      # mirrored (front camera)
    (0, False, True, (48, 64), "bl"),
    (90, True, False, (64, 48), "br"),     # rotate, then mirror
])
def test_display_matrix_gives_upright_frames(tmp_path, rotation, hflip,
                                             vflip, size_hw, where):
  path = write_video(tmp_path / "rot.mp4", rotation=rotation, hflip=hflip,
                     vflip=vflip)
  source = video_io.VideoFile(path)
  assert source.size_hw == size_hw
  frames = list(source.frames())
  assert len(frames) == 10
  assert {(f.height, f.width) for f in frames} == {size_hw}
  assert corner(frames[0]) == where
  assert any("display matrix" in note for note in source.notes)


def test_no_display_matrix_is_left_alone(tmp_path):
  source = video_io.VideoFile(write_video(tmp_path / "plain.mp4"))
  assert source.transposes == [] and source.size_hw == (HEIGHT, WIDTH)
  assert corner(next(source.frames())) == "tl" and source.notes == []


# ------------------------------------------------------------------ timing --

def test_variable_frame_rate_keeps_each_frames_time(tmp_path):
  source = video_io.VideoFile(write_video(tmp_path / "vfr.mp4", VFR_TIMES))
  timing = source.timing
  assert timing.vfr and timing.num_frames == 10
  np.testing.assert_allclose(timing.times, VFR_TIMES, atol=1e-9)
  assert timing.duration == pytest.approx(2.08)   # last frame lasts 40 ms
  assert source.fps == pytest.approx(10 / 2.08)
  assert "variable frame rate" in source.notes[0]


def test_a_dropped_frame_keeps_the_later_frames_times(tmp_path):
  times = [k / 25 for k in range(10) if k != 4]   # frame at 0.16 s missing
  source = video_io.VideoFile(write_video(tmp_path / "gap.mp4", times))
  assert source.timing.vfr and source.timing.num_frames == 9
  np.testing.assert_allclose(source.timing.times, times, atol=1e-9)
  assert source.timing.duration == pytest.approx(0.4)


def test_timing_from_timestamps_in_decode_order():
  # 29.97 fps in a millisecond time base: 33/34 ms steps are constant rate.
  pts = [round(k * 1001 / 30) for k in range(30)]
  timing = video_timing.FrameTiming.from_pts(
      pts[::-1], MS, 0, fractions.Fraction(30000, 1001))
  assert not timing.vfr and timing.fps == 30000 / 1001
  assert timing.times[29] == 29 * (1.0 / (30000 / 1001))
  with pytest.raises(ValueError, match="same timestamp"):
    video_timing.FrameTiming.from_pts([0, 40, 40], MS, 0, 25)


def test_constant_rate_times_are_the_published_ones(tmp_path):
  source = video_io.VideoFile(write_video(tmp_path / "cfr.mp4"))
  timing = source.timing
  assert not timing.vfr and source.fps == 25 and timing.duration == 0.4
  assert timing.times.tolist() == [(f - 1) * (1.0 / 25) for f in range(1, 11)]
  wave = np.random.default_rng(0).normal(size=RATE).astype(np.float32)
  for first, last in [(1, 4), (3, 10), (7, 7)]:
    np.testing.assert_array_equal(
        audio_lib.clip_excerpt_buffer(wave, RATE, 25, first, last,
                                      frame_times=timing.times),
        audio_lib.clip_excerpt_buffer(wave, RATE, 25, first, last))


def test_vfr_audio_window_is_centred_on_the_frames_time():
  times = np.array(VFR_TIMES)
  fps = 10 / 2.08
  # Frame 8 is shown at 1.5 s: its window is 1.5 s -/+ half a mean period.
  start, end = audio_lib.time_sample_bounds(times[7], RATE, fps, 10 * RATE)
  half = RATE / fps / 2
  assert (start, end) == (int(1.5 * RATE - half), int(1.5 * RATE + half))
  # (f-1)/fps would have put frame 8 at 1.456 s, and frame 10 at 1.872 s.
  buffer = audio_lib.clip_excerpt_buffer(
      np.arange(3 * RATE, dtype=np.float32), RATE, fps, 10, 10,
      buffer_samples=RATE, frame_times=times)
  taken = buffer[buffer > 0]
  assert taken[0] == int(2.04 * RATE - half)


def test_late_audio_is_aligned_to_the_first_frame(tmp_path):
  """Audio starting 0.5 s after the video with a click 1.0 s into it: the
  click is 1.5 s after the first frame in the wave the model and the overlay
  get."""
  path = write_video(tmp_path / "late.mp4", audio_start=0.5, click=1.0)
  source = video_io.VideoFile(path)
  track = source.audio()
  assert track.sample_rate == RATE
  assert int(np.argmax(np.abs(track.samples[0]))) == int(1.5 * RATE)
  # AAC priming: the encoder's first frame starts 1024 samples early.
  assert source.audio_offset == pytest.approx(0.5 - 1024 / RATE)
  assert any("silence" in note for note in source.notes)


def test_early_audio_is_cut_at_the_first_frame(tmp_path):
  times = [0.3 + k / 25 for k in range(10)]   # video starts at 0.3 s
  path = write_video(tmp_path / "early.mp4", times, audio_start=0.0,
                     click=0.8)
  source = video_io.VideoFile(path)
  track = source.audio()
  assert int(np.argmax(np.abs(track.samples[0]))) == int(0.5 * RATE)
  assert source.timing.times[0] == 0.0 and not source.timing.vfr


def test_overlay_keeps_vfr_timing_and_duration(tmp_path):
  source = video_io.VideoFile(write_video(tmp_path / "vfr.mp4", VFR_TIMES))
  writer = overlay.OverlayWriter(tmp_path / "o.mp4", source.timing,
                                  source.size_hw, None)
  for frame in source.frames():
    writer.write(np.asarray(frame), np.zeros(source.size_hw, np.uint8), 0.6)
  writer.close()
  info = video_io.probe(tmp_path / "o.mp4")
  assert info["frames"] == 10
  assert info["span"] == pytest.approx(2.08)
  assert info["duration"] == pytest.approx(2.08)
  written = video_io.VideoFile(tmp_path / "o.mp4")
  np.testing.assert_allclose(written.timing.times, VFR_TIMES, atol=1e-9)


# ---------------------------------------------------------- size changes --

def test_frame_size_change_inside_a_stream_is_scaled_and_listed(tmp_path):
  path = tmp_path / "sizes.mkv"
  with av.open(str(path), "w") as container:   # MJPEG: each packet a JPEG
    stream = container.add_stream("mjpeg", rate=25)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
    for k, (w, h) in enumerate([(64, 48), (64, 48), (80, 60), (64, 48)]):
      data = io.BytesIO()
      Image.new("RGB", (w, h), (200, 10, 10)).save(data, "JPEG")
      packet = av.Packet(data.getvalue())
      packet.stream, packet.time_base = stream, fractions.Fraction(1, 25)
      packet.pts = packet.dts = k
      packet.duration = 1
      container.mux(packet)
  source = video_io.VideoFile(path)
  frames = list(source.frames())
  assert [(f.height, f.width) for f in frames] == [(HEIGHT, WIDTH)] * 4
  assert source.resized_frames == [3]
  assert "1 frame(s) of another size" in video_io.resize_note([3], (48, 64))


# ----------------------------------------------------------- frame folders --

def _folder(tmp_path, count=4, size=(WIDTH, HEIGHT)):
  folder = tmp_path / "frames"
  folder.mkdir()
  for k in range(1, count + 1):
    Image.fromarray(marked_frame(20 * k)).resize(size).save(
        folder / f"{k:04d}.png")
  return folder


def test_frame_folder_skips_macos_and_windows_files(tmp_path):
  folder = _folder(tmp_path)
  (folder / "._0001.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)
  (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 50)
  (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 50)
  source = video_io.FrameFolder(folder, 25)
  assert [p.name for p in source.paths] == [f"{k:04d}.png" for k in (1, 2, 3,
                                                                      4)]
  assert len(list(source.frames())) == 4


def test_frame_folder_names_a_broken_frame_before_any_work(tmp_path):
  folder = _folder(tmp_path)
  good = (folder / "0003.png").read_bytes()
  (folder / "0003.png").write_bytes(good[:len(good) // 2])   # truncated
  with pytest.raises(video_io.MediaError, match="0003.png"):
    video_io.FrameFolder(folder, 25)


def test_frame_folder_with_another_size_is_scaled_and_reported(tmp_path):
  folder = _folder(tmp_path)
  Image.fromarray(marked_frame()).resize((80, 60)).save(folder / "0002.png")
  source = video_io.FrameFolder(folder, 25)
  assert source.notes == [video_io.resize_note([2], (HEIGHT, WIDTH))]
  assert {(f.height, f.width) for f in source.frames()} == {(HEIGHT, WIDTH)}
  assert source.resized_frames == [2]


def test_frame_folder_wav_and_timing(tmp_path):
  folder = _folder(tmp_path)
  soundfile.write(tmp_path / "s.wav", np.zeros(RATE, np.int16), RATE)
  source = video_io.FrameFolder(folder, 25, tmp_path / "s.wav")
  assert not source.timing.vfr and source.timing.duration == pytest.approx(0.16)
  assert source.audio().samples.shape == (1, RATE)


# ---------------------------------------------------------- several inputs --

def test_one_bad_input_does_not_stop_the_others(tmp_path):
  good = write_video(tmp_path / "good.mp4")
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"junk" * 100)
  folder = _folder(tmp_path)
  (folder / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  sources, errors = predict.open_sources(
      [lambda: video_io.VideoFile(good), lambda: video_io.VideoFile(bad),
       lambda: video_io.FrameFolder(folder, 25)])
  assert [s.name for s in sources] == ["good"]
  assert len(errors) == 2
  assert "bad.mp4" in errors[0] and "0002.png" in errors[1]


def test_odd_display_rotation_is_refused_by_name(tmp_path):
  path = write_video(tmp_path / "tilted.mp4", rotation=30)
  with pytest.raises(video_io.MediaError, match="tilted.mp4.*30 degrees counter"):
    video_io.VideoFile(path)
