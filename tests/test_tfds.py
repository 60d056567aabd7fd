"""The OUT folder of `python -m data_prep convert` read as a TFDS dataset,
without TensorFlow: the same shards, the same values as the grain-side reader."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffsal_jax.data import manifest as manifest_lib
from diffsal_jax.data import shards
from diffsal_jax.data.prep import tfds_metadata
from tests import synthetic_data as sd

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dhf1k_out(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds_dhf1k")
  status, log = sd.convert_quietly("dhf1k", sd.make_dhf1k(root / "raw", "video", 12),
                                   root / "out")
  assert status == 0, log
  return root / "out"


@pytest.fixture(scope="module")
def av_out(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds_av")
  status, log = sd.convert_quietly("av", sd.make_av(root / "raw", num_frames=10), root / "out")
  assert status == 0, log
  return root / "out"


def _assert_split_matches_store(source, store: shards.ShardStore, keys: list[str]) -> None:
  """Every example of a TFDS split equals what ShardStore decodes for that frame."""
  manifest, index = store.manifest, store.manifest.index_of()
  expected = [(key, k) for key in keys for k in range(1, manifest.videos[index[key]].num_frames + 1)]
  assert len(source) == len(expected)
  for position, (key, k) in enumerate(expected):
    example = source[position]
    video = index[key]
    assert (example["video"].decode(), int(example["frame"])) == (key, k)
    np.testing.assert_array_equal(example["image"], store.frames_uint8(video, [k])[0])
    if manifest.videos[video].has_maps:
      truth = store.ground_truth(video, k)
      assert len(example["map"]) == 1 and example["map"][0].shape == (*manifest.image_hw, 1)
      np.testing.assert_array_equal(example["map"][0][..., 0], truth.map)
      np.testing.assert_array_equal(example["fixations"], truth.points)
      assert example["map_orig"] == [truth.map_orig]
    else:
      assert len(example["map"]) == 0 and len(example["map_orig"]) == 0
      assert example["fixations"].shape == (0, 2)


def test_dhf1k_reads_through_tfds_like_the_store(dhf1k_out):
  manifest = manifest_lib.load_manifest(dhf1k_out)
  builder = tfds.builder_from_directory(str(dhf1k_out))
  assert builder.info.name == "diffsal_dhf1k"
  assert set(builder.info.splits) == {"train", "val", "test"}
  assert builder.info.metadata["splits"] == manifest.splits
  store = shards.ShardStore(dhf1k_out)
  total = 0
  for split, keys in manifest.splits.items():
    info = builder.info.splits[split]
    frames = [manifest.videos[manifest.index_of()[k]].num_frames for k in keys]
    assert info.shard_lengths == frames
    _assert_split_matches_store(builder.as_data_source(split=split), store, keys)
    total += sum(frames)
  assert total == sum(v.num_frames for v in manifest.videos)
  assert "tensorflow" not in sys.modules


def test_av_folds_read_through_tfds_data_source(av_out, tmp_path):
  manifest = manifest_lib.load_manifest(av_out)
  # tfds.data_source finds a dataset as <data_dir>/<name>/<version>/; the
  # links inside OUT are relative, so a link to OUT (or a copy) works.
  data_dir = tmp_path / "data_dir"
  (data_dir / "diffsal_av").mkdir(parents=True)
  (data_dir / "diffsal_av" / tfds_metadata.VERSION).symlink_to(av_out)
  expected_splits = {f"fold{f}_{part}" for f in (1, 2, 3) for part in ("train", "test")}
  builder = tfds.builder_from_directory(str(av_out))
  assert set(builder.info.splits) == expected_splits
  assert builder.info.metadata["folds"] == manifest.folds
  assert set(manifest.folds) == {"1", "2", "3"}
  store = shards.ShardStore(av_out)
  for fold, parts in manifest.folds.items():
    for part, keys in parts.items():
      source = tfds.data_source("diffsal_av", split=f"fold{fold}_{part}", data_dir=data_dir,
                                download=False)
      order = manifest.index_of()
      _assert_split_matches_store(source, store, sorted(keys, key=order.__getitem__))
    # each fold's train and test lists hold every video once
    assert sorted(parts["train"] + parts["test"]) == sorted(v.key for v in manifest.videos)
  assert "tensorflow" not in sys.modules


def test_copy_of_out_still_reads(dhf1k_out, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(dhf1k_out, copy, symlinks=True)
  source = tfds.builder_from_directory(str(copy)).as_data_source(split="val")
  original = tfds.builder_from_directory(str(dhf1k_out)).as_data_source(split="val")
  assert len(source) == len(original) > 0
  np.testing.assert_array_equal(source[len(source) - 1]["image"],
                                original[len(original) - 1]["image"])
  assert os.path.realpath(copy / "tfds" / "val").startswith(str(copy))


def test_records_are_what_tfds_serializes(dhf1k_out):
  """shards.frame_record writes what TFDS's own serializer would (up to the
  order of the Example's map entries), and shards.decode_example reads both."""
  manifest = manifest_lib.load_manifest(dhf1k_out)
  features = tfds_metadata.frame_features(manifest)
  store = shards.ShardStore(dhf1k_out)
  for video in (0, len(manifest.videos) - 1):   # with maps (train), without (test)
    entry = manifest.videos[video]
    record = store.raw_records(video)[2]
    decoded = shards.decode_example(record)
    truth = store.ground_truth(video, 3) if entry.has_maps else None
    rebuilt = features.serialize_example({
        "image": bytes(decoded["image"][0]),
        "map": [bytes(m) for m in decoded["map"]],
        "map_orig": [truth.map_orig] if truth else [],
        "fixations": truth.points if truth else np.zeros((0, 2), np.int32),
        "video": entry.key, "frame": 3})
    # Protobuf may order the map entries differently: compare what they hold,
    # read by our decoder and by TFDS's.
    as_lists = lambda d: {k: [bytes(x) if isinstance(x, memoryview) else x for x in v]
                          for k, v in d.items()}
    assert as_lists(shards.decode_example(rebuilt)) == as_lists(decoded)
    assert len(rebuilt) == len(record)
    ours, theirs = (features.deserialize_example_np(r) for r in (record, rebuilt))
    for name in ("image", "fixations"):
      np.testing.assert_array_equal(ours[name], theirs[name])
    assert (ours["video"], ours["frame"]) == (theirs["video"], theirs["frame"])
    assert decoded["frame"] == [3] and bytes(decoded["video"][0]) == entry.key.encode()
  assert "tensorflow" not in sys.modules


def test_cli_convert_is_quiet_and_resume_rewrites_tfds(tmp_path):
  raw = sd.make_dhf1k(tmp_path / "raw", "frames", 9)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  command = [sys.executable, "-m", "data_prep", "convert", "--dataset", "dhf1k", "--src",
             str(raw), "--dst", str(out), "--height", "64", "--width", "96", "--workers", "1"]
  for extra in ([], ["--resume"]):
    run = subprocess.run(command + extra, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    chatter = run.stdout + run.stderr
    assert "absl" not in chatter and "tensorflow" not in chatter.lower(), chatter
  assert not list(out.glob(".*tmp-*")) and sorted(os.listdir(out / "tfds")) == [
      "test", "train", "val"]
  manifest = manifest_lib.load_manifest(out)
  source = tfds.builder_from_directory(str(out)).as_data_source(split="train")
  assert len(source) == sum(v.num_frames for v in manifest.videos
                            if v.key in manifest.splits["train"])
  verify = subprocess.run([sys.executable, "-m", "data_prep", "verify", str(out),
                           "--noprogress"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert verify.returncode == 0, verify.stdout + verify.stderr
