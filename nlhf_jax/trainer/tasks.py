"""Objectives that `nlhf-train` can run, by `config.train.objective`.

A task bundles what differs between objectives: the model, the data and the step. The loop, the sharding and the
checkpointing are shared by all of them. Every step has the signature step(state, frozen, batch) -> (state,
metrics); `frozen` holds parameters that the step reads but never trains (the reference policy, the judge; with
LoRA the base weights under 'base'), built by `build_step` and passed to the jitted step as an argument (sharded
by the rule table, not checkpointed with the run).

With config.model.lora the model is built with adapters (nlhf_jax/models/lora.py) and the train state's params
are the adapters only (`Setup.trainable`); the base weights are read from the base run (config.init_checkpoint for
sft, config.online.reference_checkpoint online) into frozen['base'], and an online run's reference policy is that
same base, run with the graphdef of the model without adapters (`Setup.base_graphdef`).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.config import ExperimentConfig, objectives
from nlhf_jax.config.objectives import OBJECTIVES, Objective
from nlhf_jax.distributed import param_specs
from nlhf_jax.models import Transformer, lora
from nlhf_jax.models.judges import PreferenceModel, RewardModel
from nlhf_jax.objectives import pair_loss, sft_loss
from nlhf_jax.training import checkpointing, init, steps
from nlhf_jax.training.state import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
  """An objective's description (config/objectives.py) with what builds its model and data, and its loss when it
  is supervised."""
  objective: Objective
  make_model: Callable[[ExperimentConfig], Callable[[nnx.Rngs], nnx.Module]]
  make_data: Callable[[ExperimentConfig, slice], Iterator[dict]]
  loss_fn: steps.LossFn | None = None  # supervised objectives

  @property
  def online(self) -> bool:  # sampled-pair objectives (nlhf_jax/online/step.py)
    return self.objective.online

  @property
  def offline(self) -> bool:  # a policy on a pairs data set against a frozen reference (objectives/offline.py)
    return self.objective.offline

  @property
  def ema(self) -> bool:  # keeps EMA parameters in state.extras['ema']
    return self.objective.ema


def _model(cls):
  def make(cfg: ExperimentConfig):
    if lora.enabled(cfg.model.lora):
      return lambda rngs: lora.apply_lora(cls(cfg.model, rngs), cfg.model.lora, rngs)
    return lambda rngs: cls(cfg.model, rngs)
  return make


def _data(kind: str):
  def make(cfg: ExperimentConfig, rows: slice):
    from nlhf_jax.data import pipelines
    from nlhf_jax.data.tokenizer import check_vocab, load_tokenizer
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab(tokenizer, cfg.model.vocab_size)
    return pipelines.make_iterator(cfg.data, kind, cfg.seed, cfg.train.batch_size, rows, tokenizer=tokenizer,
                                   split_fields=kind != 'demonstrations')
  return make


MODELS = {'language_model': Transformer, 'preference_model': PreferenceModel, 'reward_model': RewardModel}
SUPERVISED_LOSSES = {'sft': sft_loss, 'pairwise': pair_loss}  # online losses: online/step.py; offline: _offline_step

TASKS: dict[str, Task] = {
    name: Task(o, _model(MODELS[o.model]), _data(o.data),
               SUPERVISED_LOSSES[o.loss] if o.kind == 'supervised' else None)
    for name, o in OBJECTIVES.items()}


def get_task(name: str) -> Task:
  return TASKS[objectives.get(name).name]


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run trains: the model's graphdef, the train state's initialiser and shardings, and under LoRA the
  frozen base (its graphdef without adapters and the restore target of its weights)."""
  graphdef: nnx.GraphDef  # the model as trained (with adapters under LoRA)
  init: Callable[[int], TrainState]  # seed -> a fresh TrainState (jit it with out_shardings=shardings)
  shardings: TrainState
  base_graphdef: nnx.GraphDef | None = None  # LoRA: the model without adapters
  base_target: dict | None = None  # LoRA: ShapeDtypeStructs (with shardings) of the base weights
  make_extras: Callable[[dict], dict] | None = None  # params -> the objective's extra state (nash_ema: the EMA)

  @property
  def lora(self) -> bool:
    return self.base_graphdef is not None

  def warm_started(self, state: TrainState, params: dict) -> TrainState:
    """`state` with restored `params`, and the objective's extra state built from them (the EMA starts at the
    warm start; own buffers, since the step donates both)."""
    extras = state.extras if self.make_extras is None else self.make_extras(jax.tree.map(jnp.copy, params))
    return state.replace(params=params, extras=extras)

  def params_target(self) -> dict:
    """ShapeDtypeStructs (with shardings) of the model's plain parameters: where a model checkpoint (a
    reference, a warm start) is restored. Under LoRA those of the base."""
    if self.lora:
      return self.base_target
    return init.abstract_state(self.shardings, jax.eval_shape(self.init, 0)).params


def setup(cfg: ExperimentConfig, task: Task, tx: optax.GradientTransformation, mesh: Mesh) -> Setup:
  make_model = task.make_model(cfg)
  graphdef, abstract = init.abstract_model(make_model)
  lora_on = lora.enabled(cfg.model.lora)
  trainable = (lambda tree: lora.split_adapters(tree)[0]) if lora_on else None
  extras = {}
  if task.ema:
    specs = param_specs(abstract)
    extras = dict(make_extras=lambda params: {'ema': params},
                  extras_specs={'ema': trainable(specs) if trainable else specs})
  _, init_fn, shardings = init.state_initializer(make_model, tx, mesh, trainable=trainable, **extras)
  make_extras = extras.get('make_extras')
  if not lora_on:
    return Setup(graphdef, init_fn, shardings, make_extras=make_extras)
  base_graphdef, base_abstract = init.abstract_model(lambda rngs: Transformer(cfg.model, rngs))
  return Setup(graphdef, init_fn, shardings, base_graphdef, checkpointing.params_target(base_abstract, mesh),
               make_extras)


def reference_run(cfg: ExperimentConfig, task: Task) -> str:
  """The run of the frozen model a step reads (under LoRA, the base the adapters sit on): mu online
  (config.online.reference_checkpoint), mu offline (config.offline.reference_checkpoint, by default the run the
  policy starts from, config.init_checkpoint), the init checkpoint for supervised objectives; '' for none."""
  if task.online:
    return cfg.online.reference_checkpoint
  if task.offline:
    return cfg.offline.reference_checkpoint or cfg.init_checkpoint or ''
  return cfg.init_checkpoint or ''


def build_step(cfg: ExperimentConfig, task: Task, run: Setup, tx: optax.GradientTransformation,
               lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict]):
  """(step(state, frozen, batch), frozen). `initial_params()` gives the run's initial parameters (the reference
  policy mu when config.online.reference_checkpoint is empty); a reference checkpoint is restored onto
  `run.params_target()`."""
  o = cfg.online
  base = None
  if run.lora:  # the frozen base: the reference policy online and offline, the init checkpoint for sft
    source = reference_run(cfg, task)
    dtype = cfg.offline.frozen_dtype if task.offline else o.frozen_dtype
    base, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(source),
                                           checkpointing.as_dtype(run.base_target, dtype))
  if task.offline:
    return _offline_step(cfg, task, run, tx, lr_schedule, mesh, initial_params, base)
  if not task.online:
    step = steps.make_train_step(run.graphdef, task.loss_fn, tx, lr_schedule, cfg.train.grad_accum_steps)
    if base is None:
      return (lambda state, frozen, batch: step(state, batch)), {}
    return (lambda state, frozen, batch: step(state, batch, frozen['base'])), {'base': base}
  o = cfg.online
  top_k_filters = 0 < o.top_k < cfg.model.vocab_size  # top_k >= the vocabulary keeps every token
  if o.temperature != 1.0 or top_k_filters or o.top_p < 1.0:
    log.info('online sampling at temperature %s, top_k %s, top_p %s: the policy optimised is the sampled pi_T '
             '(the tempered, filtered policy; docs/online.md), not pi_theta at temperature 1',
             o.temperature, o.top_k, o.top_p)
  from nlhf_jax.data.tokenizer import load_tokenizer
  from nlhf_jax.online import judges
  from nlhf_jax.online.step import OnlineStep
  judge = judges.make_judge(o.judge, mesh, o.judge_checkpoint, o.oracle, o.frozen_dtype)
  stop_ids = load_tokenizer(cfg.data.tokenizer).stop_ids
  step = OnlineStep(cfg, run.graphdef, tx, lr_schedule, judge, stop_ids, mesh, run.base_graphdef)
  if base is not None:
    return step, {'base': base, 'judge': judge.params}
  if o.reference_checkpoint:
    reference = checkpointing.load_policy(o.reference_checkpoint,
                                   checkpointing.as_dtype(run.params_target(), o.frozen_dtype))
  else:
    reference = initial_params()
    if o.frozen_dtype:
      reference = jax.tree.map(lambda x: x.astype(o.frozen_dtype), reference)
  return step, {'reference': reference, 'judge': judge.params}


def _offline_step(cfg: ExperimentConfig, task: Task, run: Setup, tx: optax.GradientTransformation,
                  lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict], base: dict | None):
  """dpo / ipo: mu's log-probabilities of both responses join the batch, then the supervised step on the offline
  loss. mu is config.offline.reference_checkpoint, else config.init_checkpoint (the policy's warm start), else the
  policy's initial parameters; under LoRA it is the base that the adapters sit on (frozen['base']). mu runs in
  every step (frozen['reference']), or, with offline.reference_logprobs='cached', once per split before training
  (frozen['reference_logprobs'], {'train': [N, 2], 'eval': [M, 2]} tables looked up by example_index)."""
  from nlhf_jax.objectives import offline
  o = cfg.offline
  loss_fn = offline.make_loss(task.objective.loss, o.tau, o.label_smoothing, o.length_normalized)
  step = steps.make_train_step(run.graphdef, loss_fn, tx, lr_schedule, cfg.train.grad_accum_steps)
  source = reference_run(cfg, task)
  if base is not None:
    mu_graphdef, mu = run.base_graphdef, base
  elif source:
    mu_graphdef = run.graphdef
    mu = checkpointing.load_policy(source, checkpointing.as_dtype(run.params_target(), o.frozen_dtype))
  else:
    mu_graphdef, mu = run.graphdef, initial_params()
    if o.frozen_dtype:
      mu = jax.tree.map(lambda x: x.astype(o.frozen_dtype), mu)
  frozen = {} if base is None else {'base': base}

  if o.reference_logprobs == 'cached':
    from nlhf_jax.trainer import reference_cache
    splits = {'train': cfg.data.split}
    if cfg.train.eval_every > 0:
      splits['eval'] = cfg.data.eval_split
    replicated = NamedSharding(mesh, P())
    tables = {}
    for key, split in splits.items():
      table = reference_cache.load_or_compute(cfg, source, mu_graphdef, mu, mesh, split)
      tables[key] = jax.make_array_from_callback(table.shape, replicated, lambda index, t=table: t[index])
    del mu  # the step holds no mu (under LoRA the base stays: the policy is built on it)

    def cached_step(state, frozen, batch):
      batch = offline.with_cached_reference(frozen['reference_logprobs']['train'], batch)
      return step(state, batch, frozen.get('base'))
    return cached_step, dict(frozen, reference_logprobs=tables)

  if base is not None:
    def lora_step(state, frozen, batch):
      batch = offline.with_reference(nnx.merge(run.base_graphdef, frozen['base']), batch)
      return step(state, batch, frozen['base'])
    return lora_step, frozen

  def reference_step(state, frozen, batch):
    return step(state, offline.with_reference(nnx.merge(run.graphdef, frozen['reference']), batch))
  return reference_step, {'reference': mu}
