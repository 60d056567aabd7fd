"""absl flags for the commands with a `main(argv) -> int` entry point.

`python -m diffsal_jax.evaluate` and `python -m data_prep` use absl's flag
syntax, as `main`, `predict` and `convert` do: `--name=value` or `--name
value`, booleans `--name` / `--noname`, several values by repeating a flag
(`--pred A --pred B`), `--flagfile=FILE`. Unlike those (`app.run` and the
global `flags.FLAGS`), each call parses into a fresh `flags.FlagValues`, so
tests can call a command's `main([...])` many times in one process without
DuplicateFlagError, and one command's flags never leak into another's.

Shared by the commands like `console.py`: every role may import both.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import flags

USAGE_EXIT = 2  # A command line that cannot run (argparse's status, too).
HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


class UsageError(Exception):
  """Wrong flags or arguments; the message says which."""


def new_flags(define: Callable[[flags.FlagValues], None]) -> flags.FlagValues:
  """A fresh FlagValues holding the flags `define` puts on it."""
  values = flags.FlagValues()
  define(values)
  return values


def wants_help(argv: Sequence[str]) -> bool:
  """Whether `argv` asks for help (absl's and argparse's spellings)."""
  return any(arg in HELP_ARGS for arg in argv)


def flags_help(values: flags.FlagValues) -> str:
  """The flags' help in absl's layout, without the module headings."""
  lines = values.get_help(include_special_flags=False).splitlines()
  return "\n".join(line for line in lines if line.startswith(" "))


def exit_with_help(doc: str, values: flags.FlagValues,
                   heading: str = "flags") -> None:
  """Prints `doc` (the module docstring, usage lines first) and the flags
  to stdout, as absl's --help does for `main` and `predict`; exits 0."""
  sys.stdout.write(f"{doc.strip()}\n\n{heading}:\n{flags_help(values)}\n")
  raise SystemExit(0)


def parse(values: flags.FlagValues, argv: Sequence[str], prog: str,
          positional: int = 0, positional_name: str = "") -> list[str]:
  """Parses `argv` (the arguments, without the program name) into `values`.

  Returns the `positional` non-flag arguments; raises UsageError for an
  unknown flag, a bad value, a missing required flag or the wrong number of
  other arguments (flags and arguments may come in any order).
  """
  try:
    rest = values([prog, *argv])[1:]
  except flags.Error as error:
    raise UsageError(str(error)) from None
  if len(rest) != positional:
    if positional:
      raise UsageError(f"expected {positional_name or 'arguments'} "
                       f"({positional} non-flag argument(s)), got {rest}")
    raise UsageError(
        f"unexpected arguments {rest}; a flag takes one value, repeat it "
        f"for several (--flag A --flag B)")
  return rest


def report_usage_error(error: UsageError, prog: str) -> int:
  """Prints `error` with a pointer to --help; returns USAGE_EXIT."""
  print(f"error: {error}\nSee `{prog} --help`.", file=sys.stderr)
  return USAGE_EXIT


def parse_or_exit(define: Callable[[flags.FlagValues], None],
                  argv: Sequence[str], doc: str, prog: str, positional: int = 0,
                  positional_name: str = "", heading: str = "flags"
                  ) -> tuple[flags.FlagValues, list[str]]:
  """Fresh flags from `define`, parsed from `argv` (without the program
  name): (flag values, positional arguments). As argparse did, --help
  prints `doc` and the flags and exits 0, and a wrong command line prints
  what is wrong and exits USAGE_EXIT (SystemExit)."""
  values = new_flags(define)
  if wants_help(argv):
    exit_with_help(doc, values, heading)
  try:
    return values, parse(values, argv, prog, positional, positional_name)
  except UsageError as error:
    raise SystemExit(report_usage_error(error, prog)) from None
