"""Metric writers (JSONL and TensorBoard, process 0 only) and progress reporting."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np

log = logging.getLogger(__name__)


class MetricWriter:
  """Appends {'step': n, name: value, ...} lines to DIR/metrics.jsonl and TensorBoard events to DIR/tb."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: it is slow to import
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class Progress:
  """A tqdm bar on a terminal; otherwise a log line every `log_every` steps."""

  def __init__(self, start: int, total: int, log_every: int):
    self.total, self.log_every = total, log_every
    self._bar = None
    self._t0, self._s0 = time.time(), start
    if jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

  def update(self, step: int, metrics: dict | None) -> None:
    if jax.process_index() != 0:
      return
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if metrics:
        self._bar.set_postfix({k: f'{float(v):.4g}' for k, v in metrics.items() if k in ('loss', 'grad_norm')})
    elif metrics is not None:
      now = time.time()
      rate = (step - self._s0) / max(now - self._t0, 1e-9)  # since the last log line
      self._t0, self._s0 = now, step
      shown = ' '.join(f'{k}={float(v):.4g}' for k, v in sorted(metrics.items()))
      if 'sampled_tokens' in metrics:  # online objectives: sampling throughput of the whole step
        shown += f' sampled_tokens_per_s={rate * float(metrics["sampled_tokens"]):.0f}'
      log.info('step %d/%d (%.2f steps/s) %s', step, self.total, rate, shown)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
