"""Converter: every manifest key consumed or reported; clear errors naming keys."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from diffsal_jax.models import torch_weights
from diffsal_jax.models import api as model_lib
from diffsal_jax.models.config import published_model_config, tiny_model_config
from tests import reference


def _manifest(fixtures_dir, variant):
  return json.loads((fixtures_dir / f"{variant}_state_dict_manifest.json").read_text())


@pytest.mark.parametrize("variant", ["visual", "av"])
def test_every_manifest_key_consumed_or_reported(fixtures_dir, variant):
  manifest = _manifest(fixtures_dir, variant)
  state = {k: np.zeros(s, np.float32) for k, (s, _) in manifest.items()}
  variables, report = torch_weights.convert_state_dict(state, published_model_config(variant))
  assert set(report.consumed) | set(report.unused) == set(manifest)
  assert not set(report.consumed) & set(report.unused)
  assert not report.kept_from_base
  unused_kinds = {k.split(".")[0] if "num_batches" not in k else "num_batches_tracked"
                  for k in report.unused}
  expected = {"num_batches_tracked"} | ({"fc", "audio_net", "spatiotemp_net"}
                                        if variant == "av" else set())
  assert unused_kinds == expected
  n_model = sum(len(traverse_util.flatten_dict(variables[c])) for c in variables)
  assert n_model == len(report.consumed)


def test_published_wrapper_and_module_prefix(fixtures_dir):
  state = reference.reference_state_dict(fixtures_dir / "visual_state_dict_manifest.json")
  wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
  cfg = published_model_config("visual")
  a = torch_weights.from_torch(state, cfg)
  b = torch_weights.from_torch(wrapped, cfg)
  kernel = ("decoder_net", "stages", 2, "block", "attn", "proj_q", "kernel")
  fa, fb = traverse_util.flatten_dict(a["params"]), traverse_util.flatten_dict(b["params"])
  np.testing.assert_array_equal(fa[kernel], fb[kernel])
  # Linear weights are transposed into (in, out).
  torch_w = state["decoder_net.invpt_decoder.mid_stages.2.blocks.0.attn.proj_q.weight"]
  np.testing.assert_array_equal(fa[kernel], torch_w.T)


def _tiny_state(variant="av"):
  """A complete torch-named state dict for the tiny model (fresh copies)."""
  cfg, variables, state = _tiny_state_cached(variant)
  return cfg, variables, dict(state)


@functools.lru_cache(maxsize=None)
def _tiny_state_cached(variant):
  cfg = tiny_model_config(variant)
  _, abstract = model_lib.abstract_variables(cfg)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)
  state = {}
  for col in variables:
    for path, v in traverse_util.flatten_dict(variables[col]).items():
      v = np.asarray(v)
      key = torch_weights.torch_key(path)
      if key.endswith(".weight") and v.ndim >= 2:  # back to torch layout
        v = v.T if v.ndim == 2 else v.transpose(v.ndim - 1, v.ndim - 2, *range(v.ndim - 2))
      state[key] = v
  return cfg, variables, state


def test_round_trip_tiny_model_is_exact():
  cfg, variables, state = _tiny_state()
  back = torch_weights.from_torch(state, cfg)
  for col in variables:
    fa, fb = traverse_util.flatten_dict(variables[col]), traverse_util.flatten_dict(back[col])
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_array_equal(np.asarray(fa[k]), fb[k], err_msg=str(k))


def test_missing_key_is_named():
  cfg, _, state = _tiny_state()
  del state["decoder_net.invpt_decoder.mt_proj.1.running_var"]
  with pytest.raises(torch_weights.ConversionError, match=r"mt_proj\.1\.running_var"):
    torch_weights.from_torch(state, cfg)


def test_unknown_key_is_named():
  cfg, _, state = _tiny_state()
  state["decoder_net.extra_head.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(torch_weights.ConversionError, match=r"decoder_net\.extra_head\.weight"):
    torch_weights.from_torch(state, cfg)


def test_wrong_shape_is_named():
  cfg, _, state = _tiny_state()
  state["visual_net.blocks.0.attn.rel_pos_h"] = np.zeros((7, 16), np.float32)
  with pytest.raises(torch_weights.ConversionError, match=r"blocks\.0\.attn\.rel_pos_h.*\(7, 16\)"):
    torch_weights.from_torch(state, cfg)


def test_visual_checkpoint_for_av_model_names_missing_audio_key():
  _, _, state = _tiny_state("visual")
  with pytest.raises(torch_weights.ConversionError, match=r"lacks (audio_net|spatiotemp_net)\."):
    torch_weights.from_torch(state, tiny_model_config("av"))


def test_partial_checkpoints_fill_their_part():
  cfg, variables, state = _tiny_state()
  base = jax.tree.map(lambda x: x + 1.0, variables)
  mvit = {"backbone." + k[len("visual_net."):]: v for k, v in state.items()
          if k.startswith("visual_net.") and not k.startswith(("visual_net.norm0",
                                                               "visual_net.norm1"))}
  mvit["cls_head.fc_cls.weight"] = np.zeros((400, 128), np.float32)
  vggish = {k[len("audio_net."):]: v for k, v in state.items() if k.startswith("audio_net.")}
  vggish["embeddings.0.weight"] = np.zeros((4, 4), np.float32)
  out, report = torch_weights.convert_state_dict(mvit, cfg, base=base)
  assert report.kind == "mmaction2-mvit"
  assert "cls_head.fc_cls.weight" in report.unused
  assert any(k.startswith("visual_net.norm0") for k in report.kept_from_base)
  out, report = torch_weights.convert_state_dict(vggish, cfg, base=out)
  assert report.kind == "torchvggish" and "embeddings.0.weight" in report.unused
  flat_out = traverse_util.flatten_dict(out["params"])
  flat_ref = traverse_util.flatten_dict(variables["params"])
  flat_base = traverse_util.flatten_dict(base["params"])
  for path in flat_out:
    top, key = path[0], torch_weights.torch_key(path)
    from_ckpt = (top == "audio_net" or (top == "visual_net" and not key.startswith(
        ("visual_net.norm0", "visual_net.norm1"))))
    want = flat_ref[path] if from_ckpt else flat_base[path]
    np.testing.assert_array_equal(flat_out[path], np.asarray(want), err_msg=key)
  with pytest.raises(torch_weights.ConversionError, match=r"lacks visual_net\.blocks\.0\.attn\.qkv"):
    torch_weights.convert_state_dict({k: v for k, v in mvit.items()
                                if not k.startswith("backbone.blocks.0.attn.qkv")}, cfg, base=base)


def test_npz_file_and_orbax_round_trip(tmp_path):
  cfg, variables, state = _tiny_state("visual")
  np.savez(tmp_path / "ckpt.npz", **state)
  converted = torch_weights.convert_files([str(tmp_path / "ckpt.npz")], cfg, log=lambda s: None)
  model_lib.save_variables(tmp_path / "orbax", converted)
  restored = model_lib.load_variables(tmp_path / "orbax", cfg)
  for col in variables:
    fa, fb = traverse_util.flatten_dict(variables[col]), traverse_util.flatten_dict(restored[col])
    assert fa.keys() == fb.keys()  # int list keys survive the round trip
    for k in fa:
      np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]))


def test_missing_file_and_torch_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    torch_weights.load_state_dict(tmp_path / "nope.pth")


def test_reads_pth_when_torch_is_installed(tmp_path):
  torch = pytest.importorskip("torch", reason="reading .pth needs the optional torch extra")
  cfg, variables, state = _tiny_state("visual")
  torch.save({"state_dict": {f"module.{k}": torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in state.items()}}, tmp_path / "x.pth")
  out = torch_weights.from_torch(torch_weights.load_state_dict(tmp_path / "x.pth"), cfg)
  fa, fb = traverse_util.flatten_dict(variables["params"]), traverse_util.flatten_dict(out["params"])
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), fb[k])
