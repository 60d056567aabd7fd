"""VGGish convolutional features (torchvggish `features`), channels-last.

Only the conv trunk is used by DiffSal; its output grid `(H/16, W/16, 512)`
feeds the audio transformer. The published model keeps it frozen.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from diffsal_jax.models import layers

# Layer plan of VGG "A"-like VGGish: int = 3x3 conv + ReLU (index into widths), "M" = 2x2 max pool.
_PLAN = (0, "M", 1, "M", 2, 2, "M", 3, 3, "M")


class VGGish(nnx.Module):
  """Six 3x3 convs with ReLU and four 2x2 max pools; 1 input channel."""

  def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), *, rngs: nnx.Rngs,
               dtype=None):
    convs = []
    in_ch = 1
    for step in _PLAN:
      if step == "M":
        continue
      convs.append(layers.conv(in_ch, widths[step], (3, 3), padding=1, dtype=dtype, rngs=rngs))
      in_ch = widths[step]
    self.convs = nnx.List(convs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x (N, H, W, 1)` log-mel patches -> `(N, H/16, W/16, C)`."""
    convs = iter(self.convs)
    for step in _PLAN:
      if step == "M":
        x = layers.max_pool(x, (2, 2), (2, 2), (0, 0))
      else:
        x = jax.nn.relu(next(convs)(x))
    return x
