"""The HTML report of `python -m diffsal_jax.predict --report DIR`.

`DIR/index.html`: per input video its summary (frames, rate, size, the
corrections the reader made) and a strip of evenly spaced frames as frame |
prediction | overlay, linked to its `overlay.mp4`; inputs that failed (or
whose strip could not be drawn) are listed with their error. Thumbnails (JPEG, `thumb_width` pixels wide) sit
under `DIR/<name>/`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from diffsal_jax.reporting import html_page
from diffsal_jax.reporting import panels

PANELS = ("frame", "prediction", "overlay")


def strip_pictures(frames: Iterator[np.ndarray], maps_dir: pathlib.Path,
                   wanted: Sequence[int]) -> dict[int, tuple[np.ndarray,
                                                             np.ndarray]]:
  """Frame number -> (RGB frame, uint8 map read back from maps_dir/
  <frame:05d>.png) for the 1-based numbers `wanted`, decoding `frames` (a
  fresh pass of the input) only up to the last of them."""
  kept, last = {}, max(wanted, default=0)
  for number, frame in enumerate(frames, 1):
    if number > last:
      break
    if number in wanted:
      with Image.open(maps_dir / f"{number:05d}.png") as png:
        kept[number] = (np.asarray(frame), np.asarray(png.convert("L")))
  return kept


def _strip(report_dir: pathlib.Path, name: str,
           pictures: Mapping[int, tuple[np.ndarray, np.ndarray]],
           width: int, alpha: float) -> str:
  rows = []
  for number, (frame, saliency) in sorted(pictures.items()):
    size = panels.thumbnail_size(frame.shape[:2], width)
    small_frame = panels.resize(frame, size)
    small_map = panels.resize(saliency, size)
    images = {"frame": small_frame, "prediction": panels.grey_rgb(small_map),
              "overlay": panels.blend_heatmap(small_frame, small_map, alpha)}
    cells = [str(number)]
    for panel, picture in images.items():
      path = report_dir / name / f"{number:05d}_{panel}.jpg"
      panels.save_jpeg(path, picture)
      cells.append(html_page.image(f"{name}/{path.name}",
                                   f"{panel}, frame {number}", size))
    rows.append(cells)
  return html_page.table(["#", *PANELS], rows, "strip")


def write_report(report_dir: str | os.PathLike,
                 videos: Sequence[tuple[str, dict, Mapping[int, tuple]]],
                 problems: Sequence[str], *, thumb_width: int = 192,
                 alpha: float = 0.6) -> pathlib.Path:
  """Writes DIR/index.html; returns its path.

  `videos`: (output name, the summary `predict_source` returned, frame
  number -> (RGB uint8 frame (H, W, 3), uint8 map (H, W))) per input;
  `problems`: one message per input that could not be predicted or whose
  strip could not be drawn.
  """
  out = pathlib.Path(report_dir)
  out.mkdir(parents=True, exist_ok=True)
  parts = []
  if problems:
    parts.append("<h2>Problems</h2><ul class=\"warn\">" + "".join(
        f"<li>{html_page.escape(message)}</li>" for message in problems) +
                 "</ul>")
  for name, summary, pictures in videos:
    facts = (f"{summary['frames']} frames, {summary['fps']:g} fps, "
             f"{summary['duration']:g} s, {summary['size_hw'][1]}x"
             f"{summary['size_hw'][0]}" + (", variable frame rate"
                                           if summary.get("vfr") else ""))
    links = [html_page.link(os.path.relpath(summary["maps"], out), "maps")]
    if "overlay" in summary:
      links.insert(0, html_page.link(os.path.relpath(summary["overlay"], out),
                                     "overlay.mp4"))
    corrections = "".join(f"<li>{html_page.escape(c)}</li>"
                          for c in summary.get("corrections", []))
    parts.append(
        f"<h2>{html_page.escape(name)}</h2><p>{html_page.escape(facts)}; "
        + " | ".join(links) + "</p>" +
        (f"<ul class=\"note\">{corrections}</ul>" if corrections else "") +
        _strip(out, name, pictures, thumb_width, alpha))
  if not videos:
    parts.append("<p class=\"warn\">No input was predicted.</p>")
  return html_page.write_page(out / "index.html", "DiffSal predictions",
                              "\n".join(parts))
