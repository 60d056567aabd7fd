r"""Saliency maps for your own videos: PNG maps, an overlay video, an npz.

  python -m diffsal_jax.predict --video clip.mp4 --checkpoint CKPT --out OUT \
      [--config configs/av_finetune.py] [--npz] [--steps 1] [--report DIR]
  python -m diffsal_jax.predict --video a.mkv --video b.mov ... --checkpoint ..
  python -m diffsal_jax.predict --video_list videos.txt --checkpoint ...
  python -m diffsal_jax.predict --frames DIR --fps 25 [--wav sound.wav] ...

Inputs: any container / codec FFmpeg reads (PyAV), any frame rate and size;
or a folder of numbered images plus an optional wav. CKPT: a training
workdir (its best checkpoint, --which=latest for the last one), a checkpoint
step, or a `python -m diffsal_jax.convert --out` folder. The model config is
--config, else `<workdir>/config.json` when the trainer saved one.

Per input, under OUT/<name>/ (name = file stem, or folder name):
  maps/<frame:05d>.png  one per input frame (1-based), 8-bit grey scaled by
                        the frame's max, at the input resolution (resized from
                        the model's with `metrics.resize_map`, as the
                        evaluation does);
  overlay.mp4           the frames with a heat map blended in, same frame
                        count and timestamps, the input's audio kept (AAC);
  maps.npz              with --npz: `maps` (N, h, w) float32 raw model output
                        at the model resolution, `frames`, `frame_size`, `fps`.

Every frame gets a map: clips are centred on their frame and padded at the
start and end by repeating the first / last frame (see `video_predictor`).

Every input is probed before the model loads (`video_io`); frames come out
upright (display matrix), audio windows follow each frame's timestamp, the
sound is aligned to the first frame, and each correction is listed in the
input's JSON summary line (`corrections`, `vfr`, `audio_offset_s`).
The compiled sampler is kept in the per-user compilation cache and reused by
the next run (--compilation_cache; see `diffsal_jax.compilation_cache`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np
import tqdm
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from PIL import Image

from diffsal_jax import compilation_cache
from diffsal_jax import console
from diffsal_jax.data import atomic_files
from diffsal_jax.data import audio as audio_lib
from diffsal_jax.evaluation import metrics
from diffsal_jax.inference import overlay
from diffsal_jax.inference import predict_report
from diffsal_jax.evaluation import predictions
from diffsal_jax.training import train_config
from diffsal_jax.inference import video_io
from diffsal_jax.reporting import panels
from diffsal_jax.inference import video_predictor as vp

MAPS_DIR, OVERLAY, NPZ = "maps", "overlay.mp4", "maps.npz"


@dataclasses.dataclass
class OutputOptions:
  overlay: bool = True
  npz: bool = False
  alpha: float = 0.6          # heat-map opacity where the map is at its max
  audio_rate: int = 0         # 0: the track's own rate (as the datasets' wavs)
  progress: bool = True


def _model_audio(predictor: vp.Predictor, source: video_io.FrameSource,
                 track: video_io.AudioTrack | None):
  if not predictor.uses_audio:
    return None
  if track is None:
    logging.warning("%s has no audio track: the audio-visual model gets "
                    "silence. For the visual model pass a visual checkpoint "
                    "and its config.", source.name)
    return video_io.silent_wave(source.timing.duration)
  return track.model_wave()


def _clear_old_maps(folder: pathlib.Path) -> None:
  """Removes the numbered PNGs of an earlier run, so none are stale."""
  if folder.is_dir():
    for path in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
      path.unlink()


def _save_map(out_dir: pathlib.Path, frame: int, saliency: np.ndarray,
              size_hw: tuple[int, int]) -> None:
  full = metrics.resize_map(saliency, size_hw)
  # `video` "" puts the PNGs straight into OUT/<name>/maps/.
  predictions.save_prediction(out_dir, MAPS_DIR, "", frame, full)


def write_maps(predictor: vp.Predictor, source: video_io.FrameSource,
               out_dir: pathlib.Path, options: OutputOptions,
               track: video_io.AudioTrack | None
               ) -> tuple[int, dict[int, np.ndarray]]:
  """PNG maps at the input size; returns (count, model-size maps if --npz).

  PNGs are resized and encoded on worker threads (zlib and the matrix
  products release the GIL): at full HD a PNG takes longer than a frame's
  share of the model on a GPU.
  """
  _clear_old_maps(out_dir / MAPS_DIR)
  kept, pending, count = {}, collections.deque(), 0
  workers = os.cpu_count() or 1
  with tqdm.tqdm(total=source.num_frames_hint or None, unit="frame",
                 desc=f"predict {source.name}", dynamic_ncols=True,
                 disable=not options.progress) as bar, (
                     concurrent.futures.ThreadPoolExecutor(workers)) as pool:
    # Constant rate: times are (f-1)/fps exactly as in training (and main).
    times = source.timing.times if source.timing.vfr else None
    for frame, saliency in predictor.predict(
        source.frames(), source.fps, _model_audio(predictor, source, track),
        times):
      pending.append(pool.submit(_save_map, out_dir, frame, saliency,
                                 source.size_hw))
      count += 1
      while len(pending) > 2 * workers or (pending and pending[0].done()):
        _finish_one(pending, bar)   # bounded memory; raises write errors
      if options.npz:
        kept[frame] = saliency
    while pending:
      _finish_one(pending, bar)
  return count, kept


def _finish_one(pending: collections.deque, bar: tqdm.tqdm) -> None:
  pending.popleft().result()
  if bar.total is not None and bar.n >= bar.total:
    bar.total = bar.n + 1   # the container under-reported its frame count
  bar.update(1)


def write_overlay(source: video_io.FrameSource, out_dir: pathlib.Path,
                  num_frames: int, options: OutputOptions,
                  track: video_io.AudioTrack | None) -> pathlib.Path:
  """Heat maps (read back from the PNGs) over the frames, with the audio."""
  path = out_dir / OVERLAY
  writer = overlay.OverlayWriter(path, source.timing, source.size_hw, track)
  try:
    frames = source.frames()
    for k in tqdm.trange(1, num_frames + 1, unit="frame", dynamic_ncols=True,
                         desc=f"overlay {source.name}",
                         disable=not options.progress):
      with Image.open(out_dir / MAPS_DIR / f"{k:05d}.png") as png:
        saliency = np.asarray(png.convert("L"))
      writer.write(np.asarray(next(frames)), saliency, options.alpha)
  except BaseException:
    writer.abort()
    raise
  writer.close()
  return path


def write_npz(path: pathlib.Path, maps: dict[int, np.ndarray],
              source: video_io.FrameSource) -> None:
  frames = np.array(sorted(maps), np.int32)
  arrays = {"maps": np.stack([maps[k] for k in frames]), "frames": frames,
            "frame_size": np.array(source.size_hw, np.int32),
            "fps": np.float64(source.fps)}
  atomic_files.write_atomic(path, lambda f: np.savez_compressed(f, **arrays),
                            binary=True)


def predict_source(predictor: vp.Predictor, source: video_io.FrameSource,
                   out_dir: str | os.PathLike, options: OutputOptions) -> dict:
  """All outputs of one input; returns a summary."""
  out_dir = pathlib.Path(out_dir)
  started = time.time()
  needs_audio = predictor.uses_audio or options.overlay
  track = source.audio(options.audio_rate) if needs_audio else None
  count, kept = write_maps(predictor, source, out_dir, options, track)
  if source.resized_frames:
    source.notes.append(video_io.resize_note(source.resized_frames,
                                             source.size_hw))
  summary = {"input": source.name, "frames": count,
             "fps": round(source.timing.fps, 6),
             "duration": round(source.timing.duration, 6),
             "vfr": source.timing.vfr, "size_hw": list(source.size_hw),
             "maps": str(out_dir / MAPS_DIR)}
  if options.npz:
    write_npz(out_dir / NPZ, kept, source)
    summary["npz"] = str(out_dir / NPZ)
  if options.overlay:
    summary["overlay"] = str(write_overlay(source, out_dir, count, options,
                                           track))
  if getattr(source, "audio_offset", None):
    summary["audio_offset_s"] = round(source.audio_offset, 6)
  # Notes made while probing, reading the audio and decoding (deduplicated:
  # the overlay decodes the frames a second time).
  summary["corrections"] = list(dict.fromkeys(source.notes))
  summary["seconds"] = round(time.time() - started, 2)
  return summary


# --------------------------------------------------------------------- CLI --

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defined only when run as a program (main.py owns some of these names)."""
  flags.DEFINE_multi_string("video", [], "Video file to predict (repeat the "
                            "flag for several).")
  flags.DEFINE_string("video_list", None, "Text file with one video path per "
                      "line (blank lines and # comments skipped).")
  flags.DEFINE_string("frames", None, "Folder of numbered frame images "
                      "(natural order), instead of a video; needs --fps.")
  flags.DEFINE_string("wav", None, "With --frames: the audio of those frames.")
  flags.DEFINE_float("fps", None, "With --frames: their frame rate.")
  flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint step, "
                      "or `diffsal_jax.convert --out` folder.")
  config_flags.DEFINE_config_file(
      "config", None, "Config the checkpoint was trained / converted with "
      "(configs/*.py); default: <workdir>/config.json.", lock_config=False)
  flags.DEFINE_string("out", None,
                      "Output folder; each input gets OUT/<name>/.")
  flags.DEFINE_enum("which", "best", ("best", "latest"), "Workdir checkpoint "
                    "to use: the best by validation, or the latest.")
  flags.DEFINE_enum("normalisation", "auto", vp.NORMALISATIONS,
                    "Frame resize + normalisation rules: 'dhf1k' (bilinear, "
                    "ImageNet mean/std; visual pre-training), 'av' (STAViS "
                    "resize, mean/std on 0..255; audio-visual fine-tuning); "
                    "auto: the config's data.dataset.")
  flags.DEFINE_integer("batch_size", 0, "Clips per batch (0: the config's "
                       "eval_batch_size, which gives main's exact maps).")
  flags.DEFINE_integer("steps", 0, "DDIM sampling steps (0: the config's "
                       "diffusion.sampling_steps; published 1).")
  flags.DEFINE_float("eta", None, "DDIM eta (default: the config's, 0).")
  flags.DEFINE_integer("seed", None, "Sampling seed (default: config.seed).")
  flags.DEFINE_bool("npz", False, "Also write maps.npz (raw float maps).")
  flags.DEFINE_bool("overlay", True, "Write overlay.mp4.")
  flags.DEFINE_float("alpha", 0.6, "Overlay opacity at the map's maximum.")
  flags.DEFINE_integer("audio_rate", 0, "Resample a video's audio to this rate "
                       "before the log-mel front end (0: keep its own rate).")
  flags.DEFINE_string("report", None, "Also write an HTML report to this "
                      "folder: per input a strip of frames with their maps "
                      "and overlays, linked to overlay.mp4 (DIR/index.html).")
  flags.DEFINE_integer("report_frames", 6, "Frames per input in the report.",
                       lower_bound=1)
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  flags.DEFINE_string("compilation_cache", compilation_cache.AUTO,
                      "Persistent compilation cache: 'auto' "
                      "($JAX_COMPILATION_CACHE_DIR, else "
                      "~/.cache/diffsal_jax/jax_cache), a folder, or '' for "
                      "off. A second run of the same model skips compiling.")
  flags.mark_flags_as_required(["checkpoint", "out"])


def _input_paths() -> list[str]:
  paths = list(FLAGS.video)
  if FLAGS.video_list:
    with open(FLAGS.video_list) as f:
      paths += [line.strip() for line in f
                if line.strip() and not line.lstrip().startswith("#")]
  return paths


def _sources() -> tuple[list[video_io.FrameSource], list[str]]:
  """Opens and probes every input before the model loads.

  Returns the readable sources and one error per unreadable input (each
  names its file and the fix); a bad input does not stop the others.
  """
  if FLAGS.wav and not FLAGS.frames:
    raise app.UsageError("--wav goes with --frames (a video brings its audio)")
  openers = [lambda p=p: video_io.VideoFile(p) for p in _input_paths()]
  if FLAGS.frames:
    openers.append(lambda: video_io.FrameFolder(FLAGS.frames, FLAGS.fps,
                                                FLAGS.wav))
  if not openers:
    raise app.UsageError("nothing to predict: give --video, --video_list or "
                         "--frames")
  return open_sources(openers)


def open_sources(openers) -> tuple[list[video_io.FrameSource], list[str]]:
  """Calls each opener; a MediaError becomes one error line, the rest go on."""
  sources, errors = [], []
  for opener in openers:
    try:
      sources.append(opener())
    except video_io.MediaError as err:
      errors.append(str(err))
      logging.error("%s", err)
  return sources, errors


def _unique_names(sources: list[video_io.FrameSource]) -> list[str]:
  names, seen = [], {}
  for source in sources:
    seen[source.name] = seen.get(source.name, 0) + 1
    names.append(source.name if seen[source.name] == 1
                 else f"{source.name}_{seen[source.name]}")
  return names


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  expected = (video_io.MediaError, vp.CheckpointMismatch, vp.ConfigMissing,
              train_config.ConfigError, OSError)
  sources, errors = _sources()
  if not sources:
    sys.exit("error: " + "\nerror: ".join(errors))
  try:
    compilation_cache.enable(FLAGS.compilation_cache)
    config = vp.load_config(FLAGS.checkpoint, FLAGS.config)
    predictor = vp.Predictor(
        config, FLAGS.checkpoint, prefer=FLAGS.which,
        normalisation=FLAGS.normalisation, batch_size=FLAGS.batch_size,
        steps=FLAGS.steps, eta=FLAGS.eta, seed=FLAGS.seed)
  except expected as err:
    sys.exit(f"error: {err}")
  options = OutputOptions(overlay=FLAGS.overlay, npz=FLAGS.npz,
                          alpha=FLAGS.alpha, audio_rate=FLAGS.audio_rate,
                          progress=FLAGS.progress)
  reported, report_notes = [], []
  for source, name in zip(sources, _unique_names(sources)):
    try:
      summary = predict_source(predictor, source,
                               pathlib.Path(FLAGS.out) / name, options)
      print(json.dumps(summary))
    except (video_io.MediaError, audio_lib.AudioError) as err:
      errors.append(f"{source.name}: {err}")
      logging.error("%s: %s", source.name, err)
      continue
    if FLAGS.report:
      # One more decoding pass, up to the last frame of the strip; a failure
      # here costs the strip, not the input's outputs.
      wanted = panels.evenly_spaced(range(1, summary["frames"] + 1),
                                    FLAGS.report_frames)
      try:
        pictures = predict_report.strip_pictures(
            source.frames(), pathlib.Path(summary["maps"]), wanted)
      except (video_io.MediaError, OSError) as err:
        pictures = {}
        report_notes.append(f"{source.name}: no strip ({err})")
      reported.append((name, summary, pictures))
  if FLAGS.report:
    index = predict_report.write_report(FLAGS.report, reported,
                                        errors + report_notes,
                                        alpha=FLAGS.alpha)
    print(f"report: {index}", file=sys.stderr)
  logging.info("Compilation cache %s", compilation_cache.describe())
  if errors:   # repeated at the end, where a long run's log ends
    print("failed inputs:\n  " + "\n  ".join(errors), file=sys.stderr)
  return 1 if errors else 0


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  console.quiet_libraries()
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli()
