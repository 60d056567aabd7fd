"""Tests of `python -m data_prep`: synthetic releases, conversion, bad input,
crash and resume. Pipeline-level round trips are in test_input_pipeline.py."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import soundfile

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data.prep import cli as data_prep_cli
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import release_files
from tools import reference_loader
from diffsal_jax.data import shards
from diffsal_jax.data.synthetic import synth_scene
from diffsal_jax.data import audio
from tests import synthetic_data as sd

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(*args, env_extra=None):
  env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def av_release(tmp_path_factory):
  raw = sd.make_av(tmp_path_factory.mktemp("av_raw"))
  out = tmp_path_factory.mktemp("av_out")
  status, text = sd.convert_quietly("av", raw, out)
  assert status == 0, text
  return raw, out


def _check_store_matches_raw(raw, out, family, stored_format):
  """Every frame, map, fixation set and audio sample equals a direct decode."""
  release = layouts.discover(family, raw)
  store = shards.ShardStore(out)
  reference = reference_loader.ReferenceLoader(release, sd.MODEL_HW, stored_format)
  assert [v.key for v in store.manifest.videos] == [v.key for v in release.videos]
  for index, entry in enumerate(store.manifest.videos):
    frames = list(range(1, entry.num_frames + 1))
    expected = np.stack([reference.frame_uint8(entry.key, k) for k in frames])
    np.testing.assert_array_equal(store.frames_uint8(index, frames), expected)
    for k in frames if entry.has_maps else []:
      truth = store.ground_truth(index, k)
      np.testing.assert_array_equal(truth.map, reference.map_uint8(entry.key, k))
      np.testing.assert_array_equal(truth.points, reference.fixation_points(entry.key, k))
      assert truth.map_orig == reference.map_original_bytes(entry.key, k)
    if entry.audio is not None:
      wave, rate = reference.wave(entry.key)
      assert rate == entry.audio["sample_rate"]
      np.testing.assert_array_equal(store.audio(index), wave)
      np.testing.assert_array_equal(store.audio(index, 1000, 70000), wave[1000:70000])
  return store.manifest


def test_av_round_trip_through_shards(av_release):
  raw, out = av_release
  manifest = _check_store_matches_raw(raw, out, "av", "jpeg")
  assert manifest.dataset == "av" and manifest.image_hw == sd.MODEL_HW
  assert len(manifest.videos) == 6 and all(v.fps == 25.0 for v in manifest.videos)
  # Synthetic fold k tests clip i with i % 3 == k - 1; DIEM has one split.
  assert manifest.folds["2"]["test"] == ["AVAD/clip_01", "DIEM/clip_02"]
  assert set(manifest.folds["1"]["train"]) == {"AVAD/clip_01", "AVAD/clip_02",
                                               "DIEM/clip_00", "DIEM/clip_01"}
  assert len(manifest.fold_lists) == 8 and not manifest.issues


def test_dhf1k_avi_round_trip(tmp_path):
  raw = sd.make_dhf1k(tmp_path / "raw", "video")
  assert status_ok(sd.convert_quietly("dhf1k", raw, tmp_path / "out"))
  manifest = _check_store_matches_raw(raw, tmp_path / "out", "dhf1k", "jpeg")
  assert manifest.splits == {"train": ["DHF1K/1", "DHF1K/2"], "val": ["DHF1K/601"],
                             "test": ["DHF1K/701"]}
  test_video = manifest.videos[-1]
  assert not test_video.has_maps and test_video.num_records == 32   # frames only
  assert all(v.fps == 25.0 for v in manifest.videos)                # from the AVI


def test_dhf1k_frames_png_is_lossless(tmp_path):
  raw = sd.make_dhf1k(tmp_path / "raw", "frames")
  assert status_ok(sd.convert_quietly("dhf1k", raw, tmp_path / "out", image_format="png"))
  _check_store_matches_raw(raw, tmp_path / "out", "dhf1k", stored_format=None)


def status_ok(result) -> bool:
  status, text = result
  assert status == 0, text
  return True


def _damage(raw: pathlib.Path) -> list[tuple[str, str]]:
  """One kind of bad input per video; returns (kind, path to be named)."""
  frames, notes = raw / "video_frames", raw / "annotations"
  corrupt = frames / "AVAD/clip_00/img_00005.jpg"
  corrupt.write_bytes(corrupt.read_bytes()[:300])
  missing = frames / "AVAD/clip_01/img_00003.jpg"
  missing.unlink()
  (notes / "AVAD/clip_02/maps/eyeMap_00007.jpg").unlink()
  absent_wav = raw / "video_audio/SumMe/clip_00/clip_00.wav"
  absent_wav.unlink()
  empty_wav = raw / "video_audio/SumMe/clip_01/clip_01.wav"
  soundfile.write(empty_wav, np.zeros(0, np.int16), 44100, subtype="PCM_16")
  zero_map = notes / "SumMe/clip_02/maps/eyeMap_00004.jpg"
  image_rules.Image.fromarray(np.zeros((60, 96), np.uint8)).save(zero_map)
  fold_list = raw / "fold_lists/DIEM_list_train_fps.txt"
  fold_list.write_text(fold_list.read_text() + "clip_99 twelve\n")
  return [("corrupt_image", str(corrupt)), ("missing_frame", str(missing)),
          ("missing_file", str(notes / "AVAD/clip_02/maps/eyeMap_00007.jpg")),
          ("bad_audio", str(absent_wav)),
          ("bad_audio", str(empty_wav)), ("empty_map", str(zero_map)),
          ("bad_fold_line", f"{fold_list}:3")]


def test_bad_input_is_named_and_the_rest_converts(tmp_path):
  raw = sd.make_av(tmp_path / "raw", datasets=("DIEM", "AVAD", "SumMe"))
  named = _damage(raw)
  result = _run_cli("convert", "--dataset", "av", "--src", str(raw), "--dst",
                    str(tmp_path / "out"), "--height", "64", "--width", "96", "--workers", "2")
  assert result.returncode == 1, result.stdout + result.stderr
  for kind, path in named:
    assert any(kind in line and path in line for line in result.stdout.splitlines()), (
        kind, path, result.stdout)
  manifest = manifest_lib.load_manifest(tmp_path / "out")
  kept = {v.key: v for v in manifest.videos}
  assert set(kept) == {"DIEM/clip_00", "DIEM/clip_01", "DIEM/clip_02", "SumMe/clip_02"}
  assert kept["SumMe/clip_02"].empty_map_frames == [4]
  assert not list((tmp_path / "out/shards").glob("AVAD*"))   # nothing partial left
  report = json.loads((tmp_path / "out/conversion_report.json").read_text())
  assert report["counts"] == {"resumed": 0, "new": 4, "failed": 5}
  accepted = _run_cli("convert", "--dataset", "av", "--src", str(raw), "--dst",
                      str(tmp_path / "out2"), "--height", "64", "--width", "96",
                      "--workers", "1", "--skip_bad")
  assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def _all_records(out: pathlib.Path) -> dict[str, list[bytes]]:
  store = shards.ShardStore(out)
  return {v.key: store.raw_records(i) for i, v in enumerate(store.manifest.videos)}


def test_killed_conversion_leaves_no_partial_shard_and_resumes(tmp_path):
  raw = sd.make_av(tmp_path / "raw", datasets=("DIEM",))
  args = ["convert", "--dataset", "av", "--src", str(raw), "--dst", str(tmp_path / "out"),
          "--height", "64", "--width", "96", "--workers", "1"]
  # 25 records per video (24 frames with their maps, 1 audio chunk): die inside video 2.
  killed = _run_cli(*args, env_extra={shards.KILL_HOOK_ENV: "40"})
  assert killed.returncode == -9, killed.stdout + killed.stderr
  shard_dir = tmp_path / "out/shards"
  finished = sorted(p.name for p in shard_dir.glob("*.array_record"))
  assert finished == ["DIEM__clip_00.array_record"]
  assert len(list(shard_dir.glob("*.tmp-*"))) == 1 and not (tmp_path / "out/manifest.json").exists()
  refused = _run_cli(*args)
  assert refused.returncode != 0 and "--resume" in refused.stderr
  resumed = _run_cli(*args, "--resume")
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "kept 1 from an earlier run" in resumed.stdout
  assert not list(shard_dir.glob("*.tmp-*"))
  assert status_ok(sd.convert_quietly("av", raw, tmp_path / "clean"))
  assert _all_records(tmp_path / "out") == _all_records(tmp_path / "clean")


def test_fold_list_parsing_names_bad_lines(tmp_path):
  path = tmp_path / "AVAD_list_train_1_fps.txt"
  path.write_text("a 10 25\n\nb 12\nc x 25\nd 5 29.97\ne 0 25\n")
  issues = []
  assert layouts.parse_fold_list(path, issues) == [("a", 10, 25.0), ("d", 5, 29.97)]
  assert [i.path for i in issues] == [f"{path}:{n}" for n in (3, 4, 6)]
  assert layouts.fold_list_names("DIEM", 3) == {"train": "DIEM_list_train_fps.txt",
                                                "test": "DIEM_list_test_fps.txt"}
  assert [layouts.dhf1k_split(n) for n in (1, 600, 601, 700, 701, 1000)] == [
      "train", "train", "val", "val", "test", "test"]


def test_published_resize_rules():
  img = image_rules.Image.fromarray(
      np.random.default_rng(0).integers(0, 256, (90, 160, 3), np.uint8))
  av_frame = image_rules.frame_to_model_size(img, "av", (224, 384))
  chained = img.resize((320, 240), image_rules.Image.BICUBIC).resize((384, 224),
                                                                    image_rules.Image.BILINEAR)
  np.testing.assert_array_equal(av_frame, np.asarray(chained))
  np.testing.assert_array_equal(image_rules.frame_to_model_size(img, "dhf1k", (224, 384)),
                                np.asarray(img.resize((384, 224), image_rules.Image.BILINEAR)))
  points = np.array([[0, 0], [89, 159], [45, 80]])
  fix = image_rules.render_fixations(points, (90, 160), (45, 40))
  assert fix.sum() == 3 and fix[0, 0] == fix[44, 39] == fix[22, 20] == 1


def _dominant_hz(wave, rate):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)]


def test_synthetic_av_audio_decides_which_disc_is_looked_at():
  spec = synth_scene.SceneSpec(num_frames=60, sample_rate=16000)
  speakers = []
  for seed in range(8):
    scene = synth_scene.audio_visual_scene(np.random.default_rng(seed), spec)
    for f in range(5, 55, 7):
      if not (scene.speakers[f - 3:f + 4] == scene.speakers[f]).all():
        continue   # near a change the window mixes two tones
      if np.linalg.norm(np.subtract(*scene.discs[f])) < min(spec.height, spec.width) / 3:
        continue   # overlapping discs: the speaker may lie under the other
      peak = np.unravel_index(np.argmax(scene.maps[f]), scene.maps[f].shape)
      colour = min(synth_scene.COLOURS, key=lambda c: np.abs(
          scene.frames[f][peak].astype(int) - synth_scene.COLOURS[c]).sum())
      window = scene.audio[int((f - 2) / spec.fps * 16000):int((f + 2) / spec.fps * 16000)]
      tone = _dominant_hz(window.astype(float), 16000)
      assert abs(tone - synth_scene.TONE_HZ[colour]) < 30, (seed, f, tone, colour)
      speakers.append(colour)
  assert 0.3 < speakers.count("red") / len(speakers) < 0.7   # colour alone is chance


def test_synthetic_dhf1k_gaze_follows_the_moving_disc():
  spec = synth_scene.SceneSpec(num_frames=30)
  scene = synth_scene.visual_scene(np.random.default_rng(0), spec)
  peaks = np.array([np.unravel_index(np.argmax(m), m.shape) for m in scene.maps])
  assert np.linalg.norm(peaks[-1] - peaks[0]) > min(spec.height, spec.width) / 10
  background = np.median(scene.frames[0].reshape(-1, 3), axis=0)
  for frame, (r, c) in zip(scene.frames, peaks):
    assert np.abs(frame[r, c].astype(int) - background).sum() > 60   # on a disc


@pytest.mark.parametrize("layout", ["dhf1k", "av"])
def test_synth_writes_the_same_release_with_worker_processes(tmp_path, layout):
  """`synth --workers=2` (what the demos use from 64 videos on) writes the
  very files one process writes."""
  common = ["synth", "--layout", layout, "--frames", "6", "--height", "24",
            "--width", "40", "--train_videos", "3", "--datasets", "DIEM,AVAD",
            "--videos_per_dataset", "2"]
  for workers in (1, 2):
    result = _run_cli(*common, "--dst", str(tmp_path / str(workers)),
                      f"--workers={workers}")
    assert result.returncode == 0, result.stderr

  def content(path):   # a .mat header holds its writing time
    if path.suffix == ".mat":
      return scipy.io.loadmat(path)[release_files.FIXATION_VARIABLE].tobytes()
    return path.read_bytes()
  files = {w: {p.relative_to(tmp_path / w): content(p)
               for p in (tmp_path / w).rglob("*") if p.is_file()}
           for w in ("1", "2")}
  assert len(files["1"]) > 20 and files["1"] == files["2"]


def test_cli_help_explains():
  for command in ("convert", "synth"):
    result = _run_cli(command, "--help")
    assert result.returncode == 0 and "--dst" in result.stdout


@pytest.mark.parametrize("argv, message", [
    ([], "give a command first"),
    (["bogus"], "unknown command 'bogus'"),
    (["convert", "--layout", "av", "--src", "x", "--dst", "y"],
     "--layout is a flag of `synth`, not of `convert`"),
    (["verify", "a", "b"], "expected OUT"),
    (["synth", "--dst", "x"], "--layout must have a value"),
])
def test_cli_usage_errors_exit_2_and_say_why(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    data_prep_cli.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_load_wav_is_what_the_store_keeps(av_release):
  raw, out = av_release
  store = shards.ShardStore(out)
  entry = store.manifest.videos[0]
  wave, rate = audio.load_wav(raw / "video_audio" / entry.dataset / entry.name /
                              f"{entry.name}.wav")
  assert entry.audio["dtype"] == "int16" and entry.audio["num_samples"] == len(wave)
  assert rate == 44100 and np.array_equal(store.audio(0), wave)
