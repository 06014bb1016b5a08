"""What a run leaves for people to read: metrics (JSONL and TensorBoard), the run record and progress reporting.

Contracts (all writing happens on process 0 only; the other processes compute the same values and write nothing):
- `MetricWriter`: appends {'step': n, 'time': UNIX_SECONDS, name: value, ...} lines to RUN/metrics.jsonl and the
  same scalars (without `time`) as TensorBoard events in RUN/tb (`tensorboard --logdir RUN/tb`; training/events.py).
- `RunRecord`: RUN/run.json = {'sessions': [SESSION, ...]}, one SESSION per start of the command on the workdir
  (a resumed run appends one; earlier sessions are kept). A session is written when the loop starts (command line,
  versions, devices, mesh, processes, start time and step) and completed when it ends: `end_time`, `final_step`
  (the last step run) and `outcome` - 'finished' (num_steps reached), 'preempted' (SIGTERM or JAX's notice),
  'stopped' (the `stop_at` step of train()), 'failed' (with `error`) or 'interrupted' (KeyboardInterrupt).
- `Progress`: around the first step of a session it logs when the step's compilation starts and when it ends
  (with its seconds; or, when the step was compiled before the run read its weights, those seconds and the first
  step's); every rate it reports counts only the steps after that first one, so compilation never
  enters a rate. At each log step it returns the metrics with the interval's `sampled_tokens_per_s` added (for
  steps that report `sampled_tokens`: the response tokens of y and y', up to and including the stop token, summed
  over the interval's steps, over the interval's wall time) and prints the progress line: step, steps/s over the
  interval, ETA from the mean rate since compilation, the metrics. On a terminal a tqdm bar (started once the
  step is compiled) replaces the lines.
- `progress_bar` (from nlhf_jax.logs): a tqdm bar on a terminal (process 0), the bare iterable otherwise.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import math
import os
import sys
import time

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from nlhf_jax.training.events import EventWriter

log = logging.getLogger(__name__)

RUN_RECORD = 'run.json'
_clock = time.monotonic  # intervals and rates (wall-clock jumps do not enter them)
_VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'nlhf_jax')


class MetricWriter:
  """Appends {'step': n, 'time': t, name: value, ...} lines to DIR/metrics.jsonl and TensorBoard events to DIR/tb."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      self._tb = EventWriter(os.path.join(workdir, 'tb'))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({'step': step, 'time': round(time.time(), 3), **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.scalars(step, scalars)

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec='seconds')


def read_run_record(workdir: str) -> dict:
  """RUN/run.json as written by RunRecord ({'sessions': []} when there is none)."""
  path = epath.Path(workdir) / RUN_RECORD
  if not path.exists():
    return {'sessions': []}
  return json.loads(path.read_text())


class RunRecord:
  """One session of RUN/run.json: `RunRecord(...)` writes its start, `end(step, outcome)` completes it."""

  def __init__(self, workdir: str, mesh, start_step: int, num_steps: int, argv: list[str] | None = None):
    self.active = jax.process_index() == 0
    self._path = epath.Path(workdir if '://' in workdir else os.path.abspath(workdir)) / RUN_RECORD
    if not self.active:
      return
    try:
      self._record = read_run_record(str(self._path.parent))
      if not isinstance(self._record.get('sessions'), list):
        raise ValueError('no list of sessions')
    except (ValueError, OSError) as e:  # a damaged record is set aside, never a reason to refuse the run
      log.warning('%s is not a run record (%s); it is kept as %s.bad and a new one started', self._path, e,
                  RUN_RECORD)
      self._path.replace(self._path.parent / f'{RUN_RECORD}.bad')
      self._record = {'sessions': []}
    now = time.time()
    device = jax.devices()[0]
    self._session = {
        'command': list(sys.argv if argv is None else argv),
        'start_time': round(now, 3), 'started': _iso(now),
        'start_step': start_step, 'num_steps': num_steps,
        'versions': {p: _version(p) for p in _VERSIONED},
        'python': sys.version.split()[0],
        'devices': {'count': jax.device_count(), 'local_count': jax.local_device_count(),
                    'kind': device.device_kind, 'platform': device.platform},
        'mesh': {str(k): int(v) for k, v in dict(mesh.shape).items()},
        'processes': jax.process_count(),
        'outcome': 'running',
    }
    self._record['sessions'].append(self._session)
    self._write()

  def end(self, final_step: int, outcome: str, error: str | None = None) -> None:
    if not self.active:
      return
    now = time.time()
    self._session.update(end_time=round(now, 3), ended=_iso(now), final_step=int(final_step), outcome=outcome,
                         seconds=round(now - self._session['start_time'], 3))
    if error is not None:
      self._session['error'] = error
    self._write()

  def _write(self) -> None:
    self._path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self._path.parent / f'{RUN_RECORD}.tmp'
    tmp.write_text(json.dumps(self._record, indent=2) + '\n')
    tmp.replace(self._path)


def duration(seconds: float) -> str:
  """45s, 3m12s, 2h05m."""
  s = int(round(max(seconds, 0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


def _is_terminal() -> bool:
  return jax.process_index() == 0 and sys.stderr.isatty()


class Progress:
  """Progress of the training loop; see the module docstring for what it logs and when."""

  def __init__(self, start: int, total: int, log_every: int):
    self.total, self.log_every = total, log_every
    self.last_step = start  # the last step run in this session
    self._active = jax.process_index() == 0
    self._bar = None
    self._compile_start = self._compiled_in = None
    self._t_base = self._s_base = None  # after the first step: the origin of the mean rate (ETA)
    self._t0 = self._s0 = None  # the start of the current interval
    self._tokens: list = []  # device scalars: sampled tokens of the interval's steps (read at the next log)

  def compiling(self, step: int, compiled_in: float | None = None) -> None:
    """Called just before the session's first step, whose call compiles the step function, or, given
    `compiled_in` (seconds), reuses the program compiled that long before the run read its weights."""
    self._compile_start, self._compiled_in = _clock(), compiled_in
    if self._active and compiled_in is None:
      log.info('compiling the training step (step %d; nothing is printed until it is done) ...', step)

  def after_step(self, step: int, metrics: dict) -> None:
    """Called after every step's call. The first one waits for its step to finish and logs the compilation."""
    self.last_step = step
    if self._t_base is None:
      compiled = _clock()
      jax.block_until_ready(metrics)
      now = _clock()
      started = self._compile_start if self._compile_start is not None else compiled
      if self._active and self._compiled_in is not None:
        log.info('compiled the training step in %.1f s (before any weight was read); the first step took %.1f s; '
                 'rates from here on leave it out', self._compiled_in, now - started)
      elif self._active:
        log.info('compiled the training step in %.1f s (the first step finished after %.1f s); rates from here '
                 'on leave it out', compiled - started, now - started)
      self._t_base = self._t0 = now
      self._s_base = self._s0 = step
      if _is_terminal():
        self._bar = tqdm(total=self.total, initial=step, unit='step', dynamic_ncols=True)
      return
    if 'sampled_tokens' in metrics:
      self._tokens.append(metrics['sampled_tokens'])

  def update(self, step: int, metrics: dict | None) -> dict | None:
    """At a sync point: moves the bar; at a log step (metrics given, fetched to the host) returns them with the
    interval's rates added and prints the progress line."""
    if metrics is None:
      if self._bar is not None:
        self._bar.update(step - self._bar.n)
      return None
    now = _clock()
    steps, seconds = step - self._s0, now - self._t0
    metrics = dict(metrics)
    rate = steps / seconds if steps > 0 and seconds > 0 else None
    if 'sampled_tokens' in metrics and rate is not None:
      tokens = float(np.sum(jax.device_get(self._tokens))) if self._tokens else 0.0
      metrics['sampled_tokens_per_s'] = tokens / seconds
    self._tokens = []
    self._t0, self._s0 = now, step
    if self._active:
      self._show(step, metrics, rate, now)
    return metrics

  def _show(self, step: int, metrics: dict, rate: float | None, now: float) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      keys = ('loss', 'grad_norm', 'sampled_tokens_per_s')
      self._bar.set_postfix({k: f'{float(v):.4g}' for k, v in metrics.items() if k in keys})
      return
    shown = ' '.join(f'{k}={float(v):.4g}' for k, v in sorted(metrics.items()) if k != 'sampled_tokens_per_s')
    if 'sampled_tokens_per_s' in metrics:  # online objectives: sampling throughput of the whole step
      shown += f' sampled_tokens_per_s={metrics["sampled_tokens_per_s"]:.0f}'
    if rate is None:
      log.info('step %d/%d (first step) %s', step, self.total, shown)
      return
    mean_rate = (step - self._s_base) / max(now - self._t_base, 1e-9)
    eta = duration(math.ceil((self.total - step) / mean_rate))  # rounded up: 0s only when done
    log.info('step %d/%d (%.2f steps/s, eta %s) %s', step, self.total, rate, eta, shown)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
