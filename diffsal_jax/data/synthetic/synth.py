"""`python -m data_prep synth`: writes synthetic raw releases in the exact
layouts `convert` reads (see `layouts.py`), scenes from `synth_scene.py`."""

from __future__ import annotations

import fractions
import multiprocessing
import pathlib

import av
import numpy as np
import scipy.io
import soundfile
from PIL import Image

from diffsal_jax.data import layouts
from diffsal_jax.data import release_files
from diffsal_jax.data.synthetic import synth_scene


def _save_image(array: np.ndarray, path: pathlib.Path, **kwargs) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _fixation_image(points: np.ndarray, shape) -> np.ndarray:
  out = np.zeros(shape, np.uint8)
  out[points[:, 0], points[:, 1]] = 255
  return out


def write_avi(frames: np.ndarray, path: pathlib.Path, fps: float, codec: str = "mjpeg") -> None:
  """AVI through PyAV: 'mjpeg' (lossy, like a camera) or 'ffv1' (lossless)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), "w", format="avi") as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuvj444p" if codec == "mjpeg" else "bgr0"
    if codec == "mjpeg":
      stream.codec_context.qmin = stream.codec_context.qmax = 2   # high quality
    for array in frames:
      frame = av.VideoFrame.from_ndarray(array, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _write_dhf1k_video(root, number, scene, fmt, fps, codec) -> None:
  shape = scene.maps.shape[1:]
  if fmt == "video":
    write_avi(scene.frames, root / "video" / f"{number:03d}.AVI", fps, codec)
    maps_dir = root / "annotation" / f"{number:04d}" / "maps"
    fix_dir = root / "annotation" / f"{number:04d}" / "fixation"
  else:
    for k, frame in enumerate(scene.frames, start=1):
      _save_image(frame, root / "frames" / str(number) / f"{k}.png", compress_level=1)
    maps_dir, fix_dir = root / "maps" / str(number), root / "fixation" / str(number)
  if layouts.dhf1k_split(number) == "test":
    return   # DHF1K releases no maps for videos 701-1000
  for k, (sal, points) in enumerate(zip(scene.maps, scene.fixations), start=1):
    _save_image(sal, maps_dir / f"{k:04d}.png")
    _save_image(_fixation_image(points, shape), fix_dir / f"{k:04d}.png")


def dhf1k_numbers(train: int, val: int, test: int) -> list[int]:
  """Video numbers that land in the DHF1K train/val/test ranges."""
  return ([1 + i for i in range(train)] + [601 + i for i in range(val)]
          + [701 + i for i in range(test)])


def _each(function, jobs: list[tuple], workers: int) -> None:
  """function(*job) for every job, in `workers` spawned processes when > 1.

  Scenes are drawn from per-video generators, so the release is the same
  for any worker count (tests/test_data_prep.py). With 2 workers on 2 cores
  the audio-visual demo's 768 videos (20 frames each) were written and
  converted in 43 s instead of about 60 s (the runs' logs).
  """
  if workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      function(*job)
    return
  # spawn: no fork of a process that may hold threads (grain, PyAV).
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    pool.starmap(function, jobs, chunksize=max(1, len(jobs) // (4 * workers)))


def _write_dhf1k_number(root, spec, number, fmt, codec, seed) -> None:
  rng = np.random.default_rng([seed, number])
  _write_dhf1k_video(root, number, synth_scene.visual_scene(rng, spec), fmt,
                     spec.fps, codec)


def write_dhf1k(root, spec, numbers, fmt="video", codec="mjpeg", seed=0,
                workers=1) -> None:
  root = pathlib.Path(root)
  _each(_write_dhf1k_number,
        [(root, spec, number, fmt, codec, seed) for number in numbers], workers)


def _write_av_video(root, dataset, name, scene, spec) -> None:
  frames_dir = root / "video_frames" / dataset / name
  annotations = root / "annotations" / dataset / name
  for k, (frame, sal, points) in enumerate(
      zip(scene.frames, scene.maps, scene.fixations), start=1):
    _save_image(frame, frames_dir / f"img_{k:05d}.jpg", quality=90)
    _save_image(sal, annotations / "maps" / f"eyeMap_{k:05d}.jpg", quality=95)
    eye_map = _fixation_image(points, sal.shape) // 255
    scipy.io.savemat(annotations / f"fixMap_{k:05d}.mat",
                     {release_files.FIXATION_VARIABLE: eye_map})
  wav = root / "video_audio" / dataset / name / f"{name}.wav"
  wav.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(wav, scene.audio, spec.sample_rate, subtype="PCM_16")


def _write_fold_lists(root, dataset, names, spec) -> None:
  """Fold k tests the videos i with i % 3 == k-1 (DIEM: one split, last third)."""
  lists = root / layouts.FOLD_LISTS_DIR
  lists.mkdir(parents=True, exist_ok=True)
  line = lambda n: f"{n} {spec.num_frames} {spec.fps:g}\n"
  folds = [layouts.FOLDS[0]] if dataset == "DIEM" else layouts.FOLDS
  for fold in folds:
    if dataset == "DIEM":
      test = set(names[len(names) - max(1, len(names) // 3):])
    else:
      test = {n for i, n in enumerate(names) if i % 3 == fold - 1}
    files = layouts.fold_list_names(dataset, fold)
    (lists / files["train"]).write_text("".join(line(n) for n in names if n not in test))
    (lists / files["test"]).write_text("".join(line(n) for n in names if n in test))


def av_video_name(video: int) -> str:
  return f"clip_{video:02d}"


def av_scene(spec, seed: int, dataset_index: int, video: int) -> synth_scene.Scene:
  """The scene `write_av(..., seed)` writes for `datasets[dataset_index]`'s
  video number `video` (tests regenerate it to know where both discs are)."""
  rng = np.random.default_rng([seed, dataset_index, video])
  return synth_scene.audio_visual_scene(rng, spec)


def _write_av_number(root, spec, datasets, d, i, seed) -> None:
  _write_av_video(root, datasets[d], av_video_name(i),
                  av_scene(spec, seed, d, i), spec)


def write_av(root, spec, datasets=layouts.AV_DATASETS, videos_per_dataset=3,
             seed=0, workers=1) -> None:
  root = pathlib.Path(root)
  _each(_write_av_number,
        [(root, spec, tuple(datasets), d, i, seed)
         for d in range(len(datasets)) for i in range(videos_per_dataset)],
        workers)
  names = [av_video_name(i) for i in range(videos_per_dataset)]
  for dataset in datasets:
    _write_fold_lists(root, dataset, names, spec)


def run(args) -> int:
  spec = synth_scene.SceneSpec(num_frames=args.frames, height=args.height, width=args.width,
                               fps=args.fps, sample_rate=args.sample_rate)
  dst = pathlib.Path(args.dst)
  if args.layout == "dhf1k":
    numbers = dhf1k_numbers(args.train_videos, args.val_videos, args.test_videos)
    write_dhf1k(dst, spec, numbers, args.dhf1k_format, args.avi_codec, args.seed,
                args.workers)
    count = len(numbers)
  else:
    datasets = tuple(d for d in args.datasets.split(",") if d)
    unknown = set(datasets) - set(layouts.AV_DATASETS)
    if unknown:
      raise SystemExit(f"--datasets: unknown {sorted(unknown)}; choose from {layouts.AV_DATASETS}")
    write_av(dst, spec, datasets, args.videos_per_dataset, args.seed, args.workers)
    count = len(datasets) * args.videos_per_dataset
  print(f"wrote {count} synthetic {args.layout} videos of {spec.num_frames} frames "
        f"({spec.height}x{spec.width}) to {dst}")
  return 0
