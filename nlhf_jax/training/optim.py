"""Optimizers and learning-rate schedules from config (optax).

The schedule is indexed by the optimizer's step count: step k of a run (0-based) is taken at rate schedule(k), so
with warmup the first step's rate is 0 and a run of num_steps steps ends at schedule(num_steps - 1).
"""
from __future__ import annotations

import logging

import optax

from nlhf_jax.config import OptimConfig

log = logging.getLogger(__name__)


def horizon(cfg: OptimConfig, num_steps: int) -> int:
  """The number of steps the schedule spans: optim.decay_steps, or the run's train.num_steps when it is 0."""
  return cfg.decay_steps or num_steps


def unusual(cfg: OptimConfig, num_steps: int) -> str | None:
  """The warning for a schedule that is valid but rarely meant, or None: the warmup does not end before the run
  does, so the rate only rises. Step k of a run (0-based) uses the rate schedule(k); the last is num_steps - 1."""
  if num_steps < 1 or cfg.warmup_steps < num_steps:
    return None
  last = float(schedule(cfg, num_steps)(num_steps - 1))
  return (f'config.optim.warmup_steps={cfg.warmup_steps} >= config.train.num_steps={num_steps}: the run ends '
          f'during the warmup, so the learning rate only rises, to {last:.3g} at the last of the {num_steps} steps '
          f'({100 * last / cfg.learning_rate:.0f}% of config.optim.learning_rate={cfg.learning_rate:g}), and never '
          f'decays; set warmup_steps below num_steps (e.g. {max(num_steps // 10, 1)})')


def warn_if_unusual(cfg: OptimConfig, num_steps: int) -> None:
  """Logs `unusual`'s warning, if any."""
  message = unusual(cfg, num_steps)
  if message:
    log.warning('%s', message)


def schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup to the peak rate, then cosine, linear or constant decay to end_lr_factor * peak at
  `horizon(cfg, num_steps)` (and that rate after it)."""
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_factor
  decay_steps = max(horizon(cfg, num_steps) - cfg.warmup_steps, 1)
  if cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if cfg.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, num_steps: int) -> optax.GradientTransformation:
  lr = schedule(cfg, num_steps)
  if cfg.name == 'adamw':
    opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None)
  if cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
