"""Builds and times the published PyTorch DiffSal AV model from a checkout of
its code (never copied here), for `tools/device_check.py` and
`tools/benchmarks/train_step.py --reference`.

The published model files import three things from mmcv (Config, Registry /
build_from_cfg, get_logger). mmcv has no cp312 wheel worth carrying to the GPU
machine, so `install_mmcv_shim` registers minimal `mmcv`, `mmcv.utils` and
`mmcv.utils.registry` modules in `sys.modules` providing just those, with the
behaviour the model files rely on (mmcv 1.x: `build_from_cfg` copies the
config, pops `type` and calls it with the rest; `Config.fromfile` executes a
Python config file and exposes its top-level names). The config
`cfgs/audio_visual.py` also imports the dataset classes (which pull in
resampy, soundfile, cv2...); building the model never touches them, so they
are replaced by named placeholders while the config file runs. Likewise,
where timm is absent, `install_timm_shim` provides the three timm names the
model files import (DropPath, trunc_normal_, to_2tuple).

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
from typing import Any, Callable

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


def install_timm_shim() -> None:
  """Registers `timm.models.layers` with the three names the published model
  files import (only where timm is absent): DropPath (stochastic depth per
  sample, scaled by the keep probability), trunc_normal_ (torch's) and
  to_2tuple. timm itself pins a torchvision that must match torch's build."""
  try:
    import timm  # noqa: F401  pylint: disable=unused-import  (a real timm wins)
    return
  except ImportError:
    pass
  import torch

  class DropPath(torch.nn.Module):
    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
      super().__init__()
      self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
      if self.drop_prob == 0.0 or not self.training:
        return x
      keep = 1.0 - self.drop_prob
      mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
      return x * (mask / keep if keep > 0 and self.scale_by_keep else mask)

  def to_2tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)

  names = ("timm", "timm.models", "timm.models.layers")
  modules = {name: types.ModuleType(name) for name in names}
  layers = modules["timm.models.layers"]
  layers.DropPath, layers.to_2tuple = DropPath, to_2tuple
  layers.trunc_normal_ = torch.nn.init.trunc_normal_
  modules["timm"].models, modules["timm.models"].layers = modules["timm.models"], layers
  sys.modules.update(modules)


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
  install_timm_shim()
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


PUBLISHED_SHAPES = {"clip_len": 16, "image_size": (224, 384), "audio_patches": 9,
                    "audio_size": (112, 192)}


def random_inputs(*, batch: int, clip_len: int, image_size: tuple[int, int],
                  audio_patches: int, audio_size: tuple[int, int], device: str,
                  seed: int = 0) -> dict[str, Any]:
  """Random inputs in the published layout: img (B, 3, T, H, W), audio
  (B, 1, P, 112, 192) log-mel patches, noisy map `input` (B, 1, H, W) and
  target `train_obj` (B, 1, H, W), float32 on `device`."""
  import torch
  g = torch.Generator(device="cpu").manual_seed(seed)
  h, w = image_size

  def rand(*shape):
    return torch.randn(*shape, generator=g).to(device)

  return {"img": rand(batch, 3, clip_len, h, w), "input": rand(batch, 1, h, w),
          "train_obj": torch.rand(batch, 1, h, w, generator=g).to(device),
          "audio": rand(batch, 1, audio_patches, *audio_size)}


def _synchronize(device: str) -> None:
  import torch
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def train_step_call(ref: dict[str, Any], data: dict[str, Any], *, dtype: str,
                    device: str) -> Callable[[], float]:
  """One published train step per call (finished on return); returns the loss.

  The step is `diffusion_trainer.DiffusionTrainer.train_av_data`'s inner loop:
  model(data, t) -> get_lossv2 (x0 target, MSE summed over pixels) ->
  zero_grad -> backward -> clip_grad_norm_(1.0) -> Adam step over all
  parameters (VGGish runs under no_grad, so it is frozen as published).
  `data` from `random_inputs`. `dtype` 'float32' (TF32 matmuls/convs where
  the caller allows them) or 'bfloat16' (torch.autocast; the loss is taken
  in float32). The noising arithmetic and the nn.DataParallel wrapper of the
  trainer are left out (one device)."""
  import torch
  model, config = ref["model"], ref["config"]
  model.to(device)
  opt = config.optim
  optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999),
                               eps=opt.eps, weight_decay=opt.weight_decay,
                               amsgrad=opt.amsgrad)
  t = torch.full((data["img"].shape[0],), 437, dtype=torch.int64, device=device)
  autocast = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
              if dtype == "bfloat16" else contextlib.nullcontext())

  def step() -> float:
    model.train()   # each call: a sampler call in between sets eval mode
    with autocast:
      pred = model(data, t)
    loss = ref["get_lossv2"](config, pred.float(), data["train_obj"])["total"]
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
    optimizer.step()
    _synchronize(device)
    return loss.item()

  return step


def sampler_call(ref: dict[str, Any], data: dict[str, Any],
                 steps: list[tuple[int, float, float]], *, device: str
                 ) -> Callable[[], Any]:
  """The published DDIM sampler (x0 target, eta 0) per call, finished on
  return; returns the predicted map (B, 1, H, W).

  Follows `diffusion_trainer.DiffusionTrainer.sample_image` and
  `sample_ddim`: both encoders once (VGGish + AudioAttnNet, MViT), then per
  step a fresh copy of the visual features (the published loop deep-copies
  them) and one SalUNet call on (x_t, t). `steps`: (t, alphas_cumprod[t],
  alphas_cumprod[t_next] or None for the last step), from the published
  cosine schedule."""
  import torch
  model = ref["model"]
  model.to(device)
  x_noise, img = data["input"], data["img"]
  audio = data["audio"] if model.audio_net is not None else None

  @torch.no_grad()
  def sample():
    model.eval()   # each call: a train step in between sets train mode
    audio_embed = model.forward_vggish(audio)[1] if audio is not None else None
    features = model.visual_net(img)
    x = x_noise
    for t, alpha, alpha_next in steps:
      t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=device)
      x0 = model.decoder_net(x, t_batch, [f.clone() for f in features],
                             audio_embed)
      if alpha_next is None:
        x = x0
        break
      noise = (x - alpha ** 0.5 * x0) / (1 - alpha) ** 0.5
      x = alpha_next ** 0.5 * x0 + (1 - alpha_next) ** 0.5 * noise
    _synchronize(device)
    return x

  return sample


def time_train_step(ref: dict[str, Any], *, batch: int, dtype: str,
                    repeats: int, warmup: int = 2, device: str = "cuda",
                    **shapes) -> dict[str, Any]:
  """Median wall time of the published train step (`train_step_call`) on
  random inputs at the published shapes (or `shapes`, keys of
  PUBLISHED_SHAPES), after `warmup` steps.

  Returns median/min/max seconds, clips/s, peak allocated GiB
  (torch.cuda.max_memory_allocated) and FLOPs per step counted by
  torch.utils.flop_counter where available."""
  import torch
  data = random_inputs(batch=batch, device=device, **{**PUBLISHED_SHAPES, **shapes})
  step = train_step_call(ref, data, dtype=dtype, device=device)
  cuda = device.startswith("cuda")
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  started = time.perf_counter()
  for _ in range(max(warmup, 1)):
    step()
  warmup_s = time.perf_counter() - started
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
  peak_gb = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
  flops = None
  try:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
      step()
    flops = float(counter.get_total_flops()) or None
  except Exception as e:   # a counter failure must not lose the timing
    logging.getLogger(__name__).warning("torch FLOP count failed: %s", e)
  median = statistics.median(times)
  return {"batch": batch, "dtype": dtype, "median_s": median, "min_s": min(times),
          "max_s": max(times), "times_s": times, "warmup_s": warmup_s,
          "clips_per_s": batch / median, "device_peak_gb": peak_gb,
          "flops": flops, "achieved_tflops": flops / median / 1e12 if flops else None}
