"""The HTML report of an evaluation, checked as files and in headless Chromium.

A tiny DHF1K-layout release with RGB frames is written here; its predictions
miss one video and two frames of another, which the report must list
instead of crashing.
"""

import json
import math
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.parse

import numpy as np
from PIL import Image
import pytest

from diffsal_jax.evaluation import evaluate
from diffsal_jax.evaluation import html_report
from diffsal_jax.evaluation import metrics
from diffsal_jax.data import release_files
from diffsal_jax.evaluation import predictions
from diffsal_jax.evaluation import release_ground_truth
from diffsal_jax.evaluation import scoring
from diffsal_jax.inference import predict_report
from diffsal_jax.reporting import panels
from diffsal_jax.reporting import svg
from tests import synthetic_data

H, W = 36, 64
FRAMES = 8


def _scene(rng, frame: int):
  """An RGB frame with a bright disc, its saliency map and fixations."""
  y, x = 10 + frame, 12 + 5 * frame
  yy, xx = np.mgrid[:H, :W]
  saliency = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 20.0)
  picture = np.zeros((H, W, 3), np.uint8)
  picture[..., 2] = 90
  picture[saliency > 0.5] = (250, 220, 40)
  fixations = np.zeros((H, W), bool)
  rows = np.clip(np.round(y + rng.normal(0, 2, 5)), 0, H - 1).astype(int)
  cols = np.clip(np.round(x + rng.normal(0, 2, 5)), 0, W - 1).astype(int)
  fixations[rows, cols] = True
  return picture, saliency, fixations


def _png(path: pathlib.Path, values: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if values.dtype != np.uint8:
    values = np.round(values * 255).astype(np.uint8)
  Image.fromarray(values).save(path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """(report folder, evaluation JSON) of `evaluate --report` on 5 videos:
  video 0005 without predictions, 0004 without frames 3 and 4."""
  root = tmp_path_factory.mktemp("report")
  rng = np.random.default_rng(0)
  for number in range(1, 6):
    video = f"{number:04d}"
    for frame in range(1, FRAMES + 1):
      picture, saliency, fixations = _scene(rng, frame)
      annotation = root / "data" / "annotation" / video
      _png(annotation / "maps" / f"{frame:04d}.png", saliency)
      _png(annotation / "fixation" / f"{frame:04d}.png",
           fixations.astype(float))
      _png(root / "data" / "frames" / str(number) / f"{frame}.png", picture)
      if number == 5 or (number == 4 and frame in (3, 4)):
        continue
      noise = (number - 1) * 0.2
      pred = np.clip((1 - noise) * saliency + noise * rng.random((H, W)), 0, 1)
      predictions.save_prediction(root / "pred", "dhf1k", video, frame, pred)
  out = root / "pred" / "metrics"
  status = evaluate.main(["--pred", str(root / "pred"), "--data",
                          str(root / "data"), "--dataset", "dhf1k",
                          "--workers", "1", "--out", str(out), "--noprogress",
                          "--report", str(root / "report"),
                          "--report_frames", "4", "--n_splits", "5"])
  assert status == 0
  return root / "report", json.loads(out.with_suffix(".json").read_text())


def _summary_cells(page: str) -> list[list[str]]:
  table = re.search(r'<table class="summary">(.*?)</table>', page, re.S)
  return [re.findall(r"<td>(.*?)</td>", row)
          for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)][1:]


def _pages(report: pathlib.Path) -> list[pathlib.Path]:
  return [report / "index.html", *sorted((report / "videos").glob("*.html"))]


def test_summary_table_equals_the_json_results(evaluated):
  report, results = evaluated
  (row,) = _summary_cells((report / "index.html").read_text())
  assert row[:5] == ["dhf1k", "all", "4", str(results["overall"]["n_frames"]),
                     str(results["overall"]["n_missing_frames"])]
  means = results["folds"]["all"]["mean"]
  assert [float(c) for c in row[5:]] == pytest.approx(
      [means[n] for n in metrics.METRIC_NAMES], abs=5e-5)
  saved = json.loads((report / "results.json").read_text())
  assert saved["datasets"]["dhf1k"]["overall"] == results["overall"]
  # The per-frame curves' numbers are the video's frames; they are kept in
  # the report's compact results.json, not in the indented metrics JSON.
  entry = saved["datasets"]["dhf1k"]["folds"]["all"]["videos"]["0004"]
  assert entry["per_frame"]["frame_ids"] == [1, 2, 5, 6, 7, 8]
  assert np.mean(entry["per_frame"]["cc"]) == pytest.approx(entry["cc"])
  assert entry["missing_frame_ids"] == [3, 4]
  assert "per_frame" not in results["folds"]["all"]["videos"]["0004"]


def test_missing_videos_and_frames_are_listed(evaluated):
  report, _ = evaluated
  index = (report / "index.html").read_text()
  assert "dhf1k, fold all: video 0005 has no prediction (8 annotated frames)" in index
  assert "dhf1k, fold all: video 0004: 2 annotated frames without prediction: 3, 4" in index
  page = (report / "videos" / "dhf1k_all_0004.html").read_text()
  assert "2 annotated frames had no prediction: 3, 4" in page


def test_every_referenced_image_exists_and_decodes(evaluated):
  report, _ = evaluated
  count = 0
  for page in _pages(report):
    for src in re.findall(r'<img src="([^"]+)"', page.read_text()):
      with Image.open(page.parent / urllib.parse.unquote(src)) as image:
        image.load()
        assert image.size[0] == 192
      count += 1
  # 4 scored videos x 4 strip frames x 4 panels.
  assert count == 4 * 4 * 4
  # Best and worst links point at pages that exist.
  for href in re.findall(r'<a href="(videos/[^"]+)"',
                         (report / "index.html").read_text()):
    assert (report / href).is_file()


def test_damaged_prediction_is_refused_by_name(evaluated, capsys):
  report, _ = evaluated
  root = report.parent
  damaged = root / "damaged"
  shutil.copytree(root / "pred" / "dhf1k", damaged / "dhf1k")
  bad = damaged / "dhf1k" / "0003" / "00002.png"
  bad.write_bytes(bad.read_bytes()[:40])
  status = evaluate.main(["--pred", str(damaged), "--data", str(root / "data"),
                          "--dataset", "dhf1k", "--workers", "1",
                          "--noprogress", "--report", str(root / "report2")])
  assert status == 2
  error = capsys.readouterr().err
  assert f"{bad} cannot be read as an image" in error and "delete it" in error
  assert not (root / "report2" / "index.html").exists()


def test_release_without_frames_gets_one_note_and_grey_panels(evaluated):
  report, _ = evaluated
  root = report.parent
  shutil.copytree(root / "data" / "annotation",
                  root / "annotation_only" / "annotation")
  status = evaluate.main(["--pred", str(root / "pred"), "--data",
                          str(root / "annotation_only"), "--dataset", "dhf1k",
                          "--workers", "1", "--noprogress", "--out",
                          str(root / "annotation_only" / "m"), "--n_splits",
                          "2", "--report_frames", "1", "--report",
                          str(root / "report3")])
  assert status == 0
  index = (root / "report3" / "index.html").read_text()
  assert index.count("no video frames") == 1
  assert "dhf1k: 4 videos have no video frames in the ground truth" in index
  with Image.open(root / "report3" / "videos" / "dhf1k_all_0001" /
                  "00001_frame.jpg") as image:
    assert np.ptp(np.asarray(image)) < 10   # grey


def test_two_datasets_get_a_mean_row_and_shared_conventions(evaluated,
                                                          tmp_path):
  report, _ = evaluated
  root = report.parent
  source = release_ground_truth.Dhf1kRawSource(root / "data")
  preds = {None: predictions.PredictionDir(root / "pred", "dhf1k")}
  options = scoring.EvalOptions.for_dataset("dhf1k", n_splits=2)
  first = evaluate.evaluate(source, list(preds.items()), options,
                            progress=False)
  second = evaluate.evaluate(source, list(preds.items()), options,
                             videos=["0001", "0002"], progress=False)
  second["dataset"] = "other"
  index = html_report.write_report(
      [html_report.Evaluation(first, source, preds),
       html_report.Evaluation(second, source, preds)], tmp_path / "r",
      frames_per_video=1)
  page = index.read_text()
  rows = _summary_cells(page)
  assert [r[0] for r in rows] == ["dhf1k", "other", "mean of the datasets"]
  expected = (first["overall"]["mean"]["cc"] +
              second["overall"]["mean"]["cc"]) / 2
  assert float(rows[2][5]) == pytest.approx(expected, abs=5e-5)
  assert page.count("Conventions:") == 1   # one text, shared by both
  assert (tmp_path / "r" / "videos" / "other_all_0002.html").is_file()


def test_plot_ticks_of_equal_or_tiny_ranges_end():
  assert svg.nice_ticks(0.3, math.nextafter(0.3, 1.0)) == [0.1, 0.2, 0.3, 0.4,
                                                            0.5]
  assert svg.nice_ticks(0.2476, 1.0) == [0.2, 0.4, 0.6, 0.8, 1.0]
  assert svg.nice_ticks(math.nan, 1.0) == []


def test_main_refuses_report_outside_evaluate_mode(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "diffsal_jax.main", "--config=configs/demo.py",
       f"--workdir={tmp_path}", f"--report={tmp_path / 'r'}"],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert "--report belongs to --mode=evaluate" in result.stderr
  assert not any(tmp_path.iterdir())


def test_strip_frames_are_evenly_spaced():
  assert panels.evenly_spaced(list(range(1, 101)), 4) == [1, 34, 67, 100]
  assert panels.evenly_spaced([3, 5], 6) == [3, 5]


_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const bad = [...document.images].filter(i => !i.complete || !i.naturalWidth);
  console.log("REPORT-CHECK images=" + document.images.length + " failed=" +
              bad.map(i => i.getAttribute("src")).join(","));
});
</script>"""


def _browser() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  pytest.skip("no Chromium on this machine (.ci/run installs Debian's "
              "`chromium` where apt-get is available)")


def _open_in_browser(browser: str, page: pathlib.Path, screenshot: pathlib.Path
                     ) -> list[str]:
  """Loads `page` (plus a script that reports undecoded images) headless;
  returns the console lines Chromium logged."""
  checked = page.with_name(f"checked_{page.name}")
  checked.write_text(page.read_text().replace("</body>", _IMAGE_CHECK +
                                              "</body>"))
  try:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
         "--virtual-time-budget=5000", f"--screenshot={screenshot}",
         "--window-size=1200,1600", checked.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
  finally:
    checked.unlink()
  assert result.returncode == 0, result.stderr[-2000:]
  return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.parametrize("page", ["index.html", "videos/dhf1k_all_0001.html"])
def test_report_renders_in_headless_chromium(evaluated, tmp_path, page):
  browser = _browser()
  report, _ = evaluated
  screenshot = tmp_path / "screenshot.png"
  console = _open_in_browser(browser, report / page, screenshot)
  checks = [line for line in console if "REPORT-CHECK" in line]
  others = [line for line in console if "REPORT-CHECK" not in line]
  assert not others, f"console messages: {others}"
  images = len(re.findall(r"<img ", (report / page).read_text()))
  assert len(checks) == 1 and f"images={images} failed=\"" in checks[0], checks
  with Image.open(screenshot) as image:
    pixels = np.asarray(image.convert("RGB"), np.float32)
  assert pixels.shape[:2] == (1600, 1200)
  # Not blank: text, tables and pictures give many distinct shades.
  assert pixels.std() > 10
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_prediction_report_lists_failed_inputs_and_links_outputs(tmp_path):
  frame = np.zeros((20, 30, 3), np.uint8)
  saliency = np.full((20, 30), 128, np.uint8)
  video_dir = tmp_path / "out" / "a b#1"
  summary = {"frames": 3, "fps": 25.0, "duration": 0.12, "size_hw": [20, 30],
             "maps": str(video_dir / "maps"),
             "overlay": str(video_dir / "overlay.mp4"),
             "corrections": ["rotated by its display matrix (90 degrees)"]}
  index = predict_report.write_report(
      tmp_path / "report", [("a b#1", summary, {2: (frame, saliency)})],
      ["broken.mp4: cannot decode"])
  page = index.read_text()
  assert "broken.mp4: cannot decode" in page
  assert "rotated by its display matrix" in page
  assert 'href="../out/a%20b%231/overlay.mp4"' in page
  (src,) = set(re.findall(r'<img src="([^"]+)"', page)) & {
      "a%20b%231/00002_overlay.jpg"}
  with Image.open(index.parent / urllib.parse.unquote(src)) as image:
    assert image.size == (192, 128)


def test_prediction_strip_frames_spread_over_the_video():
  # predict's strip: frame numbers 1..N of the input
  assert panels.evenly_spaced(range(1, 11), 4) == [1, 4, 7, 10]
  assert panels.evenly_spaced(range(1, 3), 6) == [1, 2]
  assert panels.evenly_spaced(range(1, 1), 6) == []


def test_raw_releases_give_their_frames(tmp_path):
  """DHF1K: decoded from video/NNN.AVI; STAViS: video_frames/ JPEGs, None
  when a video has no frames folder."""
  dhf1k = release_ground_truth.Dhf1kRawSource(
      synthetic_data.make_dhf1k(tmp_path / "dhf1k", "video", num_frames=8))
  video = dhf1k.videos(None)[0]
  first, fifth = dhf1k.read_frames(video, [1, 5])
  assert first.shape == fifth.shape == (60, 96, 3) and first.dtype == np.uint8
  assert np.abs(first.astype(int) - fifth.astype(int)).max() > 50  # it moves
  np.testing.assert_array_equal(dhf1k.read_frames(video, [5])[0], fifth)
  with pytest.raises(release_files.ReleaseError, match="has no frame 9"):
    dhf1k.read_frames(video, [9])
  root = synthetic_data.make_av(tmp_path / "av", datasets=("AVAD",), videos=2,
                                num_frames=6)
  avad = release_ground_truth.StavisRawSource(root, "avad")
  with_frames, without = avad.videos(None)
  (picture,) = avad.read_frames(with_frames, [3])
  assert picture.shape == (60, 96, 3)
  shutil.rmtree(root / "video_frames" / "AVAD" / without)
  assert avad.read_frames(without, [3]) is None
