"""Preemption: on SIGTERM (or JAX's preemption notice) the loop checkpoints the step it reached and stops.

With `jax.distributed` initialised, JAX's preemption sync manager receives the notice (it handles SIGTERM
itself) and `reached_preemption_sync_point` makes every process stop at the same step. Without it, a Python
SIGTERM handler sets a flag that the loop reads after each step; across processes the flag is combined at the
loop's sync points so that all processes save the same step.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np
from jax._src import distributed
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _jax_sync_manager():
  state = distributed.global_state
  return state.preemption_sync_manager if state.client is not None else None


class PreemptionWatcher:
  """`requested(step, sync)` is True once a preemption notice has reached this step on every process."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self._flag = False
    self._previous: dict[int, object] = {}
    self._use_jax = _jax_sync_manager() is not None
    if self._use_jax or threading.current_thread() is not threading.main_thread():
      return
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del frame
    self._flag = True
    log.warning('received signal %d: saving a checkpoint at the current step, then stopping', signum)

  def requested(self, step: int, sync: bool) -> bool:
    """Called after every step by every process; `sync` marks the steps where the loop syncs the host anyway."""
    if self._use_jax:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    if jax.process_count() == 1:
      return self._flag
    if not sync:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
