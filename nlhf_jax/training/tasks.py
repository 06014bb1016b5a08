"""Objectives that `nlhf-train` can run, by `config.train.objective`.

A task bundles what differs between objectives: the model, the data and the step. The loop, the sharding and the
checkpointing are shared by all of them. Every step has the signature step(state, frozen, batch) -> (state,
metrics); `frozen` holds parameters that the step reads but never trains (the reference policy, the judge), built
by `setup` and passed to the jitted step as an argument (sharded by the rule table, not checkpointed with the run).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator

import optax
from flax import nnx
from jax.sharding import Mesh

from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.models import Transformer
from nlhf_jax.models.judges import PreferenceModel, RewardModel
from nlhf_jax.objectives import pair_loss, sft_loss
from nlhf_jax.training import steps

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
  make_model: Callable[[ExperimentConfig], Callable[[nnx.Rngs], nnx.Module]]
  make_data: Callable[[ExperimentConfig, slice], Iterator[dict]]
  loss_fn: steps.LossFn | None = None  # supervised objectives
  online: bool = False  # sampled-pair objectives (nlhf_jax/online/step.py)
  ema: bool = False  # keep EMA parameters in state.extras['ema']


def _model(cls):
  return lambda cfg: (lambda rngs: cls(cfg.model, rngs))


def _data(kind: str):
  def make(cfg: ExperimentConfig, rows: slice):
    from nlhf_jax.data import pipelines
    from nlhf_jax.data.tokenizer import check_vocab, load_tokenizer
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab(tokenizer, cfg.model.vocab_size)
    return pipelines.make_iterator(cfg.data, kind, cfg.seed, cfg.train.batch_size, rows, tokenizer=tokenizer,
                                   split_fields=kind != 'demonstrations')
  return make


_ONLINE = dict(make_model=_model(Transformer), make_data=_data('prompts'), online=True)

TASKS: dict[str, Task] = {
    'sft': Task(_model(Transformer), _data('demonstrations'), loss_fn=sft_loss),
    'preference_model': Task(_model(PreferenceModel), _data('pairs'), loss_fn=pair_loss),
    'reward_model': Task(_model(RewardModel), _data('pairs'), loss_fn=pair_loss),
    'nash_md': Task(**_ONLINE),
    'nash_ema': Task(**_ONLINE, ema=True),
    'rlhf': Task(**_ONLINE),
    'online_ipo': Task(**_ONLINE),
    'ipo_md': Task(**_ONLINE),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ConfigError(f'config.train.objective={name!r} is unknown; choose one of {", ".join(sorted(TASKS))}')
  return TASKS[name]


def build_step(cfg: ExperimentConfig, task: Task, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict], params_target):
  """(step(state, frozen, batch), frozen). `initial_params()` gives the run's initial parameters (the reference
  policy mu when config.online.reference_checkpoint is empty); `params_target` (ShapeDtypeStructs with shardings)
  is where a reference checkpoint is restored."""
  if not task.online:
    step = steps.make_train_step(graphdef, task.loss_fn, tx, lr_schedule, cfg.train.grad_accum_steps)
    return (lambda state, frozen, batch: step(state, batch)), {}
  o = cfg.online
  top_k_filters = 0 < o.top_k < cfg.model.vocab_size  # top_k >= the vocabulary keeps every token
  if o.temperature != 1.0 or top_k_filters or o.top_p < 1.0:
    log.warning('online sampling at temperature %s, top_k %s, top_p %s: y is not a sample of pi_theta, so the '
                'policy gradient is off-policy and biased (docs/online.md); temperature 1 without filters '
                'keeps it unbiased', o.temperature, o.top_k, o.top_p)
  from nlhf_jax.data.tokenizer import load_tokenizer
  from nlhf_jax.online import judges
  from nlhf_jax.online.step import OnlineStep
  judge = judges.make_judge(cfg.online.judge, mesh, cfg.online.judge_checkpoint, cfg.online.oracle)
  reference = initial_params() if not cfg.online.reference_checkpoint else judges.load_policy(
      cfg.online.reference_checkpoint, params_target)
  step = OnlineStep(cfg, graphdef, tx, lr_schedule, judge, load_tokenizer(cfg.data.tokenizer).stop_ids, mesh)
  return step, {'reference': reference, 'judge': judge.params}
