"""Every shell command shown in README.md and docs/*.md, run for real.

The commands are read from the ```bash / ```sh / ```shell / ```console blocks
(a trailing `\\` joins the next line, `#` comments are dropped, console blocks
keep only `$ ` lines). `COMMANDS` below lists each one with what makes it
cheap here; a command in the docs that is not listed, or listed but gone from
the docs, fails `test_every_doc_command_is_listed`.

Each listed command then runs once per session through bash from the
repository root, after these substitutions:
  * placeholder paths (`/tmp/...`, `/data/...`, `runs/...`, `weights/...`,
    `out/`) move under one session folder, so the commands feed each other as
    the docs chain them: the synthetic releases of docs/data.md stand in for
    /data/DHF1K and /data/stavis, the pre-training run is the fine-tuning's
    `init_from`, the fine-tuned fold is what `--mode=predict` reads;
  * published .pth files become small .npz stand-ins with the published key
    names, written for the model below (the converter reads both); the
    published code's checkout becomes tests/published_standin.py's;
  * training, evaluation and benchmark commands get the demo's check model
    (configs/demo.py: check_model_config) through `--config.model.*`
    overrides (tiny_model_config below), 2 steps and
    small batches; data commands get 32x64 frames and 2 workers.
The README's demo command is not run a second time: tests/demo_run.py runs
it as written (but the workdir) for the learning tests, and the predict
command that reads the demo's checkpoint reads that run.
Subprocesses see one CPU device (not the test session's forced 4), compile
with XLA's cheap CPU settings and share a compilation cache.

xdist: a command runs under a file lock in the session's shared temp folder;
whichever worker needs it first runs it (after the commands it reads from),
the others reuse its outputs. Only commands that need hardware or files this
machine cannot have are skipped, each with the reason.
"""

from __future__ import annotations

import dataclasses
import fcntl
import fractions
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests import demo_run
from tests import published_standin

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
SHELL_FENCES = ("bash", "sh", "shell", "console")


# ------------------------------------------------------------- extraction --

def extract_commands(markdown: str) -> list[str]:
  """Commands of the shell blocks, continuations joined, comments dropped."""
  commands, fence, pending = [], None, ""
  for line in markdown.splitlines():
    stripped = line.strip()
    if stripped.startswith("```"):
      fence = stripped[3:].strip().lower() if fence is None else None
      pending = ""
      continue
    if fence not in SHELL_FENCES:
      continue
    if fence == "console" and not pending:
      if not stripped.startswith("$ "):
        continue  # output
      stripped = stripped[2:]
    if stripped.startswith("#"):
      continue
    stripped = re.sub(r"(^|\s)#.*$", "", stripped).strip()
    if stripped.endswith("\\"):
      pending += stripped[:-1] + " "
      continue
    command = " ".join((pending + stripped).split())
    pending = ""
    if command:
      commands.append(command)
  return commands


def doc_commands() -> dict[str, list[str]]:
  """command -> the doc files that show it."""
  found: dict[str, list[str]] = {}
  for path in DOC_FILES:
    for command in extract_commands(path.read_text(encoding="utf-8")):
      found.setdefault(command, []).append(str(path.relative_to(REPO)))
  return found


# ------------------------------------------------------------- the table --

@dataclasses.dataclass(frozen=True)
class Run:
  """How one documented command runs here."""
  name: str                      # session artifact name (lock, logs)
  after: tuple[str, ...] = ()    # names of commands whose outputs it reads
  replace: tuple[tuple[str, str], ...] = ()  # literal (old, new); {S} = session dir
  append: str = ""               # extra arguments; {TINY_AV}, {TINY_VISUAL}, {SHORT}
  links: tuple[tuple[str, str], ...] = ()    # (placeholder, target) under {S}
  expect: tuple[str, ...] = ()   # files or folders that must exist afterwards
  standins: bool = False         # needs the .npz stand-ins of published weights
  video: bool = False            # needs {S}/clip.mp4
  published_standin: bool = False  # needs {S}/standin_ref (tests/published_standin.py)
  needs: tuple[str, ...] = ()    # modules it imports beyond the runtime ones
  expect_json: tuple[tuple[str, str], ...] = ()  # (file, top-level key) to find
  skip: str = ""                 # why it cannot run here
  elsewhere: str = ""            # test file that runs this exact command
  demo_run: bool = False         # reads the README demo's run (tests/demo_run.py)
  slow: bool = False


SHORT = ("--config.num_train_steps=2 --config.batch_size=2 "
         "--config.eval_batch_size=2 --config.eval_max_batches=1 "
         "--config.auc_max_frames=8")
EVAL_SHORT = "--config.eval_batch_size=2 --config.auc_max_frames=8"
STANDINS = (("diffsal_av.pth", "{S}/standin/diffsal_av.npz"),
            ("diffsal_dhf1k.pth", "{S}/standin/diffsal_dhf1k.npz"),
            ("mvit-small-p244_16x4x1_kinetics400-rgb_20221021-9ebaaeed.pth",
             "{S}/standin/mvit.npz"),
            ("vggish-10086976.pth", "{S}/standin/vggish.npz"))
NEEDS_GPUS = "needs a machine with 4 GPUs (sets CUDA_VISIBLE_DEVICES=0,1,2,3)"
NEEDS_SLURM = "needs a SLURM cluster (sbatch, several GPU nodes, shared storage)"

COMMANDS: dict[str, Run] = {
    # ---- README: set-up
    "python3 -m diffsal_jax.main --config=configs/demo.py --workdir=/tmp/diffsal_demo":
        Run("demo", elsewhere="tests/demo_run.py"),
    "python3 -m pytest -n 2 tests":
        Run("suite_collect", append="--collect-only -q -p no:cacheprovider"),
    # ---- README: predict
    "python3 -m diffsal_jax.predict --video clip.mp4 --checkpoint /tmp/diffsal_demo "
    "--config configs/demo.py --out out/":
        Run("predict_demo", demo_run=True, video=True,
            links=(("tmp/diffsal_demo", "../demo_run"),),
            replace=(("--out out/", "--out {S}/out/demo/"),),
            append="--noprogress", expect=("out/demo/clip/overlay.mp4",
                                           "out/demo/clip/maps/00001.png")),
    "python3 -m diffsal_jax.predict --video clip.mp4 --checkpoint weights/diffsal_av "
    "--config configs/av_finetune.py --out out/":
        Run("predict_av", after=("convert_av",), video=True, slow=True,
            replace=(("--out out/", "--out {S}/out/av/"),),
            append="{TINY_AV} --noprogress",
            expect=("out/av/clip/overlay.mp4",)),
    # ---- README / docs/training.md: convert
    "python3 -m diffsal_jax.convert --checkpoint diffsal_av.pth "
    "--config configs/av_finetune.py --out weights/diffsal_av":
        Run("convert_av", standins=True, append="{TINY_AV}",
            expect=("weights/diffsal_av",)),
    "python3 -m diffsal_jax.convert --checkpoint diffsal_dhf1k.pth "
    "--config configs/pretrain.py --out weights/diffsal_visual":
        Run("convert_visual", standins=True,
            append="{TINY_VISUAL}", expect=("weights/diffsal_visual",)),
    "python3 -m diffsal_jax.convert --checkpoint "
    "mvit-small-p244_16x4x1_kinetics400-rgb_20221021-9ebaaeed.pth --checkpoint "
    "vggish-10086976.pth --config configs/av_finetune.py --out weights/init_av":
        Run("convert_init", standins=True, append="{TINY_AV}",
            expect=("weights/init_av",)),
    # ---- README: pre-train
    "python -m data_prep convert --dataset dhf1k --src /data/DHF1K "
    "--dst /data/dhf1k_shards --workers 16":
        Run("shards_dhf1k", after=("synth_dhf1k",),
            links=(("data/DHF1K", "tmp/raw_dhf1k"),),
            replace=(("--workers 16", "--workers 2"),),
            append="--height 32 --width 64",
            expect=("data/dhf1k_shards/manifest.json",)),
    "python -m diffsal_jax.main --config=configs/pretrain.py --workdir=runs/pretrain "
    "--config.data.shards=/data/dhf1k_shards":
        Run("pretrain", after=("shards_dhf1k",), slow=True,
            append="{TINY_VISUAL} {SHORT}",
            expect=("runs/pretrain/final_metrics.json",)),
    # ---- README: fine-tune
    "python -m data_prep convert --dataset av --src /data/stavis "
    "--dst /data/av_shards --workers 16":
        Run("shards_av", after=("synth_av",),
            links=(("data/stavis", "tmp/raw_av"),),
            replace=(("--workers 16", "--workers 2"),),
            append="--height 32 --width 64",
            expect=("data/av_shards/manifest.json",)),
    "python -m diffsal_jax.main --config=configs/av_finetune.py:fold=2 "
    "--workdir=runs/av/fold_2 --config.data.shards=/data/av_shards "
    "--config.init_from=weights/diffsal_av,runs/pretrain":
        Run("finetune_fold2", after=("shards_av", "convert_av", "pretrain"),
            slow=True, append="{TINY_AV} {SHORT}",
            expect=("runs/av/fold_2/final_metrics.json",)),
    "python -m diffsal_jax.main --mode=all_folds --config=configs/av_finetune.py "
    "--workdir=runs/av --config.data.shards=/data/av_shards "
    "--config.init_from=weights/diffsal_av,runs/pretrain":
        Run("all_folds", after=("finetune_fold2",), slow=True,
            append="{TINY_AV} {SHORT}",
            expect=("runs/av/all_folds_metrics.json",)),
    # ---- README: evaluate
    "python -m diffsal_jax.main --mode=evaluate --config=configs/pretrain.py "
    "--workdir=runs/pretrain --config.data.shards=/data/dhf1k_shards --split=val "
    "--report=runs/pretrain/report":
        Run("evaluate_mode", after=("pretrain",), append="{TINY_VISUAL} {EVAL_SHORT}",
            expect=("runs/pretrain/eval_val.json",
                    "runs/pretrain/report/index.html")),
    "python -m diffsal_jax.main --mode=predict --config=configs/pretrain.py "
    "--workdir=runs/pretrain --config.data.shards=/data/dhf1k_shards --split=val":
        Run("predict_mode", after=("pretrain",), append="{TINY_VISUAL} {EVAL_SHORT}",
            expect=("runs/pretrain/predictions/val",)),
    "python -m diffsal_jax.evaluate --pred runs/pretrain/predictions/val "
    "--data /data/DHF1K --dataset dhf1k --workers 2 --report runs/pretrain/report_val":
        Run("evaluate_dhf1k", after=("predict_mode", "shards_dhf1k"),
            append="--noprogress",
            expect=("runs/pretrain/predictions/val/metrics_dhf1k.json",
                    "runs/pretrain/report_val/index.html")),
    "python -m diffsal_jax.main --mode=predict --config=configs/av_finetune.py:fold=2 "
    "--workdir=runs/av/fold_2 --config.data.shards=/data/av_shards --split=test":
        Run("predict_mode_av", after=("finetune_fold2",),
            append="{TINY_AV} {EVAL_SHORT}",
            expect=("runs/av/fold_2/predictions/test",)),
    "python -m diffsal_jax.evaluate --pred runs/av/fold_2/predictions/test --fold 2 "
    "--data /data/av_shards --dataset avad":
        Run("evaluate_avad", after=("predict_mode_av",), append="--noprogress",
            expect=("runs/av/fold_2/predictions/test/metrics_avad.json",)),
    # ---- docs/data.md
    "python -m data_prep synth --layout av --dst /tmp/raw_av":
        Run("synth_av", expect=("tmp/raw_av/fold_lists",)),
    "python -m data_prep synth --layout dhf1k --dst /tmp/raw_dhf1k":
        Run("synth_dhf1k", expect=("tmp/raw_dhf1k/annotation",)),
    "python -m data_prep convert --dataset av --src /tmp/raw_av --dst /tmp/shards_av":
        Run("shards_av_example", after=("synth_av",),
            append="--height 32 --width 64 --workers 2",
            expect=("tmp/shards_av/manifest.json",)),
    "python -m data_prep verify /tmp/shards_av":
        Run("verify", after=("shards_av_example",), append="--noprogress"),
    # ---- docs/performance.md
    "git clone https://github.com/junwenxiong/diff_sal .ref/diff_sal":
        Run("clone_reference", skip="clones the published code from GitHub "
                                    "(network); the benchmark below reads a stand-in"),
    "python3 -m pip install -e .[published]":
        Run("install_published", skip="installs packages from PyPI (network)"),
    "python -m tools.benchmarks.train_step --config=configs/av_finetune.py "
    "--size=published --repeats=3 --profile_top=12 --reference=.ref/diff_sal "
    "--json=bench_av.json":
        Run("bench_train_step", slow=True, published_standin=True, needs=("torch",),
            replace=(("--size=published", "--size=config"),
                     ("--repeats=3", "--repeats=1"),
                     ("--reference=.ref/diff_sal", "--reference={S}/standin_ref"),
                     ("--json=bench_av.json", "--json={S}/bench_av.json")),
            append="{TINY_AV} --sampling_steps=1 --noloader",
            expect=("bench_av.json",), expect_json=(("bench_av.json", "published"),)),
    "python -m tools.benchmarks.loader_speed --layout av":
        Run("bench_loader",
            append="--videos 2 --frames 12 --raw_height 60 --raw_width 96 "
                   "--height 32 --width 64 --clip_len 4 --batch_size 2 "
                   "--batches 2 --modes threads --workdir {S}/loader_bench "
                   "--json {S}/loader.json"),
    "python -m tools.benchmarks.metrics_speed":
        Run("bench_metrics",
            append="--videos 2 --frames 4 --height 36 --width 64 "
                   "--pred_height 32 --pred_width 64 --workers 1 --noprogress "
                   "--json {S}/metrics_speed.json"),
    "python -m tools.benchmarks.startup":
        Run("bench_startup",
            append="--sizes=demo --programs=sampler --demo_runs= "
                   "--json={S}/startup.json",
            expect=("startup.json",), expect_json=(("startup.json", "compile"),)),
    "python -m tools.benchmarks.report_speed":
        Run("bench_report",
            append="--videos 2 --frames 10 --height 36 --width 64 "
                   "--report_frames 2 --workers 1 --json {S}/report_speed.json",
            expect=("report_speed.json",)),
    # ---- docs/multi_host.md
    "GPUS=0,1,2,3 launch/local_gpus.sh configs/pretrain.py runs/pretrain "
    "--config.data.shards=/data/dhf1k_shards":
        Run("local_gpus", skip=NEEDS_GPUS),
    "sbatch --nodes=4 --gpus-per-node=4 launch/slurm.sbatch configs/pretrain.py "
    "/shared/runs/pretrain --config.data.shards=/shared/data/dhf1k_shards":
        Run("slurm_node", skip=NEEDS_SLURM),
    "TASKS=per_gpu sbatch --nodes=4 --ntasks-per-node=4 --gpus-per-node=4 "
    "launch/slurm.sbatch configs/av_finetune.py:fold=1 /shared/runs/av/fold_1 "
    "--config.data.shards=/shared/data/av_shards "
    "--config.init_from=/shared/weights/diffsal_av,/shared/runs/pretrain":
        Run("slurm_gpu", skip=NEEDS_SLURM),
    "TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/pretrain.py "
    "/mnt/shared/runs/pretrain --config.data.shards=/mnt/shared/dhf1k_shards":
        Run("tpu_pod", skip="needs a Cloud TPU pod slice and gcloud credentials"),
    "launch/two_process_cpu.sh":
        Run("two_process_cpu", elsewhere="tests/test_multiprocess.py"),
    # ---- docs/device_check.md
    "git --git-dir=MIRROR archive HEAD | tar -x -C .ref/diff_sal":
        Run("device_ref", skip="needs a local mirror of junwenxiong/diff_sal "
                               "(the published code) for the device machine"),
    "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 "
    "--implementation cp --platform manylinux_2_28_x86_64 --platform "
    "manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "
    "ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 "
    "simplejpeg==1.9.0 soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 av==18.1.0":
        Run("device_wheels", skip="downloads wheels from PyPI for the GPU "
                                  "device machine (network)"),
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
    "--upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD "
    "|| exit; PYTHONUNBUFFERED=1 python3 tools/device_check.py --out=$OUT "
    "--reference=.ref/diff_sal":
        Run("device_check", skip="needs the GPU device machine (H200) and the "
                                 ".whl/.ref folders of the two commands above; "
                                 "tests/test_device_check.py runs its CPU dry run"),
}


# ------------------------------------------------------------ the runner --

def tiny_model_config(variant: str):
  """The model the documented commands run here: the demo's check model
  (configs/demo.py: check_model_config; a third of the demo model's compile)
  without recomputation (less to compile; a model this small needs none)."""
  from configs import demo
  tiny = demo.check_model_config(variant)
  tiny.mvit.remat = False
  return tiny


def tiny_model_overrides(variant: str) -> str:
  """`--config.model.*` flags turning a published config into
  tiny_model_config."""
  from diffsal_jax.models import config as model_config
  return " ".join(shlex.quote(flag) for flag in demo_run.model_flags(
      model_config.published_model_config(variant), tiny_model_config(variant)))


_PLACEHOLDER = re.compile(r"(?<=[\s=,])(/tmp/|/data/|runs/|weights/|out/)")


def prepared_command(command: str, run: Run, session: pathlib.Path) -> str:
  for old, new in run.replace:
    assert old in command, (run.name, old)
    command = command.replace(old, new)
  if run.standins:
    for old, new in STANDINS:
      command = command.replace(old, new)
  command = _PLACEHOLDER.sub(lambda m: f"{{S}}/{m.group(1).strip('/')}/", command)
  command = re.sub(r"(?<=\s)clip\.mp4(?=\s)", "{S}/clip.mp4", command)
  words = command.split(" ", 1)
  if words[0] in ("python", "python3"):
    command = f"{sys.executable} {words[1]}"
  append = run.append.format(SHORT=SHORT, EVAL_SHORT=EVAL_SHORT, S="{S}",
                             TINY_AV=tiny_model_overrides("av") if "TINY_AV" in run.append else "",
                             TINY_VISUAL=tiny_model_overrides("visual")
                             if "TINY_VISUAL" in run.append else "")
  return f"{command} {append}".strip().replace("{S}", str(session))


def _env(session: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  # The session's compilation cache and cheap compile flags
  # (tests/conftest.py) are inherited.
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu",
             PYTHON=sys.executable, PYTHONUNBUFFERED="1")
  return env


def _write_standins(folder: pathlib.Path) -> None:
  """Torch-named state dicts of tiny_model_config, as .npz (no torch)."""
  import numpy as np
  from flax import traverse_util
  from diffsal_jax.models import api as model_lib
  from diffsal_jax.models import torch_weights

  def state_dict(variant):
    _, abstract = model_lib.abstract_variables(tiny_model_config(variant))
    rng = np.random.default_rng(0)
    state = {}
    for collection in abstract:
      for path, spec in traverse_util.flatten_dict(abstract[collection]).items():
        key, leaf = torch_weights.torch_key(path), str(path[-1])
        if leaf in ("var", "scale"):
          value = np.ones(spec.shape, spec.dtype)
        elif leaf in ("mean", "bias"):
          value = np.zeros(spec.shape, spec.dtype)
        else:
          value = (0.02 * rng.standard_normal(spec.shape)).astype(spec.dtype)
        if key.endswith(".weight") and value.ndim >= 2:  # torch layout
          value = np.moveaxis(value, (-1, -2), (0, 1)) if value.ndim > 2 else value.T
        state[key] = value
    return state

  folder.mkdir(parents=True, exist_ok=True)
  av, visual = state_dict("av"), state_dict("visual")
  np.savez(folder / "diffsal_av.npz", **av)
  np.savez(folder / "diffsal_dhf1k.npz", **visual)
  np.savez(folder / "mvit.npz", **{  # mmaction2 names
      "backbone." + k.removeprefix("visual_net."): v for k, v in av.items()
      if k.startswith("visual_net.")})
  np.savez(folder / "vggish.npz", **{  # torchvggish names
      k.removeprefix("audio_net."): v for k, v in av.items()
      if k.startswith("audio_net.")})


def _write_clip(path: pathlib.Path, frames: int = 12, fps: int = 8,
                rate: int = 16000) -> None:
  """A short mp4: a disc crossing a gradient, H.264 + an AAC tone."""
  import av
  import numpy as np
  yy, xx = np.mgrid[0:72, 0:128]
  audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(frames * rate // fps) / rate)
           * 32767).astype(np.int16)
  tmp = path.with_suffix(".tmp.mp4")
  with av.open(str(tmp), "w") as container:
    video = container.add_stream("libx264", rate=fractions.Fraction(fps))
    video.height, video.width, video.pix_fmt = 72, 128, "yuv420p"
    sound = container.add_stream("aac", rate=rate, layout="mono")
    for i in range(frames):
      image = np.repeat((xx * 2 % 256)[..., None], 3, -1).astype(np.uint8)
      image[(yy - 36) ** 2 + (xx - 10 - 9 * i) ** 2 < 100] = (250, 40, 40)
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    chunk = av.AudioFrame.from_ndarray(audio[None], format="s16", layout="mono")
    chunk.sample_rate, chunk.pts = rate, 0
    container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))
  tmp.rename(path)


def _locked(session: pathlib.Path, name: str):
  lock = open(session / f"{name}.lock", "w")  # pylint: disable=consider-using-with
  fcntl.flock(lock, fcntl.LOCK_EX)
  return lock


def _prepare_once(session: pathlib.Path, name: str, make) -> None:
  with _locked(session, name):
    if not (session / f"{name}.ready").exists():
      make()
      (session / f"{name}.ready").touch()


BY_NAME = {run.name: (command, run) for command, run in COMMANDS.items()}


def ensure_ran(session: pathlib.Path, name: str) -> str:
  """Runs a listed command once per session (deps first); returns its log."""
  command, run = BY_NAME[name]
  with _locked(session, name):
    done, failed = session / f"{name}.done", session / f"{name}.failed"
    if done.exists():
      return done.read_text()
    if failed.exists():
      pytest.fail(f"{name} failed earlier in this session:\n{failed.read_text()}")
    for dep in run.after:
      ensure_ran(session, dep)
    if run.standins:
      _prepare_once(session, "standins", lambda: _write_standins(session / "standin"))
    if run.video:
      _prepare_once(session, "clip", lambda: _write_clip(session / "clip.mp4"))
    if run.published_standin:
      _prepare_once(session, "published_standin",
                    lambda: published_standin.write_standin(session / "standin_ref"))
    for placeholder, target in run.links:
      link = session / placeholder
      if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(session / target, target_is_directory=True)
    shell = prepared_command(command, run, session)
    start = time.monotonic()
    result = subprocess.run(["bash", "-c", shell], cwd=REPO, env=_env(session),
                            capture_output=True, text=True, timeout=900,
                            check=False)
    seconds = time.monotonic() - start
    log = (f"$ {shell}\n(exit {result.returncode}, {seconds:.0f} s)\n"
           f"--- stdout (end)\n{result.stdout[-4000:]}\n"
           f"--- stderr (end)\n{result.stderr[-6000:]}")
    missing = [p for p in run.expect if not (session / p).exists()]
    missing += [f"{key} in {p}" for p, key in run.expect_json
                if (session / p).is_file() and
                key not in json.loads((session / p).read_text())]
    if result.returncode or missing:
      failed.write_text(log + (f"\nmissing outputs: {missing}" if missing else ""))
      pytest.fail(failed.read_text())
    done.write_text(log)
    return log


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> pathlib.Path:
  """One folder for every xdist worker of this session."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  folder = base / "docs_commands"
  folder.mkdir(exist_ok=True)
  return folder


# Test order: xdist hands each worker a run of consecutive tests (4 each
# here), so the long chain (pre-train -> fine-tune -> all folds) and the
# other trainings start first on different workers, and a test that waits
# for a chain comes when that chain should be done.
FIRST = ("pretrain", "finetune_fold2", "all_folds", "evaluate_mode",
         "predict_av", "bench_train_step", "predict_mode_av", "convert_init")
LAST = ("evaluate_avad",)


def _params():
  params = []
  rank = lambda item: (FIRST.index(item[1].name) if item[1].name in FIRST
                       else len(FIRST) + (item[1].name in LAST))
  for command, run in sorted(COMMANDS.items(), key=rank):
    marks = []
    if run.skip:
      marks.append(pytest.mark.skip(reason=run.skip))
    if run.slow:
      marks.append(pytest.mark.slow)
    if run.demo_run:   # on the worker that trains it (tests/conftest.py)
      marks.append(pytest.mark.xdist_group("demo_run"))
    params.append(pytest.param(command, run, id=run.name, marks=marks))
  return params


@pytest.mark.parametrize("command,run", _params())
def test_doc_command_runs(command, run, session_dir, tmp_path_factory):
  if run.elsewhere == "tests/demo_run.py":
    assert shlex.join(demo_run.command("/tmp/diffsal_demo")) == command
    pytest.skip("run by tests/demo_run.py for the learning tests (same "
                "command line but the workdir)")
  if run.elsewhere:
    source = (REPO / run.elsewhere).read_text()
    assert command in source, f"{run.elsewhere} no longer runs {command!r}"
    pytest.skip(f"run by {run.elsewhere} (same command line)")
  for module in run.needs:
    pytest.importorskip(module, reason=f"{run.name} needs {module} "
                        "(pip install -e .[published])")
  if run.demo_run:
    demo_run.trained_demo(tmp_path_factory)
  log = ensure_ran(session_dir, run.name)
  assert "(exit 0," in log


def test_extraction_rules():
  text = "\n".join([
      "```bash", "# a comment", "python -m a --x=1 \\", "    --y=2  # why",
      "", "B=1 launch/s.sh", "```", "```python", "print(1)", "```",
      "```console", "$ tool --flag", "output line", "```", "```", "plain", "```"])
  assert extract_commands(text) == ["python -m a --x=1 --y=2",
                                    "B=1 launch/s.sh", "tool --flag"]


def test_every_doc_command_is_listed():
  found = doc_commands()
  unlisted = sorted(set(found) - set(COMMANDS))
  gone = sorted(set(COMMANDS) - set(found))
  assert not unlisted, ("doc commands missing from COMMANDS (add them with how "
                        "they run): " + "\n  ".join(
                            f"{c}  [{', '.join(found[c])}]" for c in unlisted))
  assert not gone, "COMMANDS no doc shows any more:\n  " + "\n  ".join(gone)
  names = [run.name for run in COMMANDS.values()]
  assert len(names) == len(set(names))
  by_name = {run.name: run for run in COMMANDS.values()}
  for run in COMMANDS.values():
    for dep in run.after:
      assert dep in by_name and not by_name[dep].skip, (run.name, dep)
