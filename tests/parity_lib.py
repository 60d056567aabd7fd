"""Run the port on the reference fixtures and collect the tracked activations."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from diffsal_jax.models import torch_weights
from diffsal_jax.models import api as model_lib
from diffsal_jax.models.config import published_model_config
from tests import reference


def port_activations(variant: str, fixtures: pathlib.Path, seed: int = 0,
                     ops: str = "auto", dtype: str = "float32") -> dict[str, np.ndarray]:
  """Tracked activations of the port, in the fixtures' channels-first layout;
  `ops`: the op path (models/op_paths.py); `dtype`: `config.model.dtype`."""
  cfg = published_model_config(variant)
  cfg.ops = ops
  cfg.dtype = dtype
  state = reference.reference_state_dict(fixtures / f"{variant}_state_dict_manifest.json", seed)
  variables = torch_weights.from_torch(state, cfg)
  inputs = reference.to_channels_last(reference.reference_inputs(variant, seed))
  graphdef, _ = model_lib.abstract_variables(cfg)

  @jax.jit
  def run(variables, inputs):
    model = model_lib.merge(graphdef, variables)
    feats = model.encode(inputs["img"], inputs.get("audio"))
    tracked = {}
    out = model.decoder_net(inputs["x_t"], inputs["t"], feats["vis"], feats["audio"],
                            intermediates=tracked)
    acts = {f"visual_net.{i}": v for i, v in enumerate(feats["vis"])}
    acts.update({f"decoder_net.{k}": v for k, v in tracked.items() if k in ("conv_in", "down1")})
    acts.update({f"decoder_net.invpt_decoder.{k}.0": v for k, v in tracked.items()
                 if k.startswith("mid_stages")})
    acts["decoder_net.invpt_decoder"] = tracked["mt_proj"]
    acts["decoder_net.logits"] = tracked["logits"]
    acts["decoder_net"] = out
    if variant == "av":
      b, p, h, w = inputs["audio"].shape
      acts["audio_net.features"] = model.audio_net(inputs["audio"].reshape(b * p, h, w, 1))
      acts["spatiotemp_net"] = feats["audio"]
    return acts

  # Full size runs longer than it compiles: XLA's default optimisation
  # whatever the session's flags (at the cheapest compile of
  # tests/conftest.py a set-up took 60-175 s instead of 52-73 s).
  compiled = run.lower(variables, inputs).compile(
      compiler_options={"xla_backend_optimization_level": 2,
                        "xla_llvm_disable_expensive_passes": False})
  acts = jax.device_get(compiled(variables, inputs))
  return {k: reference.to_channels_first(v) for k, v in acts.items()}


def compare(acts: dict[str, np.ndarray], fixtures: pathlib.Path, variant: str) -> dict[str, dict]:
  """Per tracked name: max |diff| and max relative diff at the fixture's indices."""
  ref = np.load(fixtures / f"{variant}_seed0_activations.npz")
  report = {}
  for name in sorted({k.rsplit("/", 1)[0] for k in ref.files if k.endswith("/idx")}):
    ours = acts[name].reshape(-1)[ref[f"{name}/idx"]]
    theirs = ref[f"{name}/val"]
    diff = np.abs(ours - theirs)
    scale = np.maximum(np.abs(theirs).max(), 1e-6)
    report[name] = {"max_abs": float(diff.max()), "rel": float(diff.max() / scale)}
  out_diff = np.abs(acts["decoder_net"] - ref["output"])
  report["output"] = {"max_abs": float(out_diff.max()), "rel": float(out_diff.max())}
  return report
