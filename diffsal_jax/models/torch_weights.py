r"""PyTorch state dicts -> diffsal_jax variables, and a CLI writing orbax checkpoints.

Understands three kinds of checkpoint (detected from their keys):
  * DiffSal (`{"state_dict": {"module.<key>": ...}}` or a plain state dict):
    every parameter and BatchNorm statistic of the model must be present;
  * mmaction2 MViTv2-S Kinetics-400 (`backbone.` prefix; `norm0..2` absent);
  * torchvggish (`features.*`, `embeddings.*`).
The partial ones fill their part; everything else keeps `base` variables
(random initialisation by default), which is how the published training
starts. Unlike the published loader, a missing key, an unknown key or a
wrong shape is an error naming the key; known-unused keys are reported.

  python -m diffsal_jax.convert --checkpoint diffsal_av.pth \
      --config configs/av_finetune.py --out /tmp/diffsal_av
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from diffsal_jax import console
from diffsal_jax.models import api as model_lib

# (our module path regex, torch module path template). First match wins.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"visual_net\.patch_embed", r"visual_net.patch_embed.projection"),
    (r"visual_net\.norms\.(\d+)", r"visual_net.norm\1"),
    (r"visual_net(.*)", r"visual_net\1"),
    (r"audio_net\.convs\.(\d+)", "audio_net.features.{vggish}"),
    (r"spatiotemp_net\.attn\.(\d+)\.to_out", r"spatiotemp_net.transformer.layers.\1.0.to_out.0"),
    (r"spatiotemp_net\.attn\.(\d+)\.(\w+)", r"spatiotemp_net.transformer.layers.\1.0.\2"),
    (r"spatiotemp_net\.ff\.(\d+)\.norm", r"spatiotemp_net.transformer.layers.\1.1.net.0"),
    (r"spatiotemp_net\.ff\.(\d+)\.mlp\.fc1", r"spatiotemp_net.transformer.layers.\1.1.net.1"),
    (r"spatiotemp_net\.ff\.(\d+)\.mlp\.fc2", r"spatiotemp_net.transformer.layers.\1.1.net.4"),
    (r"spatiotemp_net\.norm", r"spatiotemp_net.transformer.norm"),
    (r"spatiotemp_net\.embed_norm_in", r"spatiotemp_net.to_patch_embedding.0"),
    (r"spatiotemp_net\.embed_proj", r"spatiotemp_net.to_patch_embedding.1"),
    (r"spatiotemp_net\.embed_norm_out", r"spatiotemp_net.to_patch_embedding.2"),
    (r"spatiotemp_net", r"spatiotemp_net"),
    (r"decoder_net\.temb_dense(\d)", r"decoder_net.temb.dense.\1"),
    (r"decoder_net\.down1", r"decoder_net.down1.conv"),
    (r"decoder_net\.res_blocks\.(\d+)\.(.*)", r"decoder_net.res_encoder.\1.0.\2"),
    (r"decoder_net\.downsamples\.(\d+)", r"decoder_net.res_encoder.\1.1.conv"),
    (r"decoder_net\.stages\.(\d+)\.up\.conv1", r"decoder_net.invpt_decoder.mid_stages.\1.patch_embed.0.proj.1"),
    (r"decoder_net\.stages\.(\d+)\.up\.bn1", r"decoder_net.invpt_decoder.mid_stages.\1.patch_embed.0.proj.2"),
    (r"decoder_net\.stages\.(\d+)\.up\.conv2", r"decoder_net.invpt_decoder.mid_stages.\1.patch_embed.0.proj.4"),
    (r"decoder_net\.stages\.(\d+)\.up\.bn2", r"decoder_net.invpt_decoder.mid_stages.\1.patch_embed.0.proj.5"),
    (r"decoder_net\.stages\.(\d+)\.block\.attn\.([qkv])_conv",
     r"decoder_net.invpt_decoder.mid_stages.\1.blocks.0.attn.conv_proj_\2.conv"),
    (r"decoder_net\.stages\.(\d+)\.block\.attn\.([qkv])_norm",
     r"decoder_net.invpt_decoder.mid_stages.\1.blocks.0.attn.conv_proj_\2.bn"),
    (r"decoder_net\.stages\.(\d+)\.block\.(.*)", r"decoder_net.invpt_decoder.mid_stages.\1.blocks.0.\2"),
    (r"decoder_net\.stages\.(\d+)\.norm", r"decoder_net.invpt_decoder.norm_mts.\1"),
    (r"decoder_net\.stages\.(\d+)\.reduce_temporal", r"decoder_net.invpt_decoder.redu_chan_up.\1.proj.0"),
    (r"decoder_net\.mt_proj_conv", r"decoder_net.invpt_decoder.mt_proj.0"),
    (r"decoder_net\.mt_proj_bn", r"decoder_net.invpt_decoder.mt_proj.1"),
    (r"decoder_net\.logits", r"decoder_net.logits.linear_pred"),
    (r"decoder_net\.(\w+)", r"decoder_net.\1"),
)
_VGGISH_CONV_INDEX = (0, 3, 6, 8, 11, 13)  # position of each conv in torchvggish `features`
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}
# Keys the published checkpoints carry that the port does not use.
_KNOWN_UNUSED = (r"fc\.\d+\.(weight|bias)", r"audio_net\.embeddings\..*",
                 r"spatiotemp_net\.(to_patch_embedding\..*|pos_embedding)",
                 r".*\.num_batches_tracked", r"cls_head\..*", r"data_preprocessor\..*")
# Parameters a partial checkpoint may lack: they keep their base values.
_OPTIONAL_IN_MVIT = r"visual_net\.norm[012]\..*"


class ConversionError(ValueError):
  """A checkpoint does not match the model; the message names the key."""


@dataclasses.dataclass
class ConversionReport:
  kind: str
  consumed: list[str]
  unused: list[str]
  kept_from_base: list[str]

  def summary(self) -> str:
    return (f"{self.kind} checkpoint: {len(self.consumed)} tensors converted, "
            f"{len(self.unused)} known-unused keys ignored, "
            f"{len(self.kept_from_base)} model tensors kept from the base initialisation")


def torch_key(path: tuple) -> str:
  """Our variable path, e.g. ('decoder_net','logits','kernel') -> torch key."""
  *module, leaf = (str(p) for p in path)
  module_path = ".".join(module)
  for pattern, template in _RENAMES:
    match = re.fullmatch(pattern, module_path)
    if match:
      torch_module = match.expand(template)
      if "{vggish}" in torch_module:
        torch_module = torch_module.format(vggish=_VGGISH_CONV_INDEX[int(match.group(1))])
      break
  else:
    raise ConversionError(f"no torch name rule for model variable {module_path}.{leaf}")
  return f"{torch_module}.{_LEAF_NAMES.get(leaf, leaf)}"


def to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; torch stays an optional import
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _from_torch_layout(key: str, value: np.ndarray, shape: tuple) -> np.ndarray:
  """Torch layout -> ours: Linear (O,I)->(I,O); ConvNd (O,I,*k)->(*k,I,O)."""
  if key.endswith(".weight") and value.ndim >= 2 and len(shape) == value.ndim:
    perm = (1, 0) if value.ndim == 2 else (*range(2, value.ndim), 1, 0)
    value = value.transpose(perm)
  elif value.size == int(np.prod(shape)) and value.ndim != len(shape):
    value = value.reshape(shape)  # e.g. pos_embedding (1,1,9,1,1) -> (9,)
  if tuple(value.shape) != tuple(shape):
    raise ConversionError(f"{key}: checkpoint shape {tuple(value.shape)} (after layout "
                          f"change) does not fit the model's {tuple(shape)}; check that "
                          "the config matches the checkpoint (variant, widths, sizes)")
  return value


def _detect(keys: Iterable[str]) -> tuple[str, Callable[[str], str], str]:
  """(kind, rename torch key -> model-namespace key, required-prefix regex)."""
  keys = list(keys)
  if any(k.startswith("backbone.") for k in keys):
    return ("mmaction2-mvit", lambda k: re.sub(r"^backbone\.", "visual_net.", k),
            r"visual_net\..*")
  if any(k.startswith("features.") for k in keys) and not any(
      k.startswith("visual_net.") for k in keys):
    return ("torchvggish", lambda k: "audio_net." + k, r"audio_net\..*")
  return "diffsal", lambda k: k, r".*"


def _strip_wrappers(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]
  return {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}


def convert_state_dict(state_dict: Mapping[str, Any], config, *, base: dict | None = None,
                       ) -> tuple[dict, ConversionReport]:
  """Convert; returns (variables, report). See the module docstring."""
  state_dict = _strip_wrappers(state_dict)
  kind, rename, required = _detect(state_dict)
  torch_state = {rename(k): v for k, v in state_dict.items()}
  original = {rename(k): k for k in state_dict}  # report the file's own key names
  _, abstract = model_lib.abstract_variables(config)
  if base is None and kind != "diffsal":
    base = model_lib.init_variables(config)
  out, consumed, kept = {}, set(), []
  for collection in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(abstract[collection])
    base_flat = traverse_util.flatten_dict(base[collection]) if base else {}
    converted = {}
    for path, spec in flat.items():
      key = torch_key(path)
      in_scope = re.fullmatch(required, key)
      if key in torch_state and in_scope:
        converted[path] = _from_torch_layout(key, to_numpy(torch_state[key]), spec.shape).astype(
            spec.dtype)
        consumed.add(key)
      elif in_scope and not (kind == "mmaction2-mvit" and re.fullmatch(_OPTIONAL_IN_MVIT, key)):
        raise ConversionError(f"{kind} checkpoint lacks {key} (model variable "
                              f"{'/'.join(map(str, path))}, shape {spec.shape})")
      else:
        converted[path] = np.asarray(base_flat[path])
        kept.append(key)
    out[collection] = traverse_util.unflatten_dict(converted)
  leftover = sorted(set(torch_state) - consumed)
  unknown = [k for k in leftover if not any(re.fullmatch(p, k) for p in _KNOWN_UNUSED)]
  if unknown:
    raise ConversionError(f"{kind} checkpoint has {len(unknown)} key(s) the model does not "
                          f"know, first: {unknown[0]} (all: {unknown[:10]}); wrong config "
                          "variant or a different architecture?")
  return out, ConversionReport(kind, sorted(original[k] for k in consumed),
                               [original[k] for k in leftover], kept)


def from_torch(state_dict: Mapping[str, Any], config, *, base: dict | None = None) -> dict:
  """PyTorch state dict (numpy arrays or torch tensors) -> variables dict."""
  return convert_state_dict(state_dict, config, base=base)[0]


def load_state_dict(path: str | pathlib.Path, *, allow_pickle: bool = False) -> dict[str, Any]:
  """Read a `.pth`/`.pt` (needs torch) or `.npz` file into a flat dict."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'torch' (the optional "
                      "extra `pip install .[torch]`), or export it to .npz") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # torch raises pickle errors of several types
    raise ConversionError(f"could not read {path} as a weights-only checkpoint ({e}); if you "
                          "trust the file, pass --allow_pickle") from e


def convert_files(paths: list[str], config, *, seed: int = 0, allow_pickle: bool = False,
                  log: Callable[[str], None] = print) -> dict:
  """Convert one or more checkpoints in order, each filling its part."""
  variables = None
  for path in paths:
    base = variables if variables is not None else (
        None if len(paths) == 1 else model_lib.init_variables(config, seed))
    variables, report = convert_state_dict(load_state_dict(path, allow_pickle=allow_pickle),
                                           config, base=base)
    log(f"{path}: {report.summary()}")
    if report.unused:
      log(f"  ignored (unused by the model): {', '.join(report.unused[:8])}"
          f"{' ...' if len(report.unused) > 8 else ''}")
  return variables


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  del argv
  cfg = flags.FLAGS.config
  if not flags.FLAGS.checkpoint:
    raise SystemExit("--checkpoint is required (give it once per file to combine, e.g. the "
                     "MViT Kinetics-400 and torchvggish weights)")
  variables = convert_files(flags.FLAGS.checkpoint, cfg, seed=flags.FLAGS.seed,
                            allow_pickle=flags.FLAGS.allow_pickle)
  model_lib.save_variables(flags.FLAGS.out, variables)
  print(f"wrote {flags.FLAGS.out} (model variant {model_lib.model_config(cfg).variant})")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (e.g. configs/av_finetune.py); its `model` "
      "section must match the checkpoint's architecture.", lock_config=True)
  flags.DEFINE_multi_string(
      "checkpoint", [], "PyTorch .pth/.pt (or .npz) state dict. Repeat to combine partial "
      "checkpoints in order (mmaction2 MViTv2-S K400 + torchvggish for pre-training init); "
      "parts no file provides keep a random initialisation.")
  flags.DEFINE_string("out", None, "Output directory of the orbax checkpoint.", required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the random initialisation of parts not provided.")
  flags.DEFINE_bool("allow_pickle", False, "Allow full (unsafe) unpickling of .pth files "
                    "that are not weights-only; only for files you trust.")
  flags.mark_flags_as_required(["config"])


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  console.quiet_libraries()
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
