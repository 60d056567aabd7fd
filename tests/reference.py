"""Rebuild the reference fixtures' weights and inputs with NumPy (their README rules)."""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np


def reference_state_dict(manifest_path: pathlib.Path, seed: int = 0) -> dict[str, np.ndarray]:
  """Deterministic weights for every key of a published state-dict manifest."""
  manifest = json.loads(pathlib.Path(manifest_path).read_text())
  out = {}
  for key, (shape, _) in manifest.items():
    z = np.random.default_rng([seed, zlib.crc32(key.encode())]).standard_normal(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
      v = 1 + 0.1 * np.abs(z)
    elif leaf == "running_mean":
      v = 0.1 * z
    elif leaf == "num_batches_tracked":
      out[key] = np.zeros(shape, np.int64)
      continue
    elif leaf == "bias":
      v = 0.02 * z
    elif len(shape) == 1:
      v = 1 + 0.1 * z
    elif "rel_pos" in leaf or leaf in ("cls_token", "pos_embedding"):
      v = 0.02 * z
    else:
      v = z / np.sqrt(np.prod(shape[1:]))
    out[key] = v.astype(np.float32)
  return out


def reference_inputs(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
  """Inputs in the published (channels-first) layout."""
  rng = np.random.default_rng([seed, 7])
  inputs = {"img": rng.standard_normal((1, 3, 16, 224, 384)).astype(np.float32),
            "x_t": rng.standard_normal((1, 1, 224, 384)).astype(np.float32),
            "t": np.array([437], np.int32)}
  if variant == "av":
    inputs["audio"] = rng.standard_normal((1, 1, 9, 112, 192)).astype(np.float32)
  return inputs


def to_channels_last(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Published layout -> the port's API layout."""
  out = {"img": inputs["img"].transpose(0, 2, 3, 4, 1),
         "x_t": inputs["x_t"].transpose(0, 2, 3, 1), "t": inputs["t"]}
  if "audio" in inputs:
    out["audio"] = inputs["audio"][:, 0]
  return out


def to_channels_first(x: np.ndarray) -> np.ndarray:
  """(B, *spatial, C) -> (B, C, *spatial), the layout the fixture indices use."""
  x = np.asarray(x)
  return np.moveaxis(x, -1, 1)
