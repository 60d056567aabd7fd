"""tools/device_check.py: a CPU dry run with the tiny model (so the GPU script
cannot rot), the budget guard, and the mmcv shim of the published code."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

import device_check  # noqa: E402
import published_reference  # noqa: E402
from configs import demo  # noqa: E402
from diffsal_jax.models import config as model_config  # noqa: E402
from tests import demo_run  # noqa: E402
from tools.multiprocess_check import FAST_COMPILE_FLAGS  # noqa: E402


def _small_overrides() -> list[str]:
  """--model_override flags cutting the tiny model to two stages without
  recomputation (configs/demo.py: two_stage_model), so the dry run compiles
  in well under a minute."""
  tiny = model_config.tiny_model_config("av")
  small = demo.two_stage_model(tiny)
  small.mvit.remat = False
  return [f"--model_override={key}={json.dumps(value)}"
          for key, value in demo_run.changed_fields(tiny, small)]


SMALL = _small_overrides()


def test_budget_exhausted_skips_every_section_by_name(tmp_path):
  report = device_check.main([f"--out={tmp_path}", "--budget_s=0", "--size=tiny",
                              "--batches=1,2", "--dtypes=float32",
                              f"--reference={tmp_path}"])
  on_disk = json.loads((tmp_path / "device_check.json").read_text())
  assert list(on_disk["sections"]) == [
      "env", "jax_train_b1_float32", "torch_train_b1", "jax_train_b2_float32",
      "torch_train_b2", "jax_sampler", "loader"]
  for name, result in on_disk["sections"].items():
    assert result["skipped"].startswith("budget: "), name
  assert "| env |" in report["markdown"]


def test_missing_reference_is_refused_with_the_fix(tmp_path):
  with pytest.raises(SystemExit):
    device_check.main([f"--out={tmp_path}", f"--reference={tmp_path / 'nope'}"])
  with pytest.raises(FileNotFoundError, match="git archive"):
    published_reference.load_reference(tmp_path)


def test_mmcv_shim_builds_like_mmcv():
  registry = published_reference.Registry("test")

  @registry.register_module()
  class Box:
    def __init__(self, size, inner=None):
      self.size, self.inner = size, inner

  cfg = {"type": "Box", "size": 3, "inner": {"type": Box, "size": 1}}
  box = published_reference.build_from_cfg(cfg, registry)
  assert box.size == 3 and box.inner == {"type": Box, "size": 1}
  assert cfg["type"] == "Box"   # the caller's dict is kept (VideoSaliencyModel pops it later)
  assert registry.build(cfg["inner"]).size == 1
  with pytest.raises(KeyError, match="already registered"):
    registry.register_module()(Box)


def test_cpu_dry_run_tiny(tmp_path, monkeypatch):
  # The section processes inherit this: XLA:CPU's cheapest compile (the dry
  # run checks the script, not the speed).
  monkeypatch.setenv("XLA_FLAGS", " ".join(FAST_COMPILE_FLAGS))
  report = device_check.main([
      f"--out={tmp_path}", "--size=tiny", "--batches=1", "--dtypes=float32",
      "--sampling_steps=1", "--repeats=1", "--loader_workers=1", "--loader_batches=1",
      "--loader_modes=threads", f"--reference={tmp_path}", *SMALL])
  sections = json.loads((tmp_path / "device_check.json").read_text())["sections"]
  assert list(sections) == ["env", "jax_train_b1_float32", "torch_train_b1",
                            "jax_sampler", "loader"]
  env = sections["env"]
  assert env["platform"] == "cpu" and env["imports"]["tools.benchmarks.train_step"] == "ok"
  train = sections["jax_train_b1_float32"]
  assert train["batch"] == 1 and train["clip"] == "8x64x96"
  assert train["median_s"] > 0 and train["compile_s"] > 0 and train["flops"] > 0
  assert train["clips_per_s"] == pytest.approx(1 / train["median_s"])
  torch_section = sections["torch_train_b1"]
  try:
    import torch  # noqa: F401
  except ImportError:
    assert "torch is not importable" in torch_section["skipped"]
  else:
    # No checkout of the published code here: the section fails by name with
    # the fix, and the sections after it still run.
    assert "--reference must point at a checkout" in torch_section["error"]
  assert [r["steps"] for r in sections["jax_sampler"]["runs"]] == [1]
  assert sections["jax_sampler"]["runs"][0]["median_s"] > 0
  assert sections["loader"]["clips_per_s"]["grain_jpeg_uint8"]["threads"] > 0
  assert "| ours jax_train_b1_float32 | 1 | float32 |" in report["markdown"]
  # No peak for a CPU: the headroom's estimate falls back to an H200's.
  [headroom] = report["headroom"]
  assert headroom["target"] == "H200"
  assert headroom["need_measured"] == pytest.approx(4 * train["clips_per_s"])
  assert "Loader headroom for one host of 4 devices" in report["markdown"]
  assert (tmp_path / "device_check.log").stat().st_size > 0


def test_loader_headroom_from_a_report():
  """4 devices at 40 % of an H200's bf16 peak, 1442 GFLOP per clip: 4 x 0.4 x
  989.4e12 / 1442e9 = 1097.8 clips/s; 2 workers giving 250 clips/s need 9."""
  report = {"sections": {
      "jax_train_b2_bfloat16": {"dtype": "bfloat16", "batch": 2, "flops": 2 * 1442e9,
                                "median_s": 0.5, "clips_per_s": 4.0},
      "jax_train_b2_float32": {"error": "out of memory"},
      "loader": {"workers": 2, "clips_per_s": {
          "grain_jpeg_uint8": {"threads": 250.0, "processes": 180.0},
          "pil_published": {"threads": 900.0}}}}}   # not ours: left out
  [row] = device_check.loader_headroom(report, accelerators=4, mfu=0.4, target="H200")
  assert row["section"] == "jax_train_b2_bfloat16"
  assert row["gflop_per_clip"] == pytest.approx(1442)
  assert row["need_measured"] == 16.0 and row["workers_for_measured"] == 1
  assert row["need_estimated"] == pytest.approx(1097.8, abs=0.1)
  assert row["clips_per_s_per_worker"] == 125.0 and row["workers_for_estimated"] == 9
  assert device_check.loader_headroom({"sections": {}}, 4, 0.4, "H200") == []
  table = device_check.headroom_markdown([row])
  assert "| jax_train_b2_bfloat16 | 1442 | 16.00 clips/s | 1098 clips/s | 1 / 9 |" in table
