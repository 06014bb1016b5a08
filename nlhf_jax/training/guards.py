"""Run guards: non-finite losses and gradients, and resumes whose config does not match the checkpoint.

Non-finite steps are detected inside the jitted step (no host sync per step): the wrapped step adds a boolean
metric `nonfinite`. With train.on_nonfinite='skip' it also keeps the previous parameters, optimizer state and
extras when the step is not finite (a select inside the same jit, so donation of the old state is safe).
The loop reads the flags only where it syncs anyway (logging, checkpoints, every few steps).
"""
from __future__ import annotations

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp

from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.config.runs import absolute_paths

log = logging.getLogger(__name__)

# Keys whose change makes a checkpoint unusable: restoring would fail or mean something else.
FATAL_KEYS = ('model.', 'data.tokenizer', 'train.objective')
# Keys that may change between runs of the same experiment without changing its result.
BENIGN_KEYS = ('train.num_steps', 'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
               'train.async_checkpointing', 'train.on_nonfinite', 'mesh.', 'distributed.', 'name',
               'model.preset', 'model.remat', 'model.attention_impl', 'model.logits_chunk')


def config_to_json(cfg: ExperimentConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def guard_step(step, on_nonfinite: str):
  """step(state, frozen, batch) -> (state, metrics) with metrics['nonfinite']; 'skip' also undoes bad updates."""
  def guarded(state, frozen, batch):
    new_state, metrics = step(state, frozen, batch)
    loss = jnp.asarray(metrics['loss'])
    grad_norm = jnp.asarray(metrics.get('grad_norm', loss))
    finite = jnp.isfinite(loss).all() & jnp.isfinite(grad_norm).all()
    metrics = dict(metrics, nonfinite=~finite)
    if on_nonfinite == 'skip':
      keep = lambda new, old: jnp.where(finite, new, old)
      new_state = new_state.replace(params=jax.tree.map(keep, new_state.params, state.params),
                                    opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
                                    extras=jax.tree.map(keep, new_state.extras, state.extras))
    return new_state, metrics
  return guarded


class NonFiniteGuard:
  """Collects the per-step `nonfinite` flags (device arrays) and checks them at the loop's sync points.

  'stop' raises FloatingPointError naming the first non-finite step; 'skip' counts the skipped updates.
  """

  def __init__(self, mode: str, skipped: int = 0):
    self.mode, self.skipped = mode, skipped
    self._pending: list[tuple[int, jax.Array, jax.Array]] = []

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics['nonfinite'], metrics['loss']))

  def check(self) -> None:
    pending, self._pending = jax.device_get(self._pending), []
    for step, bad, loss in pending:
      if not bool(bad):
        continue
      if self.mode == 'stop':
        raise FloatingPointError(
            f'non-finite loss or gradient at step {step} (loss {float(loss)}); the run stopped and the last '
            'checkpoint before this step is kept. Lower the learning rate or check the data, or set '
            "config.train.on_nonfinite='skip' to skip such updates.")
      self.skipped += 1
      log.warning('non-finite loss or gradient at step %d (loss %s): update skipped (%d skipped so far)', step,
                  float(loss), self.skipped)


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
  return any(key == p or (p.endswith('.') and key.startswith(p)) for p in patterns)


def config_differences(saved: dict, cfg: ExperimentConfig) -> list[tuple[str, object, object]]:
  """(key, saved value, current value) of every key that differs; keys a saved config lacks (written before
  they existed) count as their defaults. Run and tokenizer paths are compared made absolute (configs written
  before paths were recorded absolute hold them as typed, relative to the folder the run was started from)."""
  before = {**_flatten(config_to_json(ExperimentConfig())), **_flatten(absolute_paths(saved))}
  now = _flatten(config_to_json(cfg))
  return [(k, before.get(k), now.get(k)) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]


def _schedule_follows_num_steps(cfg: ExperimentConfig) -> bool:
  return cfg.optim.decay_steps == 0 and cfg.optim.schedule != 'constant'


def check_resume_compatible(meta: dict, cfg: ExperimentConfig, directory: str) -> None:
  """A checkpoint written for another model, vocabulary or objective cannot be continued: say what differs.

  Other differences that change the result (seed, batch, data, optimizer, and a new train.num_steps when the
  learning-rate schedule spans train.num_steps) are logged as warnings.
  """
  diffs = config_differences(meta.get('config', {}), cfg)
  fatal = [d for d in diffs if _matches(d[0], FATAL_KEYS) and not _matches(d[0], BENIGN_KEYS)]
  if fatal:
    shown = '; '.join(f'{k}: checkpoint {a!r}, config {b!r}' for k, a, b in fatal)
    raise ConfigError(f'the checkpoint in {directory} was written with another model, vocabulary or objective; '
                      f'nothing was overwritten. Differences: {shown}. Use a new --workdir or the original config.')
  changed = [d for d in diffs if not _matches(d[0], BENIGN_KEYS)]
  saved_steps = _flatten(meta.get('config', {})).get('train.num_steps')
  if saved_steps != cfg.train.num_steps and _schedule_follows_num_steps(cfg):
    log.warning('resuming with train.num_steps=%s (the checkpoint was written with %s): the %s learning-rate '
                'schedule now decays over %s steps, so the steps still to come get other rates than the first run '
                'planned. To keep the original schedule, set config.optim.decay_steps=%s.', cfg.train.num_steps,
                saved_steps, cfg.optim.schedule, cfg.train.num_steps, saved_steps)
  if changed:
    log.warning('resuming with a config that differs from the checkpoint in %s; the result will differ from an '
                'uninterrupted run: %s', directory,
                '; '.join(f'{k}: checkpoint {a!r}, config {b!r}' for k, a, b in changed))


