"""The console of every command: our results, warnings and progress bars.

Libraries (orbax, JAX, grain, TFDS) log through absl or Python logging at
INFO and WARNING on every save and restore ("Closing
_NonBlockingMetadataStore(...)", missing-metadata warnings, ...). Each
command calls `quiet_libraries()` first: from then on a library's records
reach the console only at ERROR or above, unless the user asks for them with
absl's verbosity flag (`--verbosity=1` or `-v 1`). Records of this package
(and of `tools/`) keep absl's usual rules.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

_OURS = tuple(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), name) + os.sep for name in ("diffsal_jax", "tools"))


class _LibraryFilter(std_logging.Filter):
  """Passes our records, library errors, and everything at verbosity >= 1."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.ERROR or
            os.path.abspath(record.pathname).startswith(_OURS) or
            logging.get_verbosity() >= 1)


def quiet_libraries() -> None:
  """Installs the filter on absl's handler (idempotent); see the module doc."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryFilter) for f in handler.filters):
    handler.addFilter(_LibraryFilter())
