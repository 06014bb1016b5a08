"""Objectives that `nlhf-train` can run, by `config.train.objective`.

A task bundles what differs between objectives: the model, the loss and the data. The loop, the sharding
and the checkpointing are shared by all of them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

from flax import nnx

from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.models import Transformer
from nlhf_jax.objectives import sft_loss
from nlhf_jax.training.steps import LossFn


@dataclasses.dataclass(frozen=True)
class Task:
  make_model: Callable[[ExperimentConfig], Callable[[nnx.Rngs], nnx.Module]]
  loss_fn: LossFn
  make_data: Callable[[ExperimentConfig, slice], Iterator[dict]]


def _lm(cfg: ExperimentConfig):
  return lambda rngs: Transformer(cfg.model, rngs)


def _demonstrations(cfg: ExperimentConfig, rows: slice):
  from nlhf_jax.data import iterators, synthetic
  if cfg.data.source != 'synthetic':
    raise ConfigError(f"config.data.source={cfg.data.source!r} is not available for objective 'sft'; "
                      "use 'synthetic'")
  make = lambda idx: synthetic.demonstration_batch(cfg.seed, idx, cfg.data.seq_len)
  return iterators.IndexedBatches(make, cfg.data.num_examples, cfg.train.batch_size, cfg.seed, rows)


TASKS: dict[str, Task] = {
    'sft': Task(make_model=_lm, loss_fn=sft_loss, make_data=_demonstrations),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ConfigError(f'config.train.objective={name!r} is unknown; choose one of {", ".join(sorted(TASKS))}')
  return TASKS[name]
