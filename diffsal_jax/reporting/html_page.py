"""The HTML around a report: one self-contained page style, tables, links.

Pages are static: no script, no font or style sheet from the network, so a
report folder opens offline in any browser and can be zipped or served as
is. Text from the data (video names, config values) is escaped here.
"""

from __future__ import annotations

import html
import math
import pathlib
import urllib.parse
from collections.abc import Sequence

from diffsal_jax.data import atomic_files

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.strip td, .strip th { padding: 2px; text-align: center; vertical-align: top; }
.strip img { display: block; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; }
.note { color: #555; font-size: 90%; }
.warn { color: #a00; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 85%; }
"""


def escape(text: object) -> str:
  """`text` as HTML text (quotes escaped too)."""
  return html.escape(str(text))


def number(value: object, digits: int = 4) -> str:
  """A table cell's number: floats with `digits` decimals, NaN/None as '-'."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return escape(value)


def table(head: Sequence[str], rows: Sequence[Sequence[str]],
          css_class: str = "") -> str:
  """A table of already-escaped cell HTML (`head` is escaped here)."""
  attribute = f' class="{css_class}"' if css_class else ""
  lines = [f"<table{attribute}><tr>" +
           "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
  lines += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
            for row in rows]
  return "\n".join(lines) + "</table>"


def _url(path: str) -> str:
  """A relative file path as a URL (spaces, '#', '?' and the like quoted)."""
  return escape(urllib.parse.quote(path))


def link(href: str, text: str) -> str:
  """An `<a>` to a relative file path (quoted) showing `text` (escaped)."""
  return f'<a href="{_url(href)}">{escape(text)}</a>'


def image(src: str, alt: str, size_hw: tuple[int, int] | None = None) -> str:
  """An `<img>` of a relative path, with its size when known (the page
  then lays out before the pictures load)."""
  size = f' width="{size_hw[1]}" height="{size_hw[0]}"' if size_hw else ""
  return f'<img src="{_url(src)}" alt="{escape(alt)}"{size}>'


def write_page(path: pathlib.Path, title: str, body: str) -> pathlib.Path:
  """Writes a complete page (UTF-8, the style above) atomically."""
  text = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
          f"<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
  return atomic_files.write_atomic(
      path, lambda f: f.write(text.encode("utf-8")), binary=True)
