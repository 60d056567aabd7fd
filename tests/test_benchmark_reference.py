"""The published code's side of the benchmark (`train_step --reference`):
the child process, its protocol and the ratios, on a stand-in checkout.

The whole command (our tiny model against the stand-in, in one run) is
tests/test_docs_commands.py's `bench_train_step`.
"""

import sys

import pytest

from tests import published_standin
from tools.benchmarks import published_worker

pytest.importorskip("torch", reason="the published code's side needs torch "
                    "(pip install -e .[torch])")

SHAPE = (4, 32, 64, 2, 16, 32)   # clip, height, width, audio patches, mel


def test_worker_times_train_and_sampler_calls_in_turn(tmp_path):
  root = published_standin.write_standin(tmp_path / "ref")
  worker = published_worker.PublishedWorker(
      str(root), batch=2, shape=SHAPE, threads=1, log_path=str(tmp_path / "log"))
  assert worker.info["threads"] == 1 and worker.info["params_m"] > 0
  turns = published_worker.Turns(worker)
  train, sample = turns("train"), turns("sample", 4)
  for _ in range(3):
    train()
    sample()
  peak = worker.close()["peak_rss_gb"]
  assert set(turns.results) == {"train", "sample_4"}
  for result in turns.results.values():
    assert len(result["times_s"]) == 3 and result["median_s"] > 0
  assert 0.1 < peak < 8


def test_no_worker_means_no_turns():
  assert published_worker.Turns(None)("train") is None


def test_sampler_steps_follow_the_published_visits():
  one, four = (published_worker.sampler_steps(n) for n in (1, 4))
  assert [s[0] for s in one] == [0] and one[0][2] is None
  assert [s[0] for s in four] == [750, 500, 250, 0]
  assert four[0][1] < four[1][1] < four[2][1] < four[3][1] < 1   # abar grows
  assert four[0][2] == four[1][1] and four[-1][2] is None


def test_a_wrong_checkout_is_named_with_the_fix(tmp_path):
  with pytest.raises(RuntimeError, match=r"(?s)model.py is missing: --reference "
                     r"must point at a checkout.*its log is .*log"):
    published_worker.PublishedWorker(str(tmp_path), batch=1, shape=SHAPE,
                                     threads=1, log_path=str(tmp_path / "log"))


def test_ratios_are_ours_over_published():
  ours = {"train": {"median_s": 3.0}, "rss_peak_gb": 6.0,
          "sampler": [{"steps": 1, "median_s": 1.0}, {"steps": 4, "median_s": 2.0}]}
  published = {"torch": "2.x", "threads": 2, "cpu": "Some CPU (avx2)",
               "train": {"median_s": 6.0}, "sample_1": {"median_s": 4.0},
               "peak_rss_gb": 8.0}
  rows = dict(published_worker.comparison_rows(ours, published))
  assert rows["train step: ours / published"].endswith("= **0.50x**")
  assert rows["inference, 1 DDIM step(s): ours / published"].endswith("**0.25x**")
  assert "inference, 4 DDIM step(s): ours / published" not in rows
  assert rows["peak host memory: ours / published"].endswith("**0.75x**")
  assert "Some CPU (avx2)" in rows["published code (same run)"]


def test_train_and_sampler_calls_set_their_own_mode(tmp_path, monkeypatch):
  """Calls taken in turn: each train step runs in train mode (BatchNorm
  statistics, dropout, DropPath) and each sampler call in eval mode."""
  from tools import published_reference as pr
  root = published_standin.write_standin(tmp_path / "ref")
  # The checkout's top-level packages (models, util) and its sys.path entry
  # stay with this test.
  monkeypatch.setattr(sys, "path", list(sys.path))
  before = set(sys.modules)
  for name in [n for n in sys.modules if n.split(".")[0] in ("models", "util")]:
    monkeypatch.delitem(sys.modules, name)
  ref = pr.load_reference(root)
  modes = []
  ref["model"].decoder_net.register_forward_pre_hook(
      lambda module, args: modes.append(module.training))
  data = pr.random_inputs(batch=1, clip_len=4, image_size=(32, 64), audio_patches=2,
                          audio_size=(16, 32), device="cpu")
  train = pr.train_step_call(ref, data, dtype="float32", device="cpu")
  sample = pr.sampler_call(ref, data, published_worker.sampler_steps(1), device="cpu")
  for call in (sample, train, sample, train):
    call()
  for name in set(sys.modules) - before:
    if name.split(".")[0] in ("models", "util"):
      del sys.modules[name]
  assert modes == [False, True, False, True]
