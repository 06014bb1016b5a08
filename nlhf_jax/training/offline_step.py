"""One pure train step for every offline objective (dpo, ipo, and any row of kind 'offline'):

  step(state, frozen, batch) -> (state, metrics)

mu's log-probabilities of both responses of each pair join the batch (`with_reference`), then the supervised step
(training/steps.py) differentiates the objective's loss: the per-pair loss its row names (objectives/registry.py)
through objectives/offline.make_loss, with config.offline's values.

frozen: {'reference': mu's params}, or under LoRA {'base': the base weights}, which are mu (state.params are the
adapters; mu runs the model without them, `base_graphdef`), or with offline.reference_logprobs='cached'
{'reference_logprobs': {'train': [N, 2], 'eval': [M, 2]}} (mu's log-probabilities of a and b of each example of a
split, looked up by example_index; 'base' too under LoRA). Validation reads the same injection on its split
(`with_reference(frozen, batch, 'eval')`) and the same loss (`loss_fn`).
"""
from __future__ import annotations

import dataclasses

import optax
from flax import nnx

from nlhf_jax.config import ExperimentConfig, objectives
from nlhf_jax.objectives import offline, registry
from nlhf_jax.training import steps
from nlhf_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity, as the online step
class OfflineStep:
  cfg: ExperimentConfig
  graphdef: nnx.GraphDef  # the policy as trained (with adapters under LoRA)
  tx: optax.GradientTransformation | None = None  # None: the loss and the reference alone (validation)
  lr_schedule: optax.Schedule | None = None
  base_graphdef: nnx.GraphDef | None = None  # LoRA: the model without adapters, which runs mu from frozen['base']

  @property
  def objective(self) -> objectives.Objective:
    return objectives.get(self.cfg.train.objective)

  @property
  def loss_fn(self) -> steps.LossFn:
    """loss_fn(model, batch, rng) -> (loss, metrics) on a batch `with_reference`."""
    return offline.make_loss(registry.loss_of(self.objective), self.cfg.offline)

  def with_reference(self, frozen: dict, batch: dict, split: str = 'train') -> dict:
    """The batch with mu's log-probabilities of a and b: from the cached table of `split` ('train' or 'eval'),
    else computed by mu (no gradient flows into it)."""
    if 'reference_logprobs' in frozen:
      return offline.with_cached_reference(frozen['reference_logprobs'][split], batch)
    if self.base_graphdef is not None:
      return offline.with_reference(nnx.merge(self.base_graphdef, frozen['base']), batch)
    return offline.with_reference(nnx.merge(self.graphdef, frozen['reference']), batch)

  def __call__(self, state: TrainState, frozen: dict, batch: dict):
    step = steps.make_train_step(self.graphdef, self.loss_fn, self.tx, self.lr_schedule,
                                 self.cfg.train.grad_accum_steps)
    return step(state, self.with_reference(frozen, batch), frozen.get('base'))
