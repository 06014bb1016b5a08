"""Objectives that `nlhf-train` can run, by `config.train.objective`.

A task bundles what differs between objectives: the model, the data and the step. The loop, the sharding and the
checkpointing are shared by all of them. Every step has the signature step(state, frozen, batch) -> (state,
metrics); `frozen` holds parameters that the step reads but never trains (the reference policy, the judge; with
LoRA the base weights under 'base'), passed to the jitted step as an argument (sharded by the rule table, not
checkpointed with the run). `plan_step` gives the step and its frozen inputs before any weight is read (their
targets, what training compiles the step against, and the functions that read them); `build_step` reads them.

With config.model.lora the model is built with adapters (nlhf_jax/models/lora.py) and the train state's params
are the adapters only (`Setup.trainable`); the base weights are read from the base run (config.init_checkpoint for
sft, config.online.reference_checkpoint online) into frozen['base'], and an online run's reference policy is that
same base, run with the graphdef of the model without adapters (`Setup.base_graphdef`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.config import ExperimentConfig, objectives, runs
from nlhf_jax.config.objectives import Objective
from nlhf_jax.data import pipelines
from nlhf_jax.data.tokenizer import check_vocab, load_tokenizer
from nlhf_jax.distributed import param_specs
from nlhf_jax.models import Transformer, lora
from nlhf_jax.models.judges import PreferenceModel, RewardModel
from nlhf_jax.objectives import registry
from nlhf_jax.online import judges, prompted
from nlhf_jax.online.step import OnlineStep
from nlhf_jax.trainer import reference_cache
from nlhf_jax.training import checkpointing, init, steps
from nlhf_jax.training.offline_step import OfflineStep
from nlhf_jax.training.state import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
  """An objective's description (config/objectives.py) with what builds its model and data, and its loss when it
  is supervised (the offline and the online steps find theirs in the registry: objectives/registry.py)."""
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

  @property
  def extras(self) -> tuple[str, ...]:  # the keys of state.extras, each a copy of the trained parameters
    return self.objective.extras


def _model(cls):
  def make(cfg: ExperimentConfig):
    if lora.enabled(cfg.model.lora):
      return lambda rngs: lora.apply_lora(cls(cfg.model, rngs), cfg.model.lora, rngs)
    return lambda rngs: cls(cfg.model, rngs)
  return make


def _data(kind: str):
  def make(cfg: ExperimentConfig, rows: slice):
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab(tokenizer, cfg.model.vocab_size)
    return pipelines.make_iterator(cfg.data, kind, cfg.seed, cfg.train.batch_size, rows, tokenizer=tokenizer,
                                   split_fields=kind != 'demonstrations')
  return make


MODELS = {'language_model': Transformer, 'preference_model': PreferenceModel, 'reward_model': RewardModel}


def get_task(name: str) -> Task:
  """The task of the objective `name`, from its row (config/objectives.py, or one added by objectives.register);
  ConfigError for a name the table lacks or a row whose loss is not registered (objectives/registry.py)."""
  o = objectives.get(name)
  loss = registry.loss_of(o)
  return Task(o, _model(MODELS[o.model]), _data(o.data), loss if o.kind == 'supervised' else None)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run trains: the model's graphdef, the train state's initialiser and shardings, and under LoRA the
  frozen base (its graphdef without adapters and the restore target of its weights)."""
  graphdef: nnx.GraphDef  # the model as trained (with adapters under LoRA)
  init: Callable[[int], TrainState]  # seed -> a fresh TrainState (jit it with out_shardings=shardings)
  shardings: TrainState
  base_graphdef: nnx.GraphDef | None = None  # LoRA: the model without adapters
  base_target: dict | None = None  # LoRA: ShapeDtypeStructs (with shardings) of the base weights
  # params -> the objective's extra state (nash_ema: the EMA; the successors of Nash-MD: pi_t and the prox centre
  # or magnet), each a copy of the initial (or warm-started) trained parameters
  make_extras: Callable[[dict], dict] | None = None

  @property
  def lora(self) -> bool:
    return self.base_graphdef is not None

  def start_from(self, seed: int, params: dict, tx: optax.GradientTransformation) -> TrainState:
    """A fresh train state (step 0, the rng of `init(seed)`, a new optimizer state) on restored `params`, which
    it takes over (donated: no copy), with the objective's extra state built from them (the EMA starts at the
    warm start, in buffers of its own). No random initialisation is computed."""
    start = init.state_from_params(tx, self.make_extras)
    return jax.jit(start, out_shardings=self.shardings, donate_argnums=1)(seed, params)

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
  if task.extras:  # copies of the trained parameters (under LoRA the adapters only), sharded as they are
    specs = param_specs(abstract)
    specs = trainable(specs) if trainable else specs
    extras = dict(make_extras=lambda params: {key: params for key in task.extras},
                  extras_specs={key: specs for key in task.extras})
  _, init_fn, shardings = init.state_initializer(make_model, tx, mesh, trainable=trainable, **extras)
  make_extras = extras.get('make_extras')
  if not lora_on:
    return Setup(graphdef, init_fn, shardings, make_extras=make_extras)
  base_graphdef, base_abstract = init.abstract_model(lambda rngs: Transformer(cfg.model, rngs))
  return Setup(graphdef, init_fn, shardings, base_graphdef, checkpointing.params_target(base_abstract, mesh),
               make_extras)


def reference_run(cfg: ExperimentConfig, task: Task) -> str:
  """The run of the frozen model a step reads (under LoRA, the base the adapters sit on), by the one rule of
  config/runs.py: mu is the objective's reference checkpoint, else the policy's warm start
  (config.init_checkpoint); supervised objectives read the init checkpoint; '' for none."""
  return runs.reference(cfg)[1]


@dataclasses.dataclass(frozen=True)
class FrozenPart:
  """One frozen input of a step before it is read: its target (ShapeDtypeStructs with the shardings it is read
  onto; None for a judge without parameters) and `load(loaded)`, which reads it (`loaded`: the parts read
  before it, in the order of StepPlan.frozen). `what` names it in the start-up log ('' for no line)."""
  target: Any
  load: Callable[[dict], Any]
  what: str = ''


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """A step and its frozen inputs, nothing read yet: `target()` is what the step is compiled against, `load()`
  reads the weights (one timed log line each)."""
  step: Callable
  frozen: dict[str, FrozenPart]

  def target(self) -> dict:
    return {name: part.target for name, part in self.frozen.items()}

  def load(self) -> dict:
    loaded = {}
    for name, part in self.frozen.items():
      with timed(part.what):
        loaded[name] = part.load(loaded)
    return loaded


@contextlib.contextmanager
def timed(what: str):
  """Logs `what` and the seconds it took, one line when it is done (nothing when `what` is ''). Yields a dict
  whose 'seconds' is set then, and whose 'what' the block may change (e.g. to add what it found)."""
  record = {'what': what, 'seconds': None}
  start = time.perf_counter()
  yield record
  record['seconds'] = time.perf_counter() - start
  if record['what']:
    log.info('%s: %.1f s', record['what'], record['seconds'])


def build_step(cfg: ExperimentConfig, task: Task, run: Setup, tx: optax.GradientTransformation,
               lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict]):
  """(step(state, frozen, batch), frozen): `plan_step` with its frozen inputs read."""
  plan = plan_step(cfg, task, run, tx, lr_schedule, mesh, initial_params)
  return plan.step, plan.load()


def plan_step(cfg: ExperimentConfig, task: Task, run: Setup, tx: optax.GradientTransformation,
              lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict],
              judge: tuple | None = None, stop_ids: tuple[int, ...] | None = None) -> StepPlan:
  """The step and its frozen inputs, from the runs' saved configs alone (no weight is read until
  `StepPlan.load`). `initial_params()` gives the run's initial parameters (the reference policy mu when no
  reference checkpoint is named); checkpoints are restored onto `run.params_target()` (or the LoRA base's).
  `judge` ((Judge, FrozenPart), as `_judge` makes them) and `stop_ids` replace what the judge's run and the
  tokenizer would give: nlhf-compile compiles the step of a config whose runs and files are elsewhere."""
  o = cfg.online
  frozen = {}
  if run.lora:  # the frozen base: the reference policy online and offline, the init checkpoint for sft
    source = reference_run(cfg, task)
    target = checkpointing.as_dtype(run.base_target, cfg.offline.frozen_dtype if task.offline else o.frozen_dtype)
    frozen['base'] = FrozenPart(target, lambda loaded: checkpointing.restore_params(
        checkpointing.checkpoints_dir(source), target)[0], f'restoring the base weights (mu) from {source}')
  if task.offline:
    return _offline_step(cfg, task, run, tx, lr_schedule, mesh, initial_params, frozen)
  if not task.online:
    step = steps.make_train_step(run.graphdef, task.loss_fn, tx, lr_schedule, cfg.train.grad_accum_steps)
    if not frozen:
      return StepPlan(lambda state, frozen, batch: step(state, batch), {})
    return StepPlan(lambda state, frozen, batch: step(state, batch, frozen['base']), frozen)
  s = o.sampling
  top_k_filters = 0 < s.top_k < cfg.model.vocab_size  # top_k >= the vocabulary keeps every token
  if s.temperature != 1.0 or top_k_filters or s.top_p < 1.0:
    log.info('online sampling at temperature %s, top_k %s, top_p %s: the policy optimised is the sampled pi_T '
             '(the tempered, filtered policy; docs/online.md), not pi_theta at temperature 1',
             s.temperature, s.top_k, s.top_p)
  judge, judge_part = _judge(cfg, mesh) if judge is None else judge
  stop_ids = load_tokenizer(cfg.data.tokenizer).stop_ids if stop_ids is None else stop_ids
  step = OnlineStep(cfg, run.graphdef, tx, lr_schedule, judge, stop_ids, mesh, run.base_graphdef)
  if not run.lora:
    frozen['reference'] = _reference(run.params_target(), reference_run(cfg, task), o.frozen_dtype, initial_params)
  frozen['judge'] = judge_part
  return StepPlan(step, frozen)


def _reference(target: dict, path: str, dtype: str, initial_params: Callable[[], dict]) -> FrozenPart:
  """mu: restored from the run at `path`, else the policy's initial parameters; floats in `dtype`."""
  target = checkpointing.as_dtype(target, dtype)
  if path:
    return FrozenPart(target, lambda loaded: checkpointing.load_policy(path, target),
                      f'restoring the reference from {path}')

  def initial(loaded):
    params = initial_params()
    return jax.tree.map(lambda x: x.astype(dtype), params) if dtype else params
  return FrozenPart(target, initial, 'initialising the reference (the policy\'s initial parameters)')


def _judge(cfg: ExperimentConfig, mesh: Mesh):
  """(Judge without parameters, FrozenPart of its parameters): a judge model's graph from its run's saved config,
  its weights read by the part."""
  o = cfg.online
  if o.judge == 'prompted' and o.judge_checkpoint:  # a language model asked which response is better
    judge, target, load = prompted.plan(cfg, mesh)
    return judge, FrozenPart(target, lambda loaded: load(), f'restoring the judge (prompted) from {o.judge_checkpoint}')
  if o.judge not in ('preference_model', 'reward_model') or not o.judge_checkpoint:
    judge = judges.make_judge(o.judge, mesh, o.judge_checkpoint, o.oracle, o.frozen_dtype)  # an oracle, or the error
    return judge, FrozenPart(judge.params, lambda loaded: judge.params)
  cls = PreferenceModel if o.judge == 'preference_model' else RewardModel
  graphdef, target, _ = checkpointing.frozen_target(o.judge_checkpoint, cls, mesh, o.frozen_dtype,
                                                     cfg.model.attention_impl)
  path = checkpointing.checkpoints_dir(o.judge_checkpoint)
  return (judges.model_judge(o.judge, graphdef, None),
          FrozenPart(target, lambda loaded: checkpointing.restore_params(path, target)[0],
                     f'restoring the judge ({o.judge}) from {o.judge_checkpoint}'))


def _offline_step(cfg: ExperimentConfig, task: Task, run: Setup, tx: optax.GradientTransformation,
                  lr_schedule: optax.Schedule, mesh: Mesh, initial_params: Callable[[], dict],
                  frozen: dict[str, FrozenPart]) -> StepPlan:
  """The offline step (training/offline_step.py: mu's log-probabilities of both responses join the batch, then
  the supervised step on the row's loss) and mu: config.offline.reference_checkpoint, else config.init_checkpoint
  (the policy's warm start), else the policy's initial parameters; under LoRA it is the base that the adapters sit
  on (frozen['base']). mu runs in every step (frozen['reference']), or, with offline.reference_logprobs='cached',
  once per split before training (frozen['reference_logprobs'], {'train': [N, 2], 'eval': [M, 2]} tables looked
  up by example_index; mu is read, used and dropped when the tables are loaded)."""
  o = cfg.offline
  step = OfflineStep(cfg, run.graphdef, tx, lr_schedule, run.base_graphdef)
  source = reference_run(cfg, task)
  mu = frozen.get('base') or _reference(run.params_target(), source, o.frozen_dtype, initial_params)
  if o.reference_logprobs == 'cached':
    mu_graphdef = run.base_graphdef if run.lora else run.graphdef
    frozen['reference_logprobs'] = _cached_reference(cfg, source, mu_graphdef, mu, mesh)
  elif not run.lora:
    frozen['reference'] = mu
  return StepPlan(step, frozen)


def _cached_reference(cfg: ExperimentConfig, source: str, mu_graphdef: nnx.GraphDef, mu: FrozenPart,
                      mesh: Mesh) -> FrozenPart:
  """The tables of offline.reference_logprobs='cached' (float32 [N, 2] a split, replicated): read from the cache
  or computed with mu, which is read for them (or, under LoRA, is the base read before) and then dropped."""
  splits = {'train': cfg.data.split}
  if cfg.train.eval_every > 0:
    splits['eval'] = cfg.data.eval_split
  replicated = NamedSharding(mesh, P())
  target = {key: jax.ShapeDtypeStruct((len(pipelines.make_source(cfg.data, 'pairs', cfg.seed, split)), 2),
                                      jnp.float32, sharding=replicated) for key, split in splits.items()}

  def load(loaded):
    read = {'params': loaded.get('base')}

    def params():  # mu, read the first time a table is computed (never when every table is in the cache)
      if read['params'] is None:
        with timed(mu.what):
          read['params'] = mu.load(loaded)
      return read['params']
    tables = {}
    for key, split in splits.items():
      table = reference_cache.load_or_compute(cfg, source, mu_graphdef, params, mesh, split)
      tables[key] = jax.make_array_from_callback(table.shape, replicated, lambda index, t=table: t[index])
    return tables
  return FrozenPart(target, load, 'the reference log-probabilities')
