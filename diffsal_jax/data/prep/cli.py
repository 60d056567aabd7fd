"""Offline data preparation for diffsal_jax.

  python -m data_prep convert --dataset dhf1k --src RAW --dst OUT
  python -m data_prep synth --layout av --dst RAW
  python -m data_prep verify OUT
  python -m data_prep COMMAND --help     (the flags of COMMAND)

`convert` turns a raw release (DHF1K as released or with extracted frames;
the six audio-visual datasets as packaged by STAViS) into ArrayRecord shards
plus OUT/manifest.json, read by `diffsal_jax.data.input_pipeline`; OUT is also
a TFDS dataset directory (`tfds.builder_from_directory(OUT)`, one example per
frame, no TensorFlow needed). `synth` writes
small learnable synthetic releases in those same layouts. `verify` checks the
shards of OUT against the checksums `convert` recorded.

The first argument names the command; its flags follow, in absl's syntax as
for `python -m diffsal_jax.main`: `--name=value` or `--name value`, booleans
`--name` / `--noname` (`--resume`, `--noprogress`). A flag of another command
is refused. Exit status: 0 done, 1 bad input left out (`convert` without
--skip_bad) or damaged shards (`verify`), 2 a wrong command line or an
unusable --src / --dst (the message names it).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from absl import flags

from diffsal_jax import cli_flags
from diffsal_jax import console
from diffsal_jax.data import image_rules
from diffsal_jax.data import layouts

_PROG = "python -m data_prep"


def _define_convert(values: flags.FlagValues) -> None:
  on = {"flag_values": values}
  flags.DEFINE_enum("dataset", None, ("dhf1k", "av"), (
      "dhf1k: video/*.AVI + annotation/, or frames/ + maps/; av: "
      "video_frames/, video_audio/, annotations/, fold_lists/ (STAViS)"), **on)
  flags.DEFINE_string("src", None, "Root folder of the raw release.", **on)
  flags.DEFINE_string("dst", None, "Output folder (empty, or --resume).", **on)
  flags.DEFINE_integer("height", 224, "Model frame height.", **on)
  flags.DEFINE_integer("width", 384, "Model frame width.", **on)
  flags.DEFINE_enum("image_format", "jpeg", image_rules.IMAGE_FORMATS, (
      "jpeg: quality 95 4:4:4, about 3x faster to decode and 5x smaller than "
      "png; png: lossless, bit-exact with the published loader."), **on)
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Parallel processes, "
                       "one video each (default: all cores).", **on)
  flags.DEFINE_bool("resume", False, "Keep the videos an interrupted run "
                    "finished, convert the rest.", **on)
  flags.DEFINE_bool("skip_bad", False, "Exit 0 even if some input was bad "
                    "(those videos are left out).", **on)
  flags.DEFINE_float("dhf1k_fps", layouts.DHF1K_FPS, "Frame rate recorded for "
                     "extracted DHF1K frames (AVIs carry theirs).", **on)
  flags.mark_flags_as_required(["dataset", "src", "dst"], flag_values=values)


def _define_synth(values: flags.FlagValues) -> None:
  on = {"flag_values": values}
  flags.DEFINE_enum("layout", None, ("dhf1k", "av"), "Release layout to "
                    "write: DHF1K's, or STAViS' six audio-visual sets.", **on)
  flags.DEFINE_string("dst", None, "Folder to write the release into.", **on)
  flags.DEFINE_integer("frames", 40, "Frames per video.", **on)
  flags.DEFINE_integer("height", 120, "Frame height of the raw videos.", **on)
  flags.DEFINE_integer("width", 192, "Frame width of the raw videos.", **on)
  flags.DEFINE_float("fps", 25.0, "Frame rate of the raw videos.", **on)
  flags.DEFINE_integer("sample_rate", 44100, "Wav rate (AV).", **on)
  flags.DEFINE_integer("seed", 0, "Seed of the scenes.", **on)
  flags.DEFINE_enum("dhf1k_format", "video", ("video", "frames"), (
      "video: video/NNN.AVI + annotation/ (as released); frames: "
      "frames/<n>/<k>.png + maps/ + fixation/ (extracted)."), **on)
  flags.DEFINE_enum("avi_codec", "mjpeg", ("mjpeg", "ffv1"),
                    "Codec of the DHF1K AVIs.", **on)
  flags.DEFINE_integer("train_videos", 4, "DHF1K videos numbered 1..", **on)
  flags.DEFINE_integer("val_videos", 1, "DHF1K videos numbered 601..", **on)
  flags.DEFINE_integer("test_videos", 1, "DHF1K videos numbered 701.. (no "
                       "maps, as released).", **on)
  flags.DEFINE_string("datasets", ",".join(layouts.AV_DATASETS), "AV dataset "
                      "folders to create, comma separated.", **on)
  flags.DEFINE_integer("videos_per_dataset", 3, "AV videos per dataset.", **on)
  flags.DEFINE_integer("workers", 1, "Processes writing videos side by side "
                       "(the release is the same for any count; worth it "
                       "from about 64 videos).", lower_bound=1, **on)
  flags.mark_flags_as_required(["layout", "dst"], flag_values=values)


def _define_verify(values: flags.FlagValues) -> None:
  on = {"flag_values": values}
  flags.DEFINE_integer("workers", min(4, os.cpu_count() or 1), "Shards "
                       "checked side by side (threads; default: up to 4).",
                       **on)
  flags.DEFINE_bool("progress", True, "Progress bar on stderr.", **on)


def _run_convert(args: flags.FlagValues, _) -> int:
  from diffsal_jax.data.prep import convert_release   # pylint: disable=g-import-not-at-top
  return convert_release.run(args)


def _run_synth(args: flags.FlagValues, _) -> int:
  from diffsal_jax.data.synthetic import synth   # pylint: disable=g-import-not-at-top
  return synth.run(args)


def _run_verify(args: flags.FlagValues, positional: list[str]) -> int:
  from diffsal_jax.data.prep import verify   # pylint: disable=g-import-not-at-top
  return verify.run(positional[0], args.workers, progress=args.progress)


@dataclasses.dataclass(frozen=True)
class _Command:
  summary: str
  description: str
  define: Callable[[flags.FlagValues], None]
  run: Callable[[flags.FlagValues, list[str]], int]
  positional: str = ""  # Name of the one non-flag argument, if any.


COMMANDS = {
    "convert": _Command(
        "raw release -> ArrayRecord shards + manifest.json",
        "Converts a raw release into one ArrayRecord shard per video (frames "
        "resized to the model resolution with the published PIL rules and "
        "stored once, maps at model resolution plus the original map bytes, "
        "fixation points, the wav's own samples and rate), OUT/manifest.json "
        "and the TFDS files (dataset_info.json, features.json, metadata.json, "
        "tfds/<split>/ links to the shards). Bad input is reported with its "
        "path; the other videos still convert; the exit status is 1 unless "
        "--skip_bad.", _define_convert, _run_convert),
    "synth": _Command(
        "write a small synthetic raw release",
        "Writes a synthetic release in the DHF1K or STAViS layout. DHF1K: a "
        "moving and a still disc, gaze on the moving one. AV: a red and a "
        "blue disc; a tone (440 Hz red, 3520 Hz blue) says which one is "
        "looked at, so only audio decides.", _define_synth, _run_synth),
    "verify": _Command(
        "check the shards of OUT against the manifest's checksums",
        "Compares every shard of OUT (the folder written by `convert`, with "
        "manifest.json) with the sha256 and size recorded at conversion "
        "(older manifests: reads every record). Lists each damaged shard "
        "with its video and the fix; exit status 1 when any is damaged.",
        _define_verify, _run_verify, positional="OUT"),
}


def _command_list() -> str:
  return "commands:\n" + "\n".join(
      f"  {name:8s} {command.summary}" for name, command in COMMANDS.items())


def _flag_names(command: _Command) -> set[str]:
  return set(cli_flags.new_flags(command.define))


def _command_name(argv: Sequence[str]) -> str:
  """The command `argv` starts with; UsageError for a missing or unknown one."""
  if not argv or argv[0].startswith("-"):
    raise cli_flags.UsageError("give a command first: " + ", ".join(COMMANDS))
  if argv[0] not in COMMANDS:
    raise cli_flags.UsageError(f"unknown command {argv[0]!r}; choose from "
                               f"{', '.join(COMMANDS)}")
  return argv[0]


def _check_foreign_flags(name: str, args: Sequence[str]) -> None:
  """UsageError for a flag in `args` that only another command defines."""
  known = lambda flag, names: (  # noqa: E731
      flag in names or flag.startswith("no") and flag[2:] in names)
  own = _flag_names(COMMANDS[name])
  for arg in args:
    if arg == "--":
      break
    flag = arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") else ""
    if not flag or known(flag, own):
      continue
    for other, command in COMMANDS.items():
      if other != name and known(flag, _flag_names(command)):
        raise cli_flags.UsageError(
            f"--{flag} is a flag of `{other}`, not of `{name}`")


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `COMMAND [flags]` from `argv` (without the program name; default
  sys.argv[1:]); returns the exit status (SystemExit for --help and usage
  errors, as argparse did)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and cli_flags.wants_help(argv[:1]):
    print(f"{__doc__.strip()}\n\n{_command_list()}")
    raise SystemExit(0)
  try:
    name = _command_name(argv)
  except cli_flags.UsageError as error:
    raise SystemExit(cli_flags.report_usage_error(error, _PROG)) from None
  command, prog = COMMANDS[name], f"{_PROG} {name}"
  try:
    _check_foreign_flags(name, argv[1:])
  except cli_flags.UsageError as error:
    raise SystemExit(cli_flags.report_usage_error(error, prog)) from None
  about = textwrap.fill(f"`{name}`: {command.description}", 79)
  args, positional = cli_flags.parse_or_exit(
      command.define, argv[1:], f"{__doc__.strip()}\n\n{about}", prog,
      positional=1 if command.positional else 0,
      positional_name=command.positional, heading=f"flags of {name}")
  try:
    return command.run(args, positional)
  except (FileNotFoundError, ValueError) as e:   # bad --src / --dst: no traceback
    print(f"error: {e}", file=sys.stderr)
    return 2


def cli() -> None:
  """Runs the command line (flags from sys.argv)."""
  console.quiet_libraries()
  sys.exit(main())


if __name__ == "__main__":
  cli()
