"""SIGTERM (preemption) -> save a checkpoint and exit, at one step everywhere.

One process: a SIGTERM handler sets a flag that the training loop polls.

Several processes (after `jax.distributed.initialize`): JAX's preemption
sync manager catches SIGTERM in whichever process receives it, and the
coordination service agrees on one step at which every process sees the
sync point (`orbax.checkpoint.CheckpointManager.reached_preemption`, through
`multihost_utils.reached_preemption_sync_point`). No Python handler is
installed there: it would replace JAX's, so only the signalled process would
know, enter the collective checkpoint save alone and wait forever for the
others. (Two local processes, SIGTERM to one: with a Python handler no
process reached the sync point; without, both reached it at the same step,
tests/test_preemption.py.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import jax


class Preemption:
  """Polled once per step: `reached(step)` is True when the run must stop.

  `sync_point_reached(step)`: the checkpoint manager's `reached_preemption`
  (False when JAX's preemption service is not running, as in one process).
  Call `restore()` when done to put back the previous SIGTERM handler.
  """

  def __init__(self, sync_point_reached: Callable[[int], bool]):
    self._sync_point_reached = sync_point_reached
    self.requested = False
    self._previous = None
    if jax.process_count() > 1:
      return   # JAX's own handler (see the module docstring)
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. some test runners).
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save `step` and exit (the same answer on every process)."""
    return self.requested or self._sync_point_reached(step)

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
