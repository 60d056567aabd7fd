"""Dataset releases as shipped: the files of real releases (and of the tools
that saved them) convert, and the raw readers of the evaluator read them the
same way. Every input is built in the test, tiny."""

import json
import pathlib

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts
from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import release_files
from diffsal_jax.data import shards
from diffsal_jax.evaluation import evaluate
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import release_ground_truth
from tests import synthetic_data as sd
from tests.test_evaluate_shards import _scores, _write_predictions

NUM_FRAMES = 6


def save_mat73(path: pathlib.Path, name: str, array: np.ndarray,
               matlab_class: str = "double", sparse: bool = False) -> None:
  """A MATLAB v7.3 file as MATLAB writes it: 512-byte MAT header, then HDF5
  with the array stored transposed (column-major)."""
  with h5py.File(path, "w", userblock_size=512) as f:
    if sparse:
      matrix = scipy.sparse.csc_matrix(array.astype(np.float64))
      group = f.create_group(name)
      group.attrs["MATLAB_class"] = np.bytes_("double")
      group.attrs["MATLAB_sparse"] = np.uint64(array.shape[0])
      group["data"], group["ir"] = matrix.data, matrix.indices.astype(np.uint64)
      group["jc"] = matrix.indptr.astype(np.uint64)
    else:
      f.create_dataset(name, data=np.ascontiguousarray(array.T))
      f[name].attrs["MATLAB_class"] = np.bytes_(matlab_class)
  header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 2024 HDF5 schema 1.00 ."
  with open(path, "r+b") as f:
    f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


# --- .mat files -----------------------------------------------------------------

def test_every_matlab_variant_reads_the_same_array(tmp_path):
  expected = np.zeros((3, 5), np.uint8)   # not square: a missed transpose shows
  expected[0, 4] = expected[2, 1] = 1
  files = {}
  for fmt in ("4", "5"):
    files[f"v{fmt}_double"] = tmp_path / f"v{fmt}.mat"
    scipy.io.savemat(files[f"v{fmt}_double"], {"eyeMap": expected.astype(float)}, format=fmt)
  files["v5_logical"] = tmp_path / "logical.mat"
  scipy.io.savemat(files["v5_logical"], {"eyeMap": expected.astype(bool)})
  files["v5_sparse"] = tmp_path / "sparse.mat"
  scipy.io.savemat(files["v5_sparse"], {"eyeMap": scipy.sparse.csc_matrix(expected * 1.0)})
  for cls, dtype in (("double", np.float64), ("uint8", np.uint8), ("logical", np.uint8)):
    files[f"v73_{cls}"] = tmp_path / f"v73_{cls}.mat"
    save_mat73(files[f"v73_{cls}"], "eyeMap", expected.astype(dtype), cls)
  files["v73_sparse"] = tmp_path / "v73_sparse.mat"
  save_mat73(files["v73_sparse"], "eyeMap", expected, sparse=True)
  for label, path in files.items():
    array = release_files.read_mat_variable(path, "eyeMap")
    assert array.shape == (3, 5), label
    np.testing.assert_array_equal(array > 0, expected > 0, err_msg=label)
    np.testing.assert_array_equal(  # bytes in (the converter) = path in (evaluator)
        release_files.read_mat_variable(path.read_bytes(), "eyeMap", path) > 0, expected > 0)
  with pytest.raises(release_files.ReleaseError, match="no variable 'eyeMap'"):
    scipy.io.savemat(tmp_path / "other.mat", {"fixations": expected})
    release_files.read_mat_variable(tmp_path / "other.mat", "eyeMap")
  (tmp_path / "broken.mat").write_bytes(files["v73_double"].read_bytes()[:600])
  with pytest.raises(release_files.ReleaseError, match=str(tmp_path / "broken.mat")):
    release_files.read_mat_variable(tmp_path / "broken.mat", "eyeMap")


# --- text lists -----------------------------------------------------------------

@pytest.mark.parametrize("encoding,newline,tail", [
    ("utf-8", "\n", ""), ("utf-8-sig", "\r\n", "\r\n  \r\n"), ("utf-8", "\r", "\r"),
    ("utf-16", "\r\n", "\r\n\r\n"), ("utf-16-be", "\n", " \n")])
def test_fold_lists_as_editors_save_them(tmp_path, encoding, newline, tail):
  path = tmp_path / "AVAD_list_test_1_fps.txt"
  text = newline.join(["clip_a 10 25  ", "clip_b\t12 29.97"]) + tail
  data = text.encode(encoding)
  if encoding == "utf-16-be":
    data = b"\xfe\xff" + data    # UTF-16 big-endian with its BOM
  path.write_bytes(data)
  issues = []
  assert layouts.parse_fold_list(path, issues) == [("clip_a", 10, 25.0), ("clip_b", 12, 29.97)]
  assert not issues
  assert layouts.read_fold_list(path) == {"clip_a": 10, "clip_b": 12}


def test_undecodable_fold_list_is_named(tmp_path):
  path = tmp_path / "AVAD_list_test_1_fps.txt"
  path.write_bytes("clip_a 10 25\n".encode("utf-16-le"))   # no BOM: not text we can know
  issues = []
  assert layouts.parse_fold_list(path, issues) == []
  assert [(i.kind, i.path) for i in issues] == [("bad_text", str(path))]
  with pytest.raises(release_files.ReleaseError, match=str(path)):
    layouts.read_fold_list(path)


# --- images of any mode -----------------------------------------------------------

def test_images_of_any_bit_depth_are_rescaled_not_clipped():
  wide = np.array([[0, 257, 32896, 65535]] * 2, np.uint16)
  sixteen = Image.fromarray(wide)                                 # 'I;16' (16-bit PNG)
  assert sixteen.mode == "I;16"
  np.testing.assert_array_equal(image_rules.map_to_model_size(sixteen, (2, 4))[0],
                                [0, 1, 128, 255])
  np.testing.assert_array_equal(image_rules.frame_to_model_size(sixteen, "dhf1k", (2, 4))[0, :, 1],
                                [0, 1, 128, 255])
  np.testing.assert_array_equal(image_rules.grey_unit(sixteen)[0], wide[0] / 65535)
  thirty_two = Image.fromarray(wide.astype(np.int32))            # 'I'
  np.testing.assert_array_equal(image_rules.map_to_model_size(thirty_two, (2, 4))[0],
                                [0, 1, 128, 255])
  palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
  palette.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
  np.testing.assert_array_equal(image_rules.grey_unit(palette), [[0, 200 / 255]])
  np.testing.assert_array_equal(image_rules.map_to_model_size(palette, (1, 2)), [[0, 200]])
  one_bit = Image.fromarray(np.array([[False, True]]))
  np.testing.assert_array_equal(image_rules.grey_unit(one_bit), [[0.0, 1.0]])
  np.testing.assert_array_equal(image_rules.map_to_model_size(one_bit, (1, 2)), [[0, 255]])
  la = Image.fromarray(np.array([[[10, 255], [90, 0]]], np.uint8), "LA")
  np.testing.assert_array_equal(image_rules.map_to_model_size(la, (1, 2)), [[10, 90]])
  np.testing.assert_array_equal(image_rules.grey_unit(la), [[10 / 255, 90 / 255]])
  with pytest.raises(ValueError, match="float"):
    image_rules.map_to_model_size(Image.fromarray(np.ones((2, 2), np.float32)), (2, 2))


def test_16bit_map_round_trips_through_convert_and_evaluator(tmp_path):
  raw = sd.make_av(tmp_path / "raw", ("AVAD",), videos=1, num_frames=3)
  maps = raw / "annotations/AVAD/clip_00/maps"
  sixteen = np.zeros((60, 96), np.uint16)
  sixteen[10:20, 10:20] = 65535
  for k in (1, 2, 3):   # PNG bytes under the release's .jpg names (as found in the wild)
    Image.fromarray(sixteen).save(maps / f"eyeMap_{k:05d}.jpg", format="PNG")
  status, text = sd.convert_quietly("av", raw, tmp_path / "out")
  assert status == 0, text
  truth = shards.ShardStore(tmp_path / "out").ground_truth(0, 2)
  assert truth.map.max() == 255 and truth.map[0, 0] == 0   # 65535 means 255, at model size
  raw_map = release_ground_truth.StavisRawSource(raw, "avad").read_map("clip_00", 2)
  assert raw_map.max() == 1.0 and raw_map[15, 15] == 1.0
  shard_map = release_ground_truth.open_ground_truth(tmp_path / "out", "avad").read_map("clip_00", 2)
  np.testing.assert_array_equal(shard_map, raw_map)


# --- frame counts --------------------------------------------------------------

def test_frame_count_rule():
  assert release_files.reconcile_frame_counts({"in the fold list": 24, "maps": 24}, "v") == (24, "")
  kept, note = release_files.reconcile_frame_counts(
      {"in the fold list": 24, "frames": 25, "maps": 26}, "v")
  assert kept == 24 and "kept frames 1..24" in note
  with pytest.raises(release_files.ReleaseError, match="more than 2 frames apart") as error:
    release_files.reconcile_frame_counts({"in the fold list": 24, "maps": 27}, "/r/maps")
  assert error.value.kind == "count_mismatch" and error.value.path == "/r/maps"
  with pytest.raises(release_files.ReleaseError, match="24 frames, 0 maps: no maps"):
    release_files.reconcile_frame_counts({"frames": 24, "maps": 0}, "/r/maps")


def _edit_fold_lists(raw: pathlib.Path, changes: dict[str, int]) -> None:
  """Sets the listed frame counts of videos; the first list is rewritten as
  a Windows editor saves it (UTF-16 with BOM, CRLF)."""
  for i, path in enumerate(sorted((raw / "fold_lists").glob("AVAD_*.txt"))):
    lines = []
    for line in path.read_text().splitlines():
      name, count, fps = line.split()
      lines.append(f"{name} {changes.get(name, count)} {fps}")
    if i == 0:
      path.write_bytes("\r\n".join(lines + [""]).encode("utf-16"))
    else:
      path.write_text("\n".join(lines) + "\n")


def test_stavis_release_as_shipped_scores_the_same_raw_and_converted(tmp_path):
  """All-zero maps, fold lists a frame off both ways, v7.3 fixation files:
  convert exits 0 (no --skip_bad) and raw and converted ground truth give
  identical per-video scores."""
  raw = sd.make_av(tmp_path / "raw", ("AVAD",), videos=3, num_frames=NUM_FRAMES)
  annotations = raw / "annotations/AVAD"
  zero_map = annotations / "clip_00/maps/eyeMap_00002.jpg"
  Image.fromarray(np.zeros((60, 96), np.uint8)).save(zero_map, quality=95)
  _edit_fold_lists(raw, {"clip_01": NUM_FRAMES - 1, "clip_02": NUM_FRAMES + 1})
  for path in sorted((annotations / "clip_02").glob("fixMap_*.mat")):
    eye_map = scipy.io.loadmat(path)["eyeMap"]
    save_mat73(path, "eyeMap", eye_map.astype(np.float64))
  status, text = sd.convert_quietly("av", raw, tmp_path / "shards")
  assert status == 0, text
  manifest = manifest_lib.load_manifest(tmp_path / "shards")
  frames = {v.name: v.num_frames for v in manifest.videos}
  assert frames == {"clip_00": 6, "clip_01": 5, "clip_02": 6}
  assert manifest.videos[0].empty_map_frames == [2]
  notes = sorted((i["kind"], i["video"], i["fatal"]) for i in manifest.issues)
  assert notes == [("empty_map", "AVAD/clip_00", False),
                   ("frame_count_adjusted", "AVAD/clip_01", False),
                   ("frame_count_adjusted", "AVAD/clip_02", False)]
  assert "empty_map (note)" in text and str(zero_map) in text
  report = json.loads((tmp_path / "shards/conversion_report.json").read_text())
  assert (report["problems"], report["notes"]) == (0, 3)

  raw_source = release_ground_truth.open_ground_truth(raw, "avad")
  shard_source = release_ground_truth.open_ground_truth(tmp_path / "shards", "avad")
  for video, count in frames.items():
    assert raw_source.frame_ids(video) == shard_source.frame_ids(video) == list(
        range(1, count + 1))
    for frame in range(1, count + 1):
      np.testing.assert_array_equal(raw_source.read_fixations(video, frame),
                                    shard_source.read_fixations(video, frame))
  for fold in (1, 2, 3):
    assert raw_source.videos(fold) == shard_source.videos(fold)
  (tmp_path / "raw_link").symlink_to(raw)
  _write_predictions(raw_source, tmp_path / "pred", seed=3)
  folds = ["--fold", "1", "--fold", "2", "--fold", "3"]
  from_raw = _scores(tmp_path, "raw_link", "avad", *folds)
  from_shards = _scores(tmp_path, "shards", "avad", *folds)
  assert json.dumps(from_shards, sort_keys=True) == json.dumps(from_raw, sort_keys=True)
  for data in ("raw_link", "shards"):   # the cut is reported, not only logged
    notes = json.loads((tmp_path / f"metrics_{data}_avad.json").read_text())[
        "frame_count_notes"]
    assert sorted(notes) == ["clip_01", "clip_02"], data
    assert "5 in the fold list" in notes["clip_01"] and "kept frames 1..5" in notes["clip_01"]
    assert "7 in the fold list" in notes["clip_02"] and "kept frames 1..6" in notes["clip_02"]
  assert from_raw["folds"]["2"]["videos"]["clip_01"]["n_frames"] == 5
  assert from_raw["overall"]["n_frames"] == 6 + 5 + 6


def test_fold_list_far_off_is_refused_by_name(tmp_path, capsys):
  raw = sd.make_av(tmp_path / "raw", ("AVAD",), videos=3, num_frames=NUM_FRAMES)
  _edit_fold_lists(raw, {"clip_01": NUM_FRAMES + 3})
  status, text = sd.convert_quietly("av", raw, tmp_path / "out")
  assert status == 1
  frames_dir = raw / "video_frames/AVAD/clip_01"
  assert f"count_mismatch: {frames_dir}: 6 frames, 6 maps, 6 fixation files, " \
         f"9 in the fold list: more than 2 frames apart" in text
  with pytest.raises(ValueError, match="more than 2 frames apart"):
    release_ground_truth.StavisRawSource(raw, "avad").frame_ids("clip_01")
  predictions.save_prediction(tmp_path / "pred", "avad", "clip_01", 1, np.ones((4, 4)))
  code = evaluate.main(["--pred", str(tmp_path / "pred"), "--data", str(raw), "--dataset",
                        "avad", "--workers", "1", "--noprogress"])
  assert code == 2   # named, not a traceback
  assert f"{raw / 'annotations/AVAD/clip_01'}: " in capsys.readouterr().err


def test_dhf1k_avi_and_maps_a_frame_apart(tmp_path):
  raw = sd.make_dhf1k(tmp_path / "raw", "video", num_frames=NUM_FRAMES)
  for folder in ("maps", "fixation"):   # video 1: 5 maps for 6 AVI frames
    (raw / f"annotation/0001/{folder}/0006.png").unlink()
  status, text = sd.convert_quietly("dhf1k", raw, tmp_path / "out")
  assert status == 0, text
  manifest = manifest_lib.load_manifest(tmp_path / "out")
  assert {v.key: v.num_frames for v in manifest.videos} == {
      "DHF1K/1": 5, "DHF1K/2": 6, "DHF1K/601": 6, "DHF1K/701": 6}
  assert manifest.videos[0].num_records == 5   # frames 1..5, each with its ground truth
  [note] = manifest.issues
  assert note["kind"] == "frame_count_adjusted" and not note["fatal"]
  assert "6 decoded AVI frames, 5 maps, 5 fixation files" in note["detail"]
  raw_source = release_ground_truth.Dhf1kRawSource(raw)
  assert raw_source.frame_ids("0001") == [1, 2, 3, 4, 5]
  assert raw_source.frame_count_note("0001") == (
      "5 maps, 5 fixation files, 6 decoded AVI frames: kept frames 1..5, which all have")
  assert raw_source.frame_count_note("0002") == ""
  assert release_ground_truth.open_ground_truth(tmp_path / "out", "dhf1k").frame_ids("0001") == [
      1, 2, 3, 4, 5]


# --- names ------------------------------------------------------------------------

def _grey_png(path: pathlib.Path, value: int, hw=(12, 16)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(hw, value, np.uint8)).save(path)


def test_dhf1k_zero_padded_and_zero_based_names(tmp_path):
  """Extracted DHF1K frames: video 1 as maps/0001/0001.png with frames
  0001.png; video 2 numbered from 0 everywhere. Frame k holds value 40*k."""
  raw = tmp_path / "raw"
  for k in (1, 2, 3):
    _grey_png(raw / f"frames/1/{k:04d}.png", 40 * k)
    _grey_png(raw / f"maps/0001/{k:04d}.png", 40 * k)
    _grey_png(raw / f"fixation/0001/{k:04d}.png", 255)
    _grey_png(raw / f"frames/2/{k - 1}.png", 40 * k)
    _grey_png(raw / f"maps/2/{k - 1:04d}.png", 40 * k)
  status, text = sd.convert_quietly("dhf1k", raw, tmp_path / "out", image_format="png")
  assert status == 0, text
  store = shards.ShardStore(tmp_path / "out")
  videos = {v.key: v for v in store.manifest.videos}
  assert videos["DHF1K/1"].has_maps and videos["DHF1K/1"].has_fixations
  assert videos["DHF1K/2"].has_maps and not videos["DHF1K/2"].has_fixations
  for index in (0, 1):
    assert store.manifest.videos[index].num_frames == 3
    np.testing.assert_array_equal(store.frames_uint8(index, [1, 2, 3])[:, 0, 0, 0], [40, 80, 120])
    assert [store.ground_truth(index, k).map[0, 0] for k in (1, 2, 3)] == [40, 80, 120]
  assert len(store.ground_truth(0, 1).points) == 12 * 16
  renumbered = sorted(i["path"] for i in store.manifest.issues if i["kind"] == "renumbered")
  assert renumbered == [str(raw / "frames/2"), str(raw / "maps/2")]

  _grey_png(raw / "frames/3/1.png", 10)   # a train video without maps
  status, text = sd.convert_quietly("dhf1k", raw, tmp_path / "out2")
  assert status == 1
  assert f"missing_annotations: {raw / 'maps' / '3'}: train video 3 has no maps folder" in text
  _grey_png(raw / "frames/1/1.png", 10)   # 1.png next to 0001.png
  status, text = sd.convert_quietly("dhf1k", raw, tmp_path / "out3")
  assert status == 1
  assert f"ambiguous_name: {raw / 'frames/1'}/" in text and "both name frame 1" in text


def test_dhf1k_raw_reader_finds_unpadded_annotation_folders(tmp_path):
  raw = tmp_path / "raw"
  for k in (0, 1):   # annotation/1 (no padding), files numbered from 0
    _grey_png(raw / f"annotation/1/maps/{k}.png", 100 + k)
    _grey_png(raw / f"annotation/1/fixation/{k}.png", 255 * k)
  source = release_ground_truth.Dhf1kRawSource(raw)
  assert source.videos(None) == ["0001"]
  assert source.frame_ids("0001") == [1, 2]
  assert source.read_map("0001", 2)[0, 0] == 101 / 255
  assert source.read_fixations("0001", 1).sum() == 0
  assert source.read_fixations("0001", 2).sum() == 12 * 16
