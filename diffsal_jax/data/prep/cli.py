"""Offline data preparation for diffsal_jax.

  python -m data_prep convert --dataset dhf1k --src RAW --dst OUT
  python -m data_prep synth --layout av --dst RAW
  python -m data_prep verify OUT

`convert` turns a raw release (DHF1K as released or with extracted frames;
the six audio-visual datasets as packaged by STAViS) into ArrayRecord shards
plus OUT/manifest.json, read by `diffsal_jax.data.input_pipeline`; OUT is also
a TFDS dataset directory (`tfds.builder_from_directory(OUT)`, one example per
frame, no TensorFlow needed). `synth` writes
small learnable synthetic releases in those same layouts. `verify` checks the
shards of OUT against the checksums `convert` recorded.
"""

from __future__ import annotations

import argparse
import os
import sys

from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts


def _add_convert(sub) -> None:
  p = sub.add_parser(
      "convert", help="raw release -> ArrayRecord shards + manifest.json",
      description="Converts a raw release into one ArrayRecord shard per video (frames "
      "resized to the model resolution with the published PIL rules and stored once, maps "
      "at model resolution plus the original map bytes, fixation points, the wav's own "
      "samples and rate), OUT/manifest.json and the TFDS files (dataset_info.json, features.json, metadata.json, tfds/<split>/ links to the shards). Bad input is reported with its path; the "
      "other videos still convert; the exit status is 1 unless --skip_bad.")
  p.add_argument("--dataset", required=True, choices=("dhf1k", "av"),
                 help="dhf1k: video/*.AVI + annotation/, or frames/ + maps/; "
                 "av: video_frames/, video_audio/, annotations/, fold_lists/ (STAViS)")
  p.add_argument("--src", required=True, help="root folder of the raw release")
  p.add_argument("--dst", required=True, help="output folder (empty, or --resume)")
  p.add_argument("--height", type=int, default=224, help="model frame height (default 224)")
  p.add_argument("--width", type=int, default=384, help="model frame width (default 384)")
  p.add_argument("--image_format", choices=image_rules.IMAGE_FORMATS, default="jpeg",
                 help="jpeg: quality 95 4:4:4, about 3x faster to decode and 5x smaller "
                 "than png; png: lossless, bit-exact with the published loader")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="parallel processes, one video each (default: all cores)")
  p.add_argument("--resume", action="store_true",
                 help="keep the videos an interrupted run finished, convert the rest")
  p.add_argument("--skip_bad", action="store_true",
                 help="exit 0 even if some input was bad (those videos are left out)")
  p.add_argument("--dhf1k_fps", type=float, default=layouts.DHF1K_FPS,
                 help="frame rate recorded for extracted DHF1K frames (AVIs carry theirs)")


def _add_synth(sub) -> None:
  p = sub.add_parser(
      "synth", help="write a small synthetic raw release",
      description="Writes a synthetic release in the DHF1K or STAViS layout. DHF1K: a "
      "moving and a still disc, gaze on the moving one. AV: a red and a blue disc; a tone "
      "(440 Hz red, 3520 Hz blue) says which one is looked at, so only audio decides.")
  p.add_argument("--layout", required=True, choices=("dhf1k", "av"))
  p.add_argument("--dst", required=True, help="folder to write the release into")
  p.add_argument("--frames", type=int, default=40, help="frames per video")
  p.add_argument("--height", type=int, default=120, help="frame height of the raw videos")
  p.add_argument("--width", type=int, default=192, help="frame width of the raw videos")
  p.add_argument("--fps", type=float, default=25.0)
  p.add_argument("--sample_rate", type=int, default=44100, help="wav rate (AV)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dhf1k_format", choices=("video", "frames"), default="video",
                 help="video: video/NNN.AVI + annotation/ (as released); "
                 "frames: frames/<n>/<k>.png + maps/ + fixation/ (extracted)")
  p.add_argument("--avi_codec", choices=("mjpeg", "ffv1"), default="mjpeg")
  p.add_argument("--train_videos", type=int, default=4, help="DHF1K videos numbered 1..")
  p.add_argument("--val_videos", type=int, default=1, help="DHF1K videos numbered 601..")
  p.add_argument("--test_videos", type=int, default=1, help="DHF1K videos numbered 701.. "
                 "(no maps, as released)")
  p.add_argument("--datasets", default=",".join(layouts.AV_DATASETS),
                 help="AV dataset folders to create, comma separated")
  p.add_argument("--videos_per_dataset", type=int, default=3)


def _add_verify(sub) -> None:
  p = sub.add_parser(
      "verify", help="check the shards of OUT against the manifest's checksums",
      description="Compares every shard with the sha256 and size recorded at conversion "
      "(older manifests: reads every record). Lists each damaged shard with its video and "
      "the fix; exit status 1 when any is damaged.")
  p.add_argument("out", help="folder written by `convert` (holds manifest.json)")
  p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                 help="shards checked side by side (threads; default: up to 4)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  _add_convert(sub)
  _add_synth(sub)
  _add_verify(sub)
  args = parser.parse_args(argv)
  try:
    if args.command == "convert":
      from diffsal_jax.data.prep import convert_release   # pylint: disable=g-import-not-at-top
      return convert_release.run(args)
    if args.command == "verify":
      from diffsal_jax.data.prep import verify   # pylint: disable=g-import-not-at-top
      return verify.run(args)
    from diffsal_jax.data.synthetic import synth   # pylint: disable=g-import-not-at-top
    return synth.run(args)
  except (FileNotFoundError, ValueError) as e:   # bad --src / --dst: no traceback
    print(f"error: {e}", file=sys.stderr)
    return 2


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  sys.exit(main())


if __name__ == "__main__":
  cli()
