"""Inline SVG plots for the HTML reports: strip plots and line plots.

Plain SVG text (no script, no external file), so a report is one static
folder that any browser opens offline. Each plot has a title, labelled axes
with a few round ticks, and a `<title>` tooltip per point or series.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np

_WIDTH, _HEIGHT = 520, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 40
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
            "#e377c2", "#7f7f7f")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
  """About `count` round tick values covering [low, high] (at most
  2 * count + 2 of them; a range narrower than 1e-9 of its size is widened
  around its value)."""
  if not (math.isfinite(low) and math.isfinite(high)):
    return []
  if high - low <= 1e-9 * max(abs(low), abs(high), 1.0):
    low, high = low - 0.5 * (abs(low) or 1.0), high + 0.5 * (abs(high) or 1.0)
  raw = (high - low) / max(count - 1, 1)
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  first = math.floor(low / step)
  last = math.ceil(high / step)
  return [round(k * step, 10) for k in range(first, last + 1)]


def _label(value: float) -> str:
  return f"{value:g}" if abs(value) < 1e5 else f"{value:.2g}"


class _Axes:
  """Maps data to pixels inside the plot frame; writes the frame and ticks."""

  def __init__(self, x_range: tuple[float, float], y_values: Sequence[float]):
    finite = [v for v in y_values if math.isfinite(v)] or [0.0, 1.0]
    self.y_ticks = nice_ticks(min(finite), max(finite))
    self.y_low, self.y_high = self.y_ticks[0], self.y_ticks[-1]
    self.x_low, self.x_high = x_range
    if self.x_high <= self.x_low:
      self.x_high = self.x_low + 1

  def x(self, value: float) -> float:
    span = _WIDTH - _LEFT - _RIGHT
    return _LEFT + span * (value - self.x_low) / (self.x_high - self.x_low)

  def y(self, value: float) -> float:
    span = _HEIGHT - _TOP - _BOTTOM
    return _TOP + span * (self.y_high - value) / (self.y_high - self.y_low)

  def frame(self, title: str, x_label: str, x_ticks: Sequence[tuple[float, str]]
            ) -> list[str]:
    parts = [f'<text x="{_WIDTH / 2}" y="16" text-anchor="middle" '
             f'font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{_LEFT}" y="{_TOP}" width="{_WIDTH - _LEFT - _RIGHT}" '
             f'height="{_HEIGHT - _TOP - _BOTTOM}" fill="none" stroke="#999"/>']
    for tick in self.y_ticks:
      y = self.y(tick)
      parts.append(f'<line x1="{_LEFT - 4}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="#eee"/><text x="{_LEFT - 6}" '
                   f'y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for value, text in x_ticks:
      x = self.x(value)
      parts.append(f'<text x="{x:.1f}" y="{_HEIGHT - _BOTTOM + 16}" '
                   f'text-anchor="middle">{html.escape(text)}</text>')
    parts.append(f'<text x="{(_LEFT + _WIDTH - _RIGHT) / 2}" y="{_HEIGHT - 6}" '
                 f'text-anchor="middle">{html.escape(x_label)}</text>')
    return parts


def _svg(parts: list[str]) -> str:
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
          f'height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
          f'font-family="sans-serif" font-size="11">' + "".join(parts) +
          "</svg>")


def strip_plot(title: str, groups: Mapping[str, Mapping[str, float]]) -> str:
  """One column of points per group (e.g. a dataset's fold), one point per
  named item (a video; its name and value in the tooltip), plus a black
  bar at the group's median. NaN values are left out."""
  names = list(groups)
  values = [v for group in groups.values() for v in group.values()]
  axes = _Axes((-0.5, len(names) - 0.5), values)
  parts = axes.frame(title, "", [(i, name) for i, name in enumerate(names)])
  for i, name in enumerate(names):
    items = [(k, v) for k, v in groups[name].items() if math.isfinite(v)]
    for j, (item, value) in enumerate(items):
      # A deterministic spread so that points of equal value stay visible.
      x = axes.x(i + 0.5 * ((j * 0.618) % 1.0 - 0.5))
      parts.append(f'<circle cx="{x:.1f}" cy="{axes.y(value):.1f}" r="3" '
                   f'fill="{_COLOURS[i % len(_COLOURS)]}" fill-opacity="0.6">'
                   f'<title>{html.escape(item)}: {value:.4f}</title></circle>')
    if items:
      median = float(np.median([v for _, v in items]))
      y = axes.y(median)
      parts.append(f'<line x1="{axes.x(i - 0.3):.1f}" x2="{axes.x(i + 0.3):.1f}" '
                   f'y1="{y:.1f}" y2="{y:.1f}" stroke="black" stroke-width="2">'
                   f'<title>median {median:.4f}</title></line>')
  return _svg(parts)


def line_plot(title: str, x_label: str,
              series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
              ) -> str:
  """Lines (x, y) per named series with a legend; points with a NaN y are
  left out (the line breaks there)."""
  xs = [x for x_values, _ in series.values() for x in x_values]
  ys = [y for _, y_values in series.values() for y in y_values]
  x_range = (min(xs), max(xs)) if xs else (0.0, 1.0)
  axes = _Axes(x_range, ys)
  x_ticks = [(t, _label(t)) for t in nice_ticks(*x_range)
             if x_range[0] <= t <= x_range[1]]
  parts = axes.frame(title, x_label, x_ticks)
  for i, (name, (x_values, y_values)) in enumerate(series.items()):
    colour = _COLOURS[i % len(_COLOURS)]
    runs, run = [], []
    for x, y in zip(x_values, y_values):
      if math.isfinite(y):
        run.append(f"{axes.x(x):.1f},{axes.y(y):.1f}")
      elif run:
        runs.append(run)
        run = []
    runs.append(run)
    for points in runs:
      if len(points) == 1:
        cx, cy = points[0].split(",")
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
      elif points:
        parts.append(f'<polyline fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{" ".join(points)}">'
                     f'<title>{html.escape(name)}</title></polyline>')
    parts.append(f'<text x="{_WIDTH - _RIGHT - 4}" y="{_TOP + 14 + 13 * i}" '
                 f'text-anchor="end" fill="{colour}">{html.escape(name)}</text>')
  return _svg(parts)
