"""Where the commands' persistent compilation cache lives (`compilation_cache`).

That a second process reads the first one's programs is tested through
`predict` (tests/test_predict.py) and the README demo's start-up record
(tests/test_train_learning.py).
"""

import os

import pytest

from diffsal_jax import compilation_cache
from diffsal_jax.training import train_config


def test_auto_follows_jax_variable_then_the_per_user_folder(monkeypatch,
                                                             tmp_path):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert compilation_cache.resolve("auto") == str(tmp_path / "jax")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.resolve("auto") == str(
      tmp_path / "xdg" / "diffsal_jax" / "jax_cache")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation_cache.resolve(" auto ") == str(
      tmp_path / "home" / ".cache" / "diffsal_jax" / "jax_cache")


def test_empty_turns_it_off_and_a_folder_is_taken_as_given(monkeypatch,
                                                           tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compilation_cache.resolve("") == ""
  assert compilation_cache.resolve("~/cache") == str(tmp_path / "cache")
  assert compilation_cache.resolve("gs://bucket/cache") == "gs://bucket/cache"


def test_config_default_is_auto():
  assert train_config.base_config().compilation_cache == compilation_cache.AUTO


def test_a_folder_that_cannot_be_made_is_named_with_the_fix(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  folder = blocker / "cache"
  before = compilation_cache.folder()
  with pytest.raises(OSError, match=r"a_file/cache.*compilation_cache.*''"):
    compilation_cache.enable(str(folder))
  assert compilation_cache.folder() == before   # this process keeps its cache
  assert not os.path.exists(folder)
