"""Optimizers and learning-rate schedules from config (optax)."""
from __future__ import annotations

import logging

import optax

from nlhf_jax.config import OptimConfig

log = logging.getLogger(__name__)


def horizon(cfg: OptimConfig, num_steps: int) -> int:
  """The number of steps the schedule spans: optim.decay_steps, or the run's train.num_steps when it is 0."""
  return cfg.decay_steps or num_steps


def warn_if_unusual(cfg: OptimConfig, num_steps: int) -> None:
  """Schedules that are valid but rarely meant: the warmup does not end before the run does."""
  if cfg.warmup_steps >= num_steps:
    log.warning('config.optim.warmup_steps=%d >= config.train.num_steps=%d: the learning rate never reaches '
                'config.optim.learning_rate=%g (it ends at %g); lower warmup_steps', cfg.warmup_steps, num_steps,
                cfg.learning_rate, cfg.learning_rate * num_steps / max(cfg.warmup_steps, 1))


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
