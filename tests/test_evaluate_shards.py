"""`evaluate --data` on converted shards gives exactly the raw-release scores."""

import json
import pathlib
import pickle

import numpy as np
import pytest
import scipy.ndimage

from diffsal_jax.evaluation import evaluate
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import release_ground_truth
from diffsal_jax.evaluation import shard_ground_truth
from tests import synthetic_data

NUM_FRAMES = 6
AV_DATASETS = ("AVAD", "DIEM")   # Two sets: the reader must keep to its own.


def _write_predictions(source: ground_truth.GroundTruthSource,
                       pred_dir: pathlib.Path, seed: int) -> None:
  """Smooth random maps, smaller than the ground truth (so they get resized)."""
  rng = np.random.default_rng(seed)
  for video in source.videos(None):
    for frame in source.frame_ids(video):
      noise = scipy.ndimage.gaussian_filter(rng.random((30, 48)), 3.0)
      predictions.save_prediction(pred_dir, source.dataset, video, frame,
                                  noise)


@pytest.fixture(scope="module")
def dhf1k(tmp_path_factory):
  """DHF1K as released (AVIs + annotation/): 2 train, 1 val, 1 test video."""
  root = tmp_path_factory.mktemp("dhf1k")
  raw = synthetic_data.make_dhf1k(root / "raw", "video", NUM_FRAMES)
  status, log = synthetic_data.convert_quietly("dhf1k", raw, root / "shards")
  assert status == 0, log
  _write_predictions(release_ground_truth.Dhf1kRawSource(raw), root / "pred", seed=1)
  return root


@pytest.fixture(scope="module")
def av(tmp_path_factory):
  """STAViS packaging of AVAD and DIEM, 3 videos each, three folds."""
  root = tmp_path_factory.mktemp("av")
  raw = synthetic_data.make_av(root / "raw", AV_DATASETS, videos=3,
                               num_frames=NUM_FRAMES)
  status, log = synthetic_data.convert_quietly("av", raw, root / "shards")
  assert status == 0, log
  _write_predictions(release_ground_truth.StavisRawSource(raw, "avad"), root / "pred",
                     seed=2)
  return root


def _scores(root: pathlib.Path, data: str, dataset: str, *extra) -> dict:
  out = root / f"metrics_{data}_{dataset}"
  args = ["--pred", str(root / "pred"), "--data", str(root / data),
          "--dataset", dataset, "--workers", "1", "--noprogress",
          "--out", str(out), *extra]
  assert evaluate.main(args) == 0
  report = json.loads(out.with_suffix(".json").read_text())
  return {key: report[key] for key in ("folds", "overall", "nan_frames")}


def _assert_same_ground_truth(raw, shards, folds) -> None:
  for fold in folds:
    assert shards.videos(fold) == raw.videos(fold)
  for video in raw.videos(None):
    assert shards.frame_ids(video) == raw.frame_ids(video)
    for frame in raw.frame_ids(video):
      np.testing.assert_array_equal(shards.read_map(video, frame),
                                    raw.read_map(video, frame))
      np.testing.assert_array_equal(shards.read_fixations(video, frame),
                                    raw.read_fixations(video, frame))


def test_open_ground_truth_detects_shards(dhf1k, av):
  assert isinstance(release_ground_truth.open_ground_truth(dhf1k / "shards", "dhf1k"),
                    shard_ground_truth.ShardGroundTruth)
  assert isinstance(release_ground_truth.open_ground_truth(av / "raw", "avad"),
                    release_ground_truth.StavisRawSource)


def test_dhf1k_shards_hold_the_raw_ground_truth(dhf1k):
  raw = release_ground_truth.open_ground_truth(dhf1k / "raw", "dhf1k")
  shards = release_ground_truth.open_ground_truth(dhf1k / "shards", "dhf1k")
  # Train and val videos (maps released), not test video 701 (no maps).
  assert shards.videos(None) == ["0001", "0002", "0601"]
  _assert_same_ground_truth(raw, shards, folds=[None])
  with pytest.raises(ValueError, match="no folds"):
    shards.videos(1)


@pytest.mark.parametrize("dataset", ["avad", "diem"])
def test_av_shards_hold_the_raw_ground_truth_and_folds(av, dataset):
  raw = release_ground_truth.open_ground_truth(av / "raw", dataset)
  shards = release_ground_truth.open_ground_truth(av / "shards", dataset)
  assert shards.videos(None) == ["clip_00", "clip_01", "clip_02"]
  _assert_same_ground_truth(raw, shards, folds=[None, 1, 2, 3])


def test_source_survives_pickling_after_reading(av):
  """Workers get the source pickled; the open shard store stays behind."""
  shards = release_ground_truth.open_ground_truth(av / "shards", "avad")
  expected = shards.read_map("clip_01", 3)
  copy = pickle.loads(pickle.dumps(shards))
  np.testing.assert_array_equal(copy.read_map("clip_01", 3), expected)


def test_dhf1k_scores_match_raw(dhf1k):
  from_raw = _scores(dhf1k, "raw", "dhf1k")
  assert from_raw["overall"]["n_frames"] == 3 * NUM_FRAMES
  assert _scores(dhf1k, "shards", "dhf1k") == from_raw


def test_avad_fold_scores_match_raw(av):
  folds = ["--fold", "1", "--fold", "2", "--fold", "3"]
  from_raw = _scores(av, "raw", "avad", *folds)
  assert sorted(from_raw["folds"]) == ["1", "2", "3"]
  assert from_raw["overall"]["n_frames"] == 3 * NUM_FRAMES
  assert _scores(av, "shards", "avad", *folds) == from_raw


def test_folder_that_is_neither_is_named_in_the_error(tmp_path, capsys):
  (tmp_path / "pred").mkdir()
  neither = tmp_path / "not_a_dataset"
  neither.mkdir()
  code = evaluate.main(["--pred", str(tmp_path / "pred"), "--data",
                        str(neither), "--dataset", "avad"])
  assert code == 2
  error = capsys.readouterr().err
  assert str(neither / "manifest.json") in error
  assert str(neither / "annotations" / "AVAD") in error


def test_shards_of_the_other_family_are_refused(av, capsys):
  code = evaluate.main(["--pred", str(av / "pred"), "--data",
                        str(av / "shards"), "--dataset", "dhf1k"])
  assert code == 2
  error = capsys.readouterr().err
  assert str(av / "shards" / "manifest.json") in error
  assert "--dataset dhf1k" in error
