"""Parity with the published PyTorch model on the shared reference fixtures.

Weights and inputs are rebuilt with NumPy from the fixtures' README rules,
loaded through the converter, and run at full size (16x224x384) in float32
with matmul precision "highest" (set in conftest.py).
"""

import numpy as np
import pytest

from tests import parity_lib

OUTPUT_TOL = 1e-4       # max |diff| on the model output
INTERMEDIATE_TOL = 1e-3  # max |diff| / max |reference| on each tracked activation


@pytest.fixture(scope="module", params=["visual", "av"])
def variant_acts(request, fixtures_dir):
  variant = request.param
  return variant, parity_lib.port_activations(variant, fixtures_dir)


def test_output_and_intermediates_match_reference(variant_acts, fixtures_dir):
  variant, acts = variant_acts
  report = parity_lib.compare(acts, fixtures_dir, variant)
  expected = {"visual_net.0", "visual_net.3", "decoder_net.conv_in", "decoder_net.down1",
              "decoder_net.invpt_decoder.mid_stages.3.0", "decoder_net.logits"}
  if variant == "av":
    expected |= {"audio_net.features", "spatiotemp_net"}
  assert expected <= set(report), f"fixture names not all compared: {sorted(report)}"
  assert report["output"]["max_abs"] <= OUTPUT_TOL, report["output"]
  bad = {k: r for k, r in report.items() if r["rel"] > INTERMEDIATE_TOL}
  assert not bad, f"{variant}: activations off the reference: {bad}"


def test_shapes_match_reference_stats(variant_acts, fixtures_dir):
  import json
  variant, acts = variant_acts
  stats = json.loads((fixtures_dir / f"{variant}_seed0_stats.json").read_text())
  for name, s in stats.items():
    if name in acts:
      assert list(acts[name].shape) == s["shape"], name
      np.testing.assert_allclose(acts[name].std(), s["std"], rtol=1e-3, err_msg=name)


def test_comparison_detects_drift(variant_acts, fixtures_dir):
  """The comparison must fail when an activation is perturbed (guards the test itself)."""
  variant, acts = variant_acts
  drifted = dict(acts)
  drifted["decoder_net"] = acts["decoder_net"] + 2e-4
  drifted["visual_net.1"] = acts["visual_net.1"] * 1.01
  report = parity_lib.compare(drifted, fixtures_dir, variant)
  assert report["output"]["max_abs"] > OUTPUT_TOL
  assert report["visual_net.1"]["rel"] > INTERMEDIATE_TOL
