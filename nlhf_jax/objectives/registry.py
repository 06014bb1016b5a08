"""The losses that the rows of the objective table name (config/objectives.py, `Objective.loss`), by name.

Each loss module registers its losses when it is imported (`register_loss(name, kind, fn)`), and importing
nlhf_jax.objectives imports them all; the steps find a row's loss with `loss_of(objective)` and never name one.
Adding an objective is its row (`objectives.register` or the table), its loss registered here and the config
values it reads; the step of its kind runs it.

A loss has the signature of its kind:
- 'supervised': fn(model, batch, rng) -> (loss, metrics), differentiated by training/steps.py;
- 'offline': fn(h, p, cfg.offline) -> [B], the loss of each pair from its margin h = r(a) - r(b) (the policy's
  log-ratios to mu) and p = P(a > b); objectives/offline.make_loss adds the margins and the metrics;
- 'online': fn(lp, lp2, inputs, cfg.online) -> scalar, on the fixed samples of the online step (online/step.py):
  lp [B, T] the policy's per-token log-probabilities of y (they carry the gradient), lp2 those of y' (None unless
  the row sets second_logprobs); `inputs` holds constants: 'mask', 'mask2' (y's and y''s, 'mask2' None without
  y'), 'pref' (P(y > y'), or each sample's win rate), 'ref_lp' (log mu of y), and as the row asks 'ref_lp2',
  'reward' and 'baseline' (rewards), 'anchor_lp' and 'anchor_lp2' (log pi_t: iterate), 'kl_ref_lp' and
  'kl_ref_lp2' (the KL reference of the successors: mu, or the prox centre or magnet).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from nlhf_jax.config.objectives import KINDS, Objective
from nlhf_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Loss:
  name: str
  kind: str  # the kind of the objectives it serves: 'supervised', 'offline' or 'online'
  fn: Callable


LOSSES: dict[str, Loss] = {}


def register_loss(name: str, kind: str, fn: Callable) -> Callable:
  """Registers `fn` as the loss `name` of objectives of `kind`; returns `fn`. A name registered by another
  function is refused (registering the same function again, as a reloaded module does, is not)."""
  if kind not in KINDS:
    raise ValueError(f'the loss {name!r} has the kind {kind!r}; use one of {", ".join(KINDS)}')
  old = LOSSES.get(name)
  if old and (old.kind, _origin(old.fn)) != (kind, _origin(fn)):
    raise ValueError(f'the loss {name!r} is registered already ({_origin(old.fn)})')
  LOSSES[name] = Loss(name, kind, fn)
  return fn


def _origin(fn: Callable) -> str:
  return f'{getattr(fn, "__module__", "?")}.{getattr(fn, "__qualname__", repr(fn))}'


def names(kind: str = '') -> tuple[str, ...]:
  """The registered losses (of `kind`, or all), in the order of registration."""
  return tuple(n for n, loss in LOSSES.items() if not kind or loss.kind == kind)


def loss_of(objective: Objective) -> Callable:
  """The loss function that `objective`'s row names, refused (ConfigError) when no module registers it or it is a
  loss of another kind."""
  loss = LOSSES.get(objective.loss)
  if loss is None:
    raise ConfigError(f'config.train.objective={objective.name!r} names the loss {objective.loss!r}, which is not '
                      f'registered (objectives/registry.register_loss); registered {objective.kind} losses: '
                      f'{", ".join(names(objective.kind)) or "none"}')
  if loss.kind != objective.kind:
    raise ConfigError(f'config.train.objective={objective.name!r} is {objective.kind} but names the {loss.kind} loss '
                      f'{objective.loss!r}; registered {objective.kind} losses: {", ".join(names(objective.kind))}')
  return loss.fn
