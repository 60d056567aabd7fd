"""Tests of the evaluation CLI on tiny raw datasets written here."""

import json
import pathlib

import numpy as np
from PIL import Image
import pytest
import scipy.io

from diffsal_jax.evaluation import evaluate
from diffsal_jax.evaluation import scoring
from diffsal_jax.evaluation import report as report_lib
from diffsal_jax.evaluation import metrics
from diffsal_jax.evaluation import ground_truth
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import release_ground_truth

H, W = 24, 32


def _blob_map(rng, shape=(H, W)):
  """A smooth map with one random blob, and 6 fixated pixels near it."""
  y, x = rng.uniform(4, shape[0] - 4), rng.uniform(4, shape[1] - 4)
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  saliency = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18.0)
  fixations = np.zeros(shape, bool)
  rows = np.clip(np.round(y + rng.normal(0, 2, 6)), 0, shape[0] - 1)
  cols = np.clip(np.round(x + rng.normal(0, 2, 6)), 0, shape[1] - 1)
  fixations[rows.astype(int), cols.astype(int)] = True
  return saliency, fixations


def _save_png(path: pathlib.Path, values: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.round(values * 255).astype(np.uint8)).save(path)


def _noisy_prediction(rng, saliency):
  return np.clip(0.7 * saliency + 0.3 * rng.random(saliency.shape), 0, 1)


@pytest.fixture(scope="module")
def dhf1k(tmp_path_factory):
  """DHF1K release layout: 3 videos of 2, 3 and 4 frames; predictions in the
  published layout (video and frame without zero padding) and ours."""
  root = tmp_path_factory.mktemp("dhf1k")
  rng = np.random.default_rng(0)
  truth = {}
  for number, n_frames in [(1, 2), (2, 3), (3, 4)]:
    video = f"{number:04d}"
    for frame in range(1, n_frames + 1):
      saliency, fixations = _blob_map(rng)
      annotation = root / "data" / "annotation" / video
      _save_png(annotation / "maps" / f"{frame:04d}.png", saliency)
      _save_png(annotation / "fixation" / f"{frame:04d}.png",
                fixations.astype(float))
      pred = _noisy_prediction(rng, saliency)
      _save_png(root / "published" / str(number) / f"{frame}.png", pred)
      predictions.save_prediction(root / "ours", "dhf1k", video, frame, pred)
      truth[video, frame] = (saliency, fixations, pred)
  return root, truth


def _run_cli(args, out: pathlib.Path) -> dict:
  assert evaluate.main([*args, "--out", str(out), "--noprogress"]) == 0
  assert out.with_suffix(".csv").is_file()
  return json.loads(out.with_suffix(".json").read_text())


def _expected_video_means(truth, video, metric, gt_from_png=True):
  values = []
  for (name, _), (saliency, fixations, pred) in sorted(truth.items()):
    if name != video:
      continue
    quantised = np.round(saliency * 255) / 255 if gt_from_png else saliency
    pred = np.round(pred * 255) / 255
    target = fixations if metric is metrics.nss else quantised
    values.append(metric(pred, target))
  return float(np.mean(values))


def test_dhf1k_published_and_ours_layouts_agree_with_direct_metrics(dhf1k):
  root, truth = dhf1k
  data = str(root / "data")
  published = _run_cli(["--pred", str(root / "published"), "--data", data,
                        "--dataset", "dhf1k", "--workers", "1"],
                       root / "out_published")
  ours = _run_cli(["--pred", str(root / "ours"), "--data", data,
                   "--dataset", "dhf1k", "--workers", "1"], root / "out_ours")
  videos = published["folds"]["all"]["videos"]
  assert sorted(videos) == ["0001", "0002", "0003"]
  assert [videos[v]["n_frames"] for v in sorted(videos)] == [2, 3, 4]
  for video in videos:
    for name, function in [("cc", metrics.cc), ("sim", metrics.sim),
                           ("kld", metrics.kld), ("nss", metrics.nss)]:
      expected = _expected_video_means(truth, video, function)
      assert videos[video][name] == pytest.approx(expected, abs=1e-9)
      # Our writer scales by the max: the metrics must not change.
      assert ours["folds"]["all"]["videos"][video][name] == pytest.approx(
          expected, abs=2e-2)
    for name in ("auc_judd", "auc_borji", "sauc"):
      assert 0.6 < videos[video][name] <= 1.0
  # Mean over videos, not over frames (videos have 2, 3, 4 frames).
  cc_means = [videos[v]["cc"] for v in sorted(videos)]
  assert published["overall"]["mean"]["cc"] == pytest.approx(
      np.mean(cc_means))
  assert published["options"]["sauc_other"] == "dhf1k"
  assert published["options"]["postprocess"] == "none"


def test_dhf1k_two_workers_give_the_same_scores(dhf1k):
  root, _ = dhf1k
  args = ["--pred", str(root / "published"), "--data", str(root / "data"),
          "--dataset", "dhf1k"]
  one = _run_cli([*args, "--workers", "1"], root / "w1")
  two = _run_cli([*args, "--workers", "2"], root / "w2")
  assert one["folds"] == two["folds"]  # Per-frame seeds, not per worker.


@pytest.fixture(scope="module")
def avad(tmp_path_factory):
  """STAViS layout for AVAD: 4 videos, fold k tests video k (fold 3 also
  tests video 4, which has no predictions); video 2's frame 2 has no
  fixations; predictions in diff_sal's split<k>_results jpg layout and ours."""
  root = tmp_path_factory.mktemp("avad")
  rng = np.random.default_rng(1)
  videos = {"v1": 3, "v2": 3, "v3": 2, "v4": 2}
  annotations = root / "data" / "annotations" / "AVAD"
  lists = root / "data" / "fold_lists"
  lists.mkdir(parents=True)
  for fold, names in [(1, ["v1"]), (2, ["v2"]), (3, ["v3", "v4"])]:
    lines = [f"{name} {videos[name]} 25" for name in names]
    (lists / f"AVAD_list_test_{fold}_fps.txt").write_text("\n".join(lines))
    others = [f"{n} {c} 25" for n, c in videos.items() if n not in names]
    (lists / f"AVAD_list_train_{fold}_fps.txt").write_text("\n".join(others))
  truth = {}
  for index, (video, n_frames) in enumerate(videos.items(), 1):
    # One extra annotated frame beyond the listed count must be ignored.
    for frame in range(1, n_frames + 2):
      saliency, fixations = _blob_map(rng)
      if (video, frame) == ("v2", 2):
        fixations[:] = False
      _save_png(annotations / video / "maps" / f"eyeMap_{frame:05d}.jpg",
                saliency)
      scipy.io.savemat(annotations / video / f"fixMap_{frame:05d}.mat",
                       {"eyeMap": fixations.astype(np.float64)})
      pred = _noisy_prediction(rng, saliency)
      truth[video, frame] = (saliency, fixations, pred)
      if video == "v4":
        continue
      published = (root / "published" / f"split{index}_results" / "avad" /
                   video / f"pred_sal_{frame:06d}.jpg")
      _save_png(published, pred)
      predictions.save_prediction(root / "ours", "avad", video, frame, pred)
  return root, truth


def test_av_published_layout_folds_nan_frames_and_missing_videos(avad):
  root, _ = avad
  report = _run_cli(["--pred", str(root / "published"), "--data",
                     str(root / "data"), "--dataset", "avad",
                     "--workers", "1"], root / "out_published")
  folds = report["folds"]
  assert sorted(folds) == ["1", "2", "3"]
  assert list(folds["3"]["videos"]) == ["v3"]
  assert folds["3"]["missing_videos"] == ["v4"]
  # v4's two listed frames count as annotated frames without prediction.
  assert folds["3"]["n_missing_frames"] == 2
  assert report["overall"]["n_missing_frames"] == 2
  assert folds["2"]["videos"]["v2"]["n_frames"] == 3  # Frame 4 unlisted.
  assert report["unmatched_prediction_frames"] == 3  # Frame n+1 of v1-v3.
  # v2 frame 2 has no fixations: NaN for the fixation-based metrics only.
  for name in ("nss", "auc_judd", "auc_borji", "sauc"):
    assert report["nan_frames"][name] == 1
  for name in ("cc", "sim", "kld"):
    assert report["nan_frames"][name] == 0
  assert np.isfinite(folds["2"]["videos"]["v2"]["nss"])
  pooled = [folds[k]["videos"][v]["cc"] for k in folds
            for v in folds[k]["videos"]]
  assert report["overall"]["mean"]["cc"] == pytest.approx(np.mean(pooled))
  assert report["options"]["sauc_other"] == "stavis"
  assert report["options"]["postprocess"] == "stavis"


def test_av_ours_layout_with_fold_option_matches_direct_metrics(avad):
  root, truth = avad
  report = _run_cli(["--pred", str(root / "ours"), "--data",
                     str(root / "data"), "--dataset", "avad", "--fold", "1",
                     "--fold", "2", "--postprocess", "none", "--workers", "1"],
                    root / "out_ours")
  assert sorted(report["folds"]) == ["1", "2"]
  source = release_ground_truth.open_ground_truth(root / "data", "avad")
  frames = [(v, f) for (v, f) in truth if v == "v1" and f <= 3]
  expected = []
  for video, frame in frames:
    pred = ground_truth.read_grey(root / "ours" / "avad" / video /
                                 f"{frame:05d}.png")
    expected.append(metrics.cc(pred, source.read_map(video, frame)))
  assert report["folds"]["1"]["videos"]["v1"]["cc"] == pytest.approx(
      np.mean(expected), abs=1e-9)


def test_stavis_other_map_is_video_union_minus_own_fixations():
  own = np.zeros((4, 5), bool)
  own[1, 1] = own[2, 2] = True
  other = np.zeros((4, 5), bool)
  other[2, 2] = other[3, 4] = True
  union = own | other
  result = scoring.stavis_other_map(union, own)
  assert result.sum() == 1 and result[3, 4]


def test_dhf1k_other_map_pools_ten_other_frames_never_its_own():
  shape = (8, 8)
  pool = [(shape, np.array([i], np.int32)) for i in range(40)]
  rng = np.random.default_rng(0)
  for own in (0, 17, 39):
    other = scoring.dhf1k_other_map(pool, own, 10, rng, shape)
    assert other.sum() == 10
    assert not other.ravel()[own]
  # Frames of another size are rescaled: pixel (1, 1) of 4x4 -> (2, 2).
  mixed = [(shape, np.array([0], np.int32)), ((4, 4), np.array([5]))]
  other = scoring.dhf1k_other_map(mixed, 0, 10, rng, shape)
  assert other.sum() == 1 and other[3, 3]


def test_resolve_folds_rules(tmp_path):
  for k in (1, 2):
    (tmp_path / f"split{k}_results").mkdir()
  assert evaluate.resolve_folds([str(tmp_path)], None, "avad") == [
      (1, tmp_path / "split1_results"), (2, tmp_path / "split2_results")]
  assert evaluate.resolve_folds([str(tmp_path)], [2], "avad") == [
      (2, tmp_path / "split2_results")]
  assert evaluate.resolve_folds([str(tmp_path)] * 2, None, "avad") == [
      (1, tmp_path), (2, tmp_path)]
  with pytest.raises(ValueError, match="DHF1K has no folds"):
    evaluate.resolve_folds([str(tmp_path)], [1], "dhf1k")


def test_diem_uses_one_fold_list_for_every_fold(tmp_path):
  (tmp_path / "annotations" / "DIEM").mkdir(parents=True)
  (tmp_path / "fold_lists").mkdir()
  (tmp_path / "fold_lists" / "DIEM_list_test_fps.txt").write_text(
      "clip_a 10 30\nclip_b 12 30\n")
  source = release_ground_truth.open_ground_truth(tmp_path, "diem")
  assert source.videos(1) == source.videos(3) == ["clip_a", "clip_b"]


def test_cli_errors_name_the_missing_path(tmp_path, capsys):
  code = evaluate.main(["--pred", str(tmp_path), "--data",
                        str(tmp_path / "nowhere"), "--dataset", "dhf1k"])
  assert code == 2
  assert str(tmp_path / "nowhere" / "annotation") in capsys.readouterr().err


def test_cli_help_explains_layouts(capsys):
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(["--help"])
  assert exit_info.value.code == 0
  assert "pred_sal_%06d.jpg" in capsys.readouterr().out


def test_cli_several_values_repeat_the_flag(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:  # argparse's nargs spelling
    evaluate.main(["--pred", str(tmp_path), str(tmp_path), "--data",
                   str(tmp_path), "--dataset", "avad"])
  assert exit_info.value.code == 2
  assert "repeat it for several" in capsys.readouterr().err


# --- In-memory sources: edge cases, missing frames, subset runs ------------


class _MemorySource(ground_truth.GroundTruthSource):
  dataset = "dhf1k"

  def __init__(self, frames: dict[str, dict[int, tuple]]):
    self.frames = frames  # video -> frame -> (map, fixations)

  def videos(self, fold):
    return sorted(self.frames)

  def frame_ids(self, video):
    return sorted(self.frames[video])

  def read_map(self, video, frame_id):
    return self.frames[video][frame_id][0]

  def read_fixations(self, video, frame_id):
    return self.frames[video][frame_id][1]


class _MemoryPredictions(predictions.PredictionSource):
  def __init__(self, maps: dict[tuple[str, int], np.ndarray]):
    self.maps = maps

  def frame_ids(self, video):
    return sorted(f for v, f in self.maps if v == video)

  def read(self, video, frame_id):
    return self.maps[video, frame_id]


@pytest.fixture(scope="module")
def memory_set():
  rng = np.random.default_rng(5)
  frames, preds = {}, {}
  for video in ("a", "b", "c", "d"):
    frames[video] = {}
    for frame in (1, 2, 3):
      saliency, fixations = _blob_map(rng)
      frames[video][frame] = (saliency, fixations)
      preds[video, frame] = _noisy_prediction(rng, saliency)
  return _MemorySource(frames), preds


def _evaluate(source, preds, **options):
  return evaluate.evaluate(
      source, [(None, _MemoryPredictions(preds))],
      scoring.EvalOptions(n_splits=20, **options), progress=False)


def test_subset_run_gives_the_full_runs_per_video_scores(memory_set):
  source, preds = memory_set
  full = _evaluate(source, preds)["folds"]["all"]["videos"]
  assert sorted(full) == ["a", "b", "c", "d"]
  picked = _evaluate(source, preds, n_other_frames=3)
  assert picked["folds"]["all"]["videos"]["b"] != full["b"]  # Option used.
  # --videos b, and a prediction folder holding only b and c.
  only_b = evaluate.evaluate(
      source, [(None, _MemoryPredictions(preds))],
      scoring.EvalOptions(n_splits=20), videos=["b"], progress=False)
  assert only_b["folds"]["all"]["videos"]["b"] == full["b"]
  b_and_c = {k: v for k, v in preds.items() if k[0] in ("b", "c")}
  subset = _evaluate(source, b_and_c)["folds"]["all"]["videos"]
  assert subset["b"] == full["b"] and subset["c"] == full["c"]
  stavis = _evaluate(source, preds, sauc_other="stavis")
  stavis_c = _evaluate(source, b_and_c, sauc_other="stavis")
  assert stavis_c["folds"]["all"]["videos"]["c"] == (
      stavis["folds"]["all"]["videos"]["c"])


def test_annotated_frames_without_prediction_are_counted(memory_set,
                                                         tmp_path, capsys):
  source, preds = memory_set
  # a: frame 2 missing; d: no prediction at all (3 annotated frames).
  partial = {k: v for k, v in preds.items()
             if k != ("a", 2) and k[0] != "d"}
  report = _evaluate(source, partial)
  fold = report["folds"]["all"]
  assert fold["videos"]["a"]["n_frames"] == 2
  assert fold["videos"]["a"]["n_missing_frames"] == 1
  assert fold["videos"]["b"]["n_missing_frames"] == 0
  assert fold["missing_videos"] == ["d"]
  assert fold["n_missing_frames"] == 4  # 1 of a + 3 of d.
  assert report["overall"]["n_missing_frames"] == 4
  assert "| all | 3 | 8 | 4 |" in (
      report_lib.markdown_table(report))
  paths = report_lib.write_reports(report, tmp_path / "out")
  rows = paths[1].read_text().splitlines()
  assert rows[0].startswith("fold,video,n_frames,n_missing_frames,cc")
  assert rows[1].startswith("all,a,2,1,")
  assert "all,d,0,3,,,,,,," in rows
  assert json.loads(paths[0].read_text())["overall"]["n_missing_frames"] == 4
  report_lib.warn_about(report)
  assert "4 annotated frames have no prediction" in capsys.readouterr().err


def test_blank_prediction_frames_follow_the_edge_case_option(memory_set):
  source, preds = memory_set
  blank = dict(preds)
  blank["a", 2] = np.zeros((H, W))
  mit = _evaluate(source, blank)
  skip = _evaluate(source, blank, edge_cases="nan")
  # MIT: SIM of the blank frame is 0 and counts; CC, NSS, AUC-B, sAUC NaN.
  assert mit["nan_frames"] == {"cc": 1, "sim": 0, "kld": 0, "nss": 1,
                               "auc_judd": 0, "auc_borji": 1, "sauc": 1}
  assert skip["nan_frames"]["sim"] == 1
  video_mit = mit["folds"]["all"]["videos"]["a"]
  video_skip = skip["folds"]["all"]["videos"]["a"]
  assert video_skip["sim"] == pytest.approx(np.mean(
      [metrics.sim(preds["a", f], source.read_map("a", f)) for f in (1, 3)]))
  assert video_mit["sim"] == pytest.approx(video_skip["sim"] * 2 / 3)
  # A blank map scores AUC-J 0.5 in both; the STAViS post-processing turns
  # it into NaN (0 / 0): every metric skips that frame, as STAViS does.
  stavis = _evaluate(source, blank, postprocess="stavis")
  assert set(stavis["nan_frames"].values()) == {1}


def test_stavis_postprocess_matches_postprocess_map():
  pred = np.zeros((20, 20))
  pred[5, 5], pred[12, 14] = 0.5, 0.25
  out = scoring.stavis_postprocess(pred)
  # Scaled to max 1 (0.5 -> 1, 0.25 -> 0.5), min-max, 13x13 Gaussian sigma 2
  # (mirrored borders): the other peak is 7 rows away, beyond the radius 6.
  kernel = np.exp(-np.arange(-6, 7) ** 2 / 8.0)
  kernel /= kernel.sum()
  assert out[5, 5] == pytest.approx(kernel[6] ** 2, abs=1e-15)
  assert out[12, 14] == pytest.approx(0.5 * kernel[6] ** 2, abs=1e-15)
  assert np.isnan(scoring.stavis_postprocess(np.zeros((4, 4)))).all()
  np.testing.assert_allclose(
      scoring.stavis_postprocess(np.full((6, 6), 0.2)), 0.5, atol=1e-15)
