"""Validation during training: the objective's own loss and metrics on a fixed, bounded set of validation batches.

Contracts:
- Objectives: the supervised ones (sft, preference_model, reward_model) and the offline ones (dpo, ipo). Online
  objectives sample their pairs and have no validation split of pairs: `make_validator` returns None for them,
  as it does when config.train.eval_every is 0.
- Batches: the first min(config.train.eval_batches, B) global batches of config.train.batch_size rows of the data
  set's config.data.eval_split split, in order, unshuffled (pipelines.make_eval_iterator), where B is the number of
  full batches in the split (a split smaller than one batch gives one batch padded with copies of its last example,
  with a warning). They are read once, when the run starts, from a source of their own: the training iterator and
  its state are never touched, so a resumed run trains bitwise as an uninterrupted one. Each process reads its own
  rows of every batch (as in training) and the batches are global arrays sharded over the mesh.
- Values: the training loss function `loss_fn(model, batch, rng) -> (loss, metrics)` of the objective (offline
  with mu's log-probabilities added to the batch, as in training), in one jitted, sharded forward per batch at a
  fixed rng key; with train.grad_accum_steps > 1 in the same micro-batches as training. Each value is the mean over
  the batches (and micro-batches) of its per-batch value, reduced over the mesh by the jitted computation, so every
  process gets the same numbers. Keys: 'val/loss' and 'val/NAME' for each metric NAME of the loss function (sft:
  val/token_accuracy; preference and reward models: val/accuracy, val/log_loss, val/calibration_error; dpo/ipo:
  val/implicit_accuracy, val/implicit_reward_margin, val/logratio_preferred, val/logratio_other).
- Best so far: 'val/best_loss' and 'val/best_step' (the lowest val/loss so far and its step; a tie keeps the earlier
  step), logged when it improves. `get_state()` / `set_state()` carry them through checkpoints, so a resumed run
  reports the same values as an uninterrupted one.
"""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ExperimentConfig
from nlhf_jax.data import pipelines
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import global_batch, local_batch_rows, within_mesh
from nlhf_jax.models import lora
from nlhf_jax.training.offline_step import OfflineStep

log = logging.getLogger(__name__)

PREFIX = 'val/'


def objective_loss(cfg: ExperimentConfig, task, run):
  """loss(params, frozen, batch, rng) -> (loss, metrics): the objective's training loss on the trained `params`
  with the step's `frozen` parameters (the LoRA base; offline, mu or its cached log-probabilities, which join the
  batch as in the offline step: training/offline_step.py)."""
  if task.offline:
    step = OfflineStep(cfg, run.graphdef, base_graphdef=run.base_graphdef)
    loss_fn, prepare = step.loss_fn, lambda frozen, batch: step.with_reference(frozen, batch, 'eval')
  else:
    loss_fn, prepare = task.loss_fn, lambda frozen, batch: batch

  def loss(params, frozen, batch, rng):
    model = nnx.merge(run.graphdef, lora.with_base(params, frozen.get('base')))
    return loss_fn(model, prepare(frozen, batch), rng)

  return loss


class Validator:
  """Validation metrics of a run (see the module docstring); `evaluate(step, params, frozen)` gives them."""

  def __init__(self, cfg: ExperimentConfig, task, run, mesh, batches: list[dict]):
    self.every, self.num_batches = cfg.train.eval_every, len(batches)
    self.best_loss, self.best_step = math.inf, -1
    self._batches = [global_batch(mesh, b) for b in batches]
    loss, accum = objective_loss(cfg, task, run), cfg.train.grad_accum_steps
    rng = jax.random.key(0)

    def batch_metrics(params, frozen, batch):
      if accum == 1:
        value, metrics = loss(params, frozen, batch, rng)
        return dict(metrics, loss=value)
      micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)
      value, metrics = jax.lax.map(lambda mb: loss(params, frozen, mb, rng), micro)
      return jax.tree.map(lambda x: x.mean(0), dict(metrics, loss=value))

    self._fn = jax.jit(within_mesh(batch_metrics, mesh))

  def due(self, step: int) -> bool:
    return step % self.every == 0

  def evaluate(self, step: int, params, frozen: dict) -> dict:
    """{'val/loss': ..., 'val/NAME': ..., 'val/best_loss': ..., 'val/best_step': ...} of `params` at `step`."""
    total = None
    for batch in self._batches:
      metrics = self._fn(params, frozen, batch)
      total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
    values = {PREFIX + k: float(v) / self.num_batches for k, v in sorted(jax.device_get(total).items())}
    value = values[PREFIX + 'loss']
    if value < self.best_loss:
      if jax.process_index() == 0:
        before = f' (was {self.best_loss:.4g} at step {self.best_step})' if self.best_step >= 0 else ''
        log.info('validation at step %d: best val/loss so far, %.4g%s', step, value, before)
      self.best_loss, self.best_step = value, step
    return dict(values, **{PREFIX + 'best_loss': self.best_loss, PREFIX + 'best_step': self.best_step})

  def get_state(self) -> dict:
    return {'best_loss': self.best_loss, 'best_step': self.best_step}

  def set_state(self, state: dict | None) -> None:
    if state:
      self.best_loss, self.best_step = float(state['best_loss']), int(state['best_step'])


def validation_batches(cfg: ExperimentConfig, kind: str, rows: slice) -> list[dict]:
  """The process's rows of the validation batches (numpy), as described in the module docstring."""
  t = cfg.train
  it = pipelines.make_eval_iterator(cfg.data, kind, t.batch_size, rows, seed=cfg.seed,
                                    tokenizer=load_tokenizer(cfg.data.tokenizer),
                                    split_fields=kind != 'demonstrations')
  full = len(it.source) // t.batch_size
  if full == 0:
    log.warning('validation: the %s split has %d examples, fewer than train.batch_size=%d; its one batch repeats '
                'the last example to fill the batch', it.source.name, len(it.source), t.batch_size)
  batches = []
  for _ in range(min(t.eval_batches, max(full, 1))):
    batch = next(it)
    batch.pop('valid')
    batches.append(batch)
  return batches


def make_validator(cfg: ExperimentConfig, task, run, mesh) -> Validator | None:
  """The run's Validator, or None when validation is off (eval_every=0) or the objective is online."""
  if cfg.train.eval_every <= 0:
    return None
  if task.online:
    log.info('validation: train.eval_every=%d is ignored for the online objective %s (no validation split of '
             'pairs)', cfg.train.eval_every, task.objective.name)
    return None
  batches = validation_batches(cfg, task.objective.data, local_batch_rows(cfg.train.batch_size, mesh))
  validator = Validator(cfg, task, run, mesh, batches)
  log.info('validation every %d steps on %d batches of %d rows of the %s split', validator.every,
           validator.num_batches, cfg.train.batch_size, cfg.data.eval_split)
  return validator
