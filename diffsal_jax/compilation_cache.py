"""The persistent XLA compilation cache of the commands that compile.

`python -m diffsal_jax.main` (every mode) and `python -m diffsal_jax.predict`
compile the train step, the initialiser and the DDIM sampler on start; on a
2-core CPU that is most of a short run's start-up (docs/performance.md). With
the cache, a second run of the same program on the same machine (a restart
after preemption, the next fold, the next `predict`) loads the compiled
programs from a folder instead. JAX keys each entry on the program, the
compile options and flags, the JAX/XLA version and the device kind, so a
changed model or another machine never reads a stale entry.

The setting (`config.compilation_cache`, `predict --compilation_cache`):
  'auto'  $JAX_COMPILATION_CACHE_DIR when set (with JAX's own settings),
          else a per-user folder, $XDG_CACHE_HOME/diffsal_jax/jax_cache
          (default ~/.cache/diffsal_jax/jax_cache), kept under
          MAX_CACHE_BYTES by evicting the least recently used entries.
  ''      off: every program is compiled.
  FOLDER  that folder (a shared file system or gs://... for several hosts),
          with the same size limit.

Several processes may share the folder: with a size limit JAX takes a file
lock around each read and write (`jax/_src/lru_cache.py`), and in a
multi-process run only process 0 writes entries (`jax/_src/compiler.py`).
On GPUs the other processes read them where the folder is shared (JAX
strips the device assignment from the key there, `jax/_src/cache_key.py`).
On CPUs it does not: each process's keys differ, and processes other than
0 compile every program (measured with two CPU processes sharing one
folder; docs/training.md).
"""

from __future__ import annotations

import os
import threading

import jax

AUTO = "auto"
ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
# A DHF1K-size train step is about 30 MB compressed, a demo-size one 2 MB:
# 4 GiB holds every program of a few model sizes and flag sets.
MAX_CACHE_BYTES = 4 << 30

_HITS = "/jax/compilation_cache/cache_hits"
_WRITES = "/jax/compilation_cache/cache_misses"   # compiled, then stored
_counts = {_HITS: 0, _WRITES: 0}
_counts_lock = threading.Lock()
_listening = False


def _count(event: str, **_) -> None:
  if event in _counts:
    with _counts_lock:
      _counts[event] += 1


def per_user_folder() -> str:
  """$XDG_CACHE_HOME/diffsal_jax/jax_cache (default ~/.cache/...)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "diffsal_jax", "jax_cache")


def resolve(setting: str) -> str:
  """The folder `setting` names ('' when the cache is off); see the module
  doc for 'auto'."""
  setting = (setting or "").strip()
  if setting == AUTO:
    return os.environ.get(ENV_DIR) or per_user_folder()
  return os.path.expanduser(setting)


def enable(setting: str) -> str:
  """Turns the cache on for this process as `setting` says; returns the
  folder ('' when off).

  Call before the first compilation: JAX opens the cache once, at the first
  compile, and keeps that folder for the life of the process. Raises
  OSError naming the folder when it cannot be created.
  """
  global _listening
  folder = resolve(setting)
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening = True
  if not folder:
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  if "://" not in folder:
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as error:
      raise OSError(f"compilation cache folder {folder!r} cannot be created "
                    f"({error}); set --config.compilation_cache (main) or "
                    "--compilation_cache (predict) to another folder, or '' "
                    "to turn the cache off") from error
  inherited = setting.strip() == AUTO and os.environ.get(ENV_DIR)
  # A folder JAX's variables chose keeps JAX's settings (a size limit would
  # make JAX look for per-entry access times its unlimited writers omit).
  if not inherited and jax.config.jax_compilation_cache_max_size == -1:
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def folder() -> str:
  """The folder this process reads and writes ('' when the cache is off)."""
  if not jax.config.jax_enable_compilation_cache:
    return ""
  return jax.config.jax_compilation_cache_dir or ""


def describe() -> str:
  """'<folder>: N programs read, M compiled and stored' (or 'off'), for logs."""
  where = folder()
  if not where:
    return "off"
  n = counts()
  return (f"{where}: {n['hits']} programs read, {n['writes']} compiled and "
          "stored")


def counts() -> dict[str, int]:
  """Programs this process read from the cache ('hits') and compiled and
  stored in it ('writes') since `enable` was first called. Programs that
  compile in under a second (JAX's `jax_persistent_cache_min_compile_time_secs`)
  are neither read nor stored."""
  with _counts_lock:
    return {"hits": _counts[_HITS], "writes": _counts[_WRITES]}
