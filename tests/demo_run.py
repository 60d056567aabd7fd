"""The README's demo runs, each trained once per test session.

The learning tests and the end-to-end predict tests share them: the first
xdist worker to ask trains a run under a file lock in the session's shared
temp folder, the others wait and reuse it.

A run is the README's command in a child process (for the visual demo word
for word but the workdir, so tests/test_docs_commands.py counts the README's
demo command as run here), compiled with XLA's default optimisation: the
test session itself compiles with XLA:CPU's cheapest flags (tests/
conftest.py), under which a training step runs about 2x slower, and the
demos' learning figures were measured with the default. The child sees one
CPU device, as the README's commands do on a CPU (the session's 4 forced
host devices would only add collectives).
"""

import fcntl
import importlib
import json
import os
import pathlib
import shlex
import subprocess
import sys

import ml_collections

from diffsal_jax.training import train
from tools.multiprocess_check import FAST_COMPILE_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_dir(tmp_path_factory) -> pathlib.Path:
  """The session's temp root, shared by all xdist workers."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def demo_config(config_file: str = "demo.py",
                argument: str = "") -> ml_collections.ConfigDict:
  """`configs/<config_file>[:argument]` as the runs below use it."""
  module = importlib.import_module(f"configs.{config_file.removesuffix('.py')}")
  config = module.get_config(argument) if argument else module.get_config()
  config.mesh_data_axis = 1
  return config


def command(workdir, config_file: str = "demo.py", argument: str = "",
            overrides: tuple[str, ...] = ()) -> list[str]:
  """The run's command line as the README writes it (`python3 -m ...`)."""
  config = f"configs/{config_file}" + (f":{argument}" if argument else "")
  return ["python3", "-m", "diffsal_jax.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def _train_in_child(workdir: pathlib.Path, config_file: str, argument: str,
                    overrides: tuple[str, ...]) -> None:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if f not in FAST_COMPILE_FLAGS and
           not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
  argv = [sys.executable,
          *command(workdir, config_file, argument, overrides)[1:]]
  log = workdir.parent / f"{workdir.name}.log"
  with open(log, "w") as out:
    result = subprocess.run(argv, cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, check=False)
  if result.returncode:
    raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}; "
                       f"end of {log}:\n{log.read_text()[-4000:]}")


def trained(tmp_path_factory, name: str, config_file: str = "demo.py",
            argument: str = "", overrides: tuple[str, ...] = ()
            ) -> tuple[ml_collections.ConfigDict, pathlib.Path, dict]:
  """Trains `python -m diffsal_jax.main --config=configs/<config_file>[:argument]
  [overrides]` once per session; (config reading the run's shards, workdir,
  final held-out metrics)."""
  root = shared_dir(tmp_path_factory)
  workdir = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / train.FINAL_METRICS_FILE).is_file():
      _train_in_child(workdir, config_file, argument, overrides)
  with open(workdir / train.FINAL_METRICS_FILE) as f:
    results = json.load(f)
  results.pop("split")
  config = demo_config(config_file, argument)
  for override in overrides:
    _apply(config, override)
  data = config.synthetic_data.dir or workdir / "synthetic_data"
  config.data.shards = str(pathlib.Path(data) / "shards")
  config.synthetic_data.enabled = False
  return config, workdir, results


def _apply(config: ml_collections.ConfigDict, override: str) -> None:
  """`--config.a.b=value` as the run's command line set it; other flags
  leave the config alone. Only str, int, float and bool fields: anything
  else raises rather than guess."""
  if not override.startswith("--config."):
    return
  key, value = override.removeprefix("--config.").split("=", 1)
  *parents, leaf = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  old = node[leaf]
  if isinstance(old, bool):
    node[leaf] = value.lower() == "true"
  elif isinstance(old, (str, int, float)):
    node[leaf] = type(old)(value)
  else:
    raise TypeError(f"{override}: tests/demo_run.py applies only scalar "
                    f"fields, not {type(old).__name__}")


def _flatten(config, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def changed_fields(base: ml_collections.ConfigDict,
                   target: ml_collections.ConfigDict) -> list[tuple[str, object]]:
  """(dotted key, value) of the fields where `target` differs from `base`."""
  base, target = _flatten(base), _flatten(target)
  return [(key, value) for key, value in sorted(target.items())
          if base[key] != value]


def model_flags(base: ml_collections.ConfigDict,
                target: ml_collections.ConfigDict) -> list[str]:
  """`--config.model.*` flags turning model config `base` into `target`."""
  return [f"--config.model.{key}={value!r}".replace(" ", "")
          for key, value in changed_fields(base, target)]


def check_model_flags() -> list[str]:
  """Flags turning configs/demo.py's model into demo.check_model_config's
  (the trainer tests that assert exactness, not learning)."""
  from configs import demo
  return model_flags(demo.demo_model_config("visual"),
                     demo.check_model_config("visual"))


def trained_demo(tmp_path_factory
                 ) -> tuple[ml_collections.ConfigDict, pathlib.Path, dict]:
  """The visual demo (configs/demo.py) as the README runs it."""
  return trained(tmp_path_factory, "demo_run")
