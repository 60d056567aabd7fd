"""Which XLA ops take a compiled step's time (`train_step --profile_top`)."""

from __future__ import annotations

import glob
import gzip
import json
import re
import tempfile
from typing import Any, Callable

import jax


def top_ops(one_step: Callable[[], Any], hlo_text: str, top: int
            ) -> list[dict[str, Any]]:
  """Profiles one step; sums op time by (HLO opcode, source op name)."""
  origin = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
    if m and m.group(1) not in origin:
      source = re.search(r'op_name="([^"]*)"', line)
      name = source.group(1).split(")/", 1)[-1] if source else ""
      origin[m.group(1)] = (m.group(2), name[-70:])
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      jax.block_until_ready(one_step())
    path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  totals: dict[tuple[str, str], list[float]] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("name") in origin:
      entry = totals.setdefault(origin[e["name"]], [0.0, 0])
      entry[0] += e.get("dur", 0) / 1e6
      entry[1] += 1
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
  return [{"opcode": k[0], "source": k[1], "seconds": v[0], "calls": v[1]}
          for k, v in ranked]
