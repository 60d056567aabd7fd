"""Keeps the accelerator fed: a thread turns host batches into device arrays.

Each element comes with the grain iterator state *after* its batch was read,
so the trainer can checkpoint the state matching the batches it has actually
consumed even though this thread reads ahead.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Sharding

_END = object()


class DevicePrefetcher:
  """Iterator of (global device batch, iterator state) with `size` in flight."""

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]],
               sharding: Sharding, keys: Sequence[str], size: int = 2):
    self._iterator = iterator
    self._sharding = sharding
    self._keys = tuple(keys)
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, daemon=True,
                                    name="device-prefetch")
    self._thread.start()

  def _to_device(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self._sharding, batch[k])
            for k in self._keys if k in batch}

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self._iterator)
        item = (self._to_device(batch), self._iterator.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except StopIteration:
      self._queue.put(_END)
    except BaseException as error:  # pylint: disable=broad-except
      self._queue.put(error)  # Re-raised in the consumer's thread.

  def __iter__(self) -> DevicePrefetcher:
    return self

  def __next__(self) -> tuple[dict[str, jax.Array], Any]:
    item = self._queue.get()
    if item is _END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
