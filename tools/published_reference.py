"""Builds and times the published PyTorch DiffSal AV model from a checkout of
its code (never copied here), for `tools/device_check.py`.

The published model files import three things from mmcv (Config, Registry /
build_from_cfg, get_logger). mmcv has no cp312 wheel worth carrying to the GPU
machine, so `install_mmcv_shim` registers minimal `mmcv`, `mmcv.utils` and
`mmcv.utils.registry` modules in `sys.modules` providing just those, with the
behaviour the model files rely on (mmcv 1.x: `build_from_cfg` copies the
config, pops `type` and calls it with the rest; `Config.fromfile` executes a
Python config file and exposes its top-level names). The config
`cfgs/audio_visual.py` also imports the dataset classes (which pull in
resampy, soundfile, cv2...); building the model never touches them, so they
are replaced by named placeholders while the config file runs.

Everything else -- MViT, VGGish, AudioAttnNet, SalUNet, the loss
(`models.sal_losses.get_lossv2`) and the optimiser settings
(`cfgs/diffusion.yml`: Adam lr 1e-4, betas (0.9, 0.999), eps 1e-8, grad clip
1.0) -- is the published code itself, with random weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pathlib
import statistics
import sys
import time
import types
from typing import Any

_DATASET_MODULES = {"datasets.dhf1k_data": "DHF1KDatasetMultiFrames",
                    "datasets.holly2wood_dataset": "HollyDataset",
                    "datasets.ucf_dataset": "UCFDataset"}


class Registry:
  """mmcv.utils.Registry as the published code uses it: `register_module()`
  as a class decorator and `build(cfg)`."""

  def __init__(self, name: str):
    self.name = name
    self.module_dict: dict[str, type] = {}

  def register_module(self, name: str | None = None, force: bool = False):
    def register(cls):
      key = name or cls.__name__
      if key in self.module_dict and not force:
        raise KeyError(f"{key} is already registered in {self.name}")
      self.module_dict[key] = cls
      return cls
    return register

  def get(self, key: str):
    return self.module_dict.get(key)

  def build(self, cfg: dict, default_args: dict | None = None):
    return build_from_cfg(cfg, self, default_args)


def build_from_cfg(cfg: dict, registry: Registry,
                   default_args: dict | None = None):
  """mmcv 1.x semantics: the caller's dict is left intact (VideoSaliencyModel
  pops `type` from it after building); `type` is a class or a registered name."""
  if not isinstance(cfg, dict) or "type" not in cfg:
    raise TypeError(f"build_from_cfg needs a dict with 'type', got {cfg!r}")
  args = dict(cfg)
  for key, value in (default_args or {}).items():
    args.setdefault(key, value)
  obj_type = args.pop("type")
  if isinstance(obj_type, str):
    cls = registry.get(obj_type)
    if cls is None:
      raise KeyError(f"{obj_type} is not registered in {registry.name}")
  else:
    cls = obj_type
  return cls(**args)


def get_logger(name: str, log_file: str | None = None,
               log_level: int = logging.INFO) -> logging.Logger:
  logger = logging.getLogger(name)
  logger.setLevel(log_level)
  return logger


class Config(dict):
  """mmcv.Config.fromfile for a Python config: its public top-level names."""

  @staticmethod
  def fromfile(path: str | os.PathLike) -> "Config":
    path = pathlib.Path(path)
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "__config__"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return Config({k: v for k, v in namespace.items()
                   if not k.startswith("__") and not isinstance(v, types.ModuleType)})

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError as e:
      raise AttributeError(key) from e


def install_mmcv_shim() -> None:
  """Registers the `mmcv` stand-in modules (only where mmcv is absent)."""
  if "mmcv" in sys.modules:
    return
  try:
    import mmcv  # noqa: F401  a real mmcv wins
    return
  except ImportError:
    pass
  mmcv = types.ModuleType("mmcv")
  utils = types.ModuleType("mmcv.utils")
  registry = types.ModuleType("mmcv.utils.registry")
  registry.Registry, registry.build_from_cfg = Registry, build_from_cfg
  utils.Registry, utils.build_from_cfg, utils.get_logger = (
      Registry, build_from_cfg, get_logger)
  utils.registry = registry
  mmcv.Config, mmcv.utils, mmcv.__version__ = Config, utils, "shim"
  sys.modules.update({"mmcv": mmcv, "mmcv.utils": utils,
                      "mmcv.utils.registry": registry})


def _placeholder_class(name: str) -> type:
  def refuse(*args, **kwargs):
    raise RuntimeError(f"{name}: the device check builds the model only; "
                       "the published datasets are not loaded")
  return type(name, (), {"__init__": refuse})


@contextlib.contextmanager
def _in_reference(root: pathlib.Path):
  """cwd and sys.path at the checkout (its config opens cfgs/diffusion.yml
  relative to the cwd), dataset modules replaced while the config runs."""
  old_cwd, saved = os.getcwd(), {k: sys.modules.get(k) for k in _DATASET_MODULES}
  sys.path.insert(0, str(root))
  for module, cls in _DATASET_MODULES.items():
    placeholder = types.ModuleType(module)
    setattr(placeholder, cls, _placeholder_class(cls))
    sys.modules[module] = placeholder
  os.chdir(root)
  try:
    yield
  finally:
    os.chdir(old_cwd)
    for module, previous in saved.items():
      if previous is None:
        sys.modules.pop(module, None)
      else:
        sys.modules[module] = previous


def load_reference(root: str | os.PathLike) -> dict[str, Any]:
  """The published AV model (random weights, train mode) and its training
  settings. `root`: a checkout of the published code (holding `model.py`,
  `cfgs/audio_visual.py`). Raises FileNotFoundError naming the missing file.

  Returns {'model': torch.nn.Module, 'config': the cfgs/diffusion.yml
  namespace, 'get_lossv2': the published loss, 'params_m': parameter count in
  millions}. VGGish is built with `pretrained=False` (its weights file is not
  shipped) and MViT's checkpoint path is never read (`init_weights` is not
  called), so all weights are random."""
  root = pathlib.Path(root).resolve()
  for name in ("model.py", "cfgs/audio_visual.py", "cfgs/diffusion.yml",
               "models/diff_model.py"):
    if not (root / name).is_file():
      raise FileNotFoundError(
          f"{root / name} is missing: --reference must point at a checkout of "
          "the published DiffSal code (git archive of junwenxiong/diff_sal)")
  install_mmcv_shim()
  with _in_reference(root):
    cfg = Config.fromfile(root / "cfgs" / "audio_visual.py")
    from util.registry import OBJECT_REGISTRY   # noqa: E402  (the checkout's)
    from models.sal_losses import get_lossv2
    model_cfg = copy.deepcopy(dict(cfg["config"]))
    model_cfg["audio_net"] = dict(model_cfg["audio_net"], pretrained=False)
    model_cfg["visual_net"] = dict(model_cfg["visual_net"], pretrained=None)
    # The constructor prints parameter counts; keep the log quiet.
    with contextlib.redirect_stdout(open(os.devnull, "w")):
      model = build_from_cfg(model_cfg, OBJECT_REGISTRY)
  params = sum(p.numel() for p in model.parameters())
  return {"model": model, "config": cfg["new_config"], "get_lossv2": get_lossv2,
          "params_m": params / 1e6}


def time_train_step(ref: dict[str, Any], *, batch: int, dtype: str,
                    repeats: int, warmup: int = 2, clip_len: int = 16,
                    image_size: tuple[int, int] = (224, 384),
                    audio_patches: int = 9,
                    audio_size: tuple[int, int] = (112, 192),
                    device: str = "cuda") -> dict[str, Any]:
  """Median wall time of the published train step on random inputs.

  The step is `diffusion_trainer.DiffusionTrainer.train_av_data`'s inner loop:
  model(data, t) -> get_lossv2 (x0 target, MSE summed over pixels) ->
  zero_grad -> backward -> clip_grad_norm_(1.0) -> Adam step over all
  parameters (VGGish runs under no_grad, so it is frozen as published).
  Inputs follow the published layout: img (B, 3, T, H, W), audio (B, 1, P,
  112, 192), noisy map (B, 1, H, W), t (B,) int64. `dtype` 'float32' (TF32
  matmuls/convs allowed, as set by the caller) or 'bfloat16'
  (torch.autocast; the loss is taken in float32). The noising arithmetic and
  nn.DataParallel wrapper of the trainer are left out (one GPU).

  Returns median/min/max seconds, clips/s, peak allocated GiB
  (torch.cuda.max_memory_allocated) and FLOPs per step counted by
  torch.utils.flop_counter where available."""
  import torch
  model, config = ref["model"], ref["config"]
  model.to(device).train()
  opt = config.optim
  optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999),
                               eps=opt.eps, weight_decay=opt.weight_decay,
                               amsgrad=opt.amsgrad)
  g = torch.Generator(device="cpu").manual_seed(0)
  h, w = image_size

  def rand(*shape):
    return torch.randn(*shape, generator=g).to(device)

  data = {"img": rand(batch, 3, clip_len, h, w),
          "input": rand(batch, 1, h, w),
          "train_obj": torch.rand(batch, 1, h, w, generator=g).to(device),
          "audio": rand(batch, 1, audio_patches, *audio_size)}
  t = torch.full((batch,), 437, dtype=torch.int64, device=device)
  autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
              if dtype == "bfloat16" else contextlib.nullcontext())
  cuda = device.startswith("cuda")

  def sync():
    if cuda:
      torch.cuda.synchronize()

  def step():
    with autocast:
      pred = model(data, t)
    loss = ref["get_lossv2"](config, pred.float(), data["train_obj"])["total"]
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
    optimizer.step()
    return loss

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  started = time.perf_counter()
  for _ in range(max(warmup, 1)):
    step()
  sync()
  warmup_s = time.perf_counter() - started
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - started)
  peak_gb = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
  flops = None
  try:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
      step()
    sync()
    flops = float(counter.get_total_flops()) or None
  except Exception as e:   # a counter failure must not lose the timing
    logging.getLogger(__name__).warning("torch FLOP count failed: %s", e)
  median = statistics.median(times)
  return {"batch": batch, "dtype": dtype, "median_s": median, "min_s": min(times),
          "max_s": max(times), "times_s": times, "warmup_s": warmup_s,
          "clips_per_s": batch / median, "device_peak_gb": peak_gb,
          "flops": flops, "achieved_tflops": flops / median / 1e12 if flops else None}
