"""Whole-file writes that readers never see half done.

Every write goes to a temporary file in the target's folder, named by
`temp_path` (`.<name>.tmp-<pid>-<random>`: hidden, and matched by the
`*.tmp-*` glob that `data_prep convert --resume` clears leftovers with), is
flushed and (by default) fsynced, then renamed over the target with
`os.replace`, which is atomic within one file system. A failed write removes
its temporary file and re-raises. Writers that stream into a file they cannot
hold in memory (ArrayRecord shards, overlay videos) name their temporary
file with `temp_path` and rename it themselves.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
from collections.abc import Callable
from typing import IO, Any


def temp_path(path: str | os.PathLike) -> pathlib.Path:
  """Temporary name beside `path`: `<folder>/.<name>.tmp-<pid>-<6 hex>`.

  Unique per process and call (two threads writing one target do not share
  it); nothing is created.
  """
  path = pathlib.Path(path)
  return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], *,
                 binary: bool = False, fsync: bool = True) -> pathlib.Path:
  """Calls `write(stream)` on a new temporary file, then renames it to `path`.

  `binary`: the stream is opened "wb", else "w" (text, platform newlines as
  `open` gives them). Missing parent folders are created. `fsync=False`
  skips the fsync (for many small files where a crash may lose the last
  ones but never leaves a partial one). Returns `path` as a Path; whatever
  `write` or the file system raises propagates after the temporary file is
  removed.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temp = temp_path(path)
  try:
    with open(temp, "xb" if binary else "x") as stream:
      write(stream)
      if fsync:
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)
  except BaseException:
    temp.unlink(missing_ok=True)
    raise
  return path


def write_bytes(path: str | os.PathLike, data: bytes, *,
                fsync: bool = True) -> pathlib.Path:
  """Atomically replaces `path` with `data`."""
  return write_atomic(path, lambda f: f.write(data), binary=True, fsync=fsync)


def write_text(path: str | os.PathLike, text: str, *,
               fsync: bool = True) -> pathlib.Path:
  """Atomically replaces `path` with `text` (encoded as `open` does)."""
  return write_atomic(path, lambda f: f.write(text), fsync=fsync)


def write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = True,
               **dump_options: Any) -> pathlib.Path:
  """Atomically replaces `path` with `json.dump(obj, f, **dump_options)`.

  Raises what `json.dump` raises (TypeError for an object JSON cannot hold,
  ValueError for NaN with allow_nan=False) with `path` left untouched.
  """
  return write_atomic(path, lambda f: json.dump(obj, f, **dump_options),
                      fsync=fsync)
