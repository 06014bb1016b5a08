"""The training step of a config compiled for a mesh of any devices (real or compile-only), against abstract
inputs, with nothing allocated and nothing read but the config: what `nlhf-compile` measures.

It builds the step exactly as `trainer.loop.train` does (tasks.setup, tasks.plan_step, loop.jit_step, the train
state's abstract target, the frozen inputs' targets) and lowers it against ShapeDtypeStructs. Only the inputs
that training reads from files are made from the config instead:
- the batch: one synthetic record of the objective's data kind encoded by the data pipeline's own Encoder (so
  the batch has the fields, lengths and dtypes that training's batches have), repeated to the global batch and
  sharded by the batch rule;
- the judge of an online objective: the shape saved in its run when the run is here, else `judge_model` (by
  default the policy's model config): a preference or reward model of that shape;
- the stop ids: the tokenizer's when it can be read here, else (0,) (their number does not change the program).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from flax import nnx

from nlhf_jax.config import ExperimentConfig, ModelConfig
from nlhf_jax.config.mesh_checks import decode_tensor_size
from nlhf_jax.data import pipelines
from nlhf_jax.data.tokenizer import ByteTokenizer, load_tokenizer
from nlhf_jax.distributed import batch_spec, make_mesh
from nlhf_jax.distributed.multihost import global_batch_spec
from nlhf_jax.models.judges import PreferenceModel, RewardModel
from nlhf_jax.online import judges
from nlhf_jax.trainer import loop, memory
from nlhf_jax.trainer.tasks import FrozenPart, get_task, plan_step, setup
from nlhf_jax.training import checkpointing, init, optim

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CompiledStep:
  """A compiled training step and the abstract inputs it was compiled against."""
  cfg: ExperimentConfig
  task: object
  mesh: object
  compiled: object  # jax.stages.Compiled
  state: object  # TrainState of ShapeDtypeStructs
  frozen: dict  # the frozen inputs' ShapeDtypeStructs (reference, base, judge, tables)
  batch: dict
  judge_model: ModelConfig | None  # the judge's shape (online objectives with a model judge)


def abstract_batch(cfg: ExperimentConfig, task, mesh) -> dict:
  """ShapeDtypeStructs of the global batch that training's data pipeline gives `task` under `cfg`."""
  kind, b = task.objective.data, cfg.train.batch_size
  record = pipelines.SyntheticSource(kind, 0, 1).__getitems__([0])[0]
  data_cfg = dataclasses.replace(cfg.data, chat_template=False, overflow='truncate')
  encoder = pipelines.Encoder(ByteTokenizer(), data_cfg, kind, 'shapes', split_fields=kind != 'demonstrations')
  one = encoder.encode(record, 0)
  local = {k: np.repeat(np.asarray(v)[None], b, axis=0) for k, v in one.items()}
  local['example_index'] = np.arange(b, dtype=np.int32)
  return global_batch_spec(mesh, local)


def _model_judge(cfg: ExperimentConfig, mesh, judge_model: ModelConfig | None):
  """(Judge, FrozenPart, judge shape) of an online objective; None for the judges training makes itself."""
  o = cfg.online
  if o.judge not in ('preference_model', 'reward_model'):
    return None
  cls = PreferenceModel if o.judge == 'preference_model' else RewardModel
  if o.judge_checkpoint and os.path.exists(os.path.join(o.judge_checkpoint, 'config.json')):
    graphdef, target, shape = checkpointing.frozen_target(o.judge_checkpoint, cls, mesh, o.frozen_dtype,
                                                                 cfg.model.attention_impl)
  else:
    shape = dataclasses.replace(judge_model or cfg.model, attention_impl=cfg.model.attention_impl)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(shape, nnx.Rngs(0))))
    target = checkpointing.as_dtype(checkpointing.params_target(abstract, mesh), o.frozen_dtype)
  return (judges.model_judge(o.judge, graphdef, None), FrozenPart(target, lambda loaded: None)), shape


def _stop_ids(cfg: ExperimentConfig) -> tuple[int, ...]:
  try:
    return tuple(load_tokenizer(cfg.data.tokenizer).stop_ids) or (0,)
  except Exception:  # the tokenizer's files are elsewhere: the stop ids' values do not change the program
    return (0,)


def _never(*_):
  raise RuntimeError('a compile-only step reads no parameters')


def compile_step(cfg: ExperimentConfig, devices=None, judge_model: ModelConfig | None = None,
                 compiler_options: dict | None = None) -> CompiledStep:
  """Compiles `cfg`'s training step for a mesh over `devices` (default: every device), as training compiles it."""
  task = get_task(cfg.train.objective)
  mesh = make_mesh(cfg.mesh, devices)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  run = setup(cfg, task, tx, mesh)
  state = init.abstract_state(run.shardings, jax.eval_shape(run.init, cfg.seed))
  judge, shape = None, None
  if task.online:
    made = _model_judge(cfg, mesh, judge_model)
    if made is not None:
      judge, shape = made
  plan = plan_step(cfg, task, run, tx, optim.schedule(cfg.optim, cfg.train.num_steps), mesh, _never,
                   judge=judge, stop_ids=_stop_ids(cfg) if task.online else None)
  step_fn = loop.jit_step(cfg, run, plan.step, mesh)
  frozen, batch = plan.target(), abstract_batch(cfg, task, mesh)
  compiled = step_fn.lower(state, frozen, batch).compile(compiler_options=compiler_options)
  return CompiledStep(cfg, task, mesh, compiled, state, frozen, batch, shape)


def per_device_bytes(tree) -> int:
  """Bytes that one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, 'sharding', None) is not None else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def total_bytes(tree) -> int:
  return sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_parts(step: CompiledStep) -> dict:
  """Per device: what the inputs hold (parameters, optimizer state, the objective's extra copies, each frozen
  model, the batch) from their shardings, the KV caches the sampler makes (online objectives), and XLA's compiled
  figures (arguments, outputs, temporaries, donated, total)."""
  s = step.state
  parts = dict(params=per_device_bytes(s.params), opt_state=per_device_bytes(s.opt_state),
               extras=per_device_bytes(s.extras) if getattr(s, 'extras', None) else 0,
               batch=per_device_bytes(step.batch))
  parts.update({f'frozen_{k}': per_device_bytes(v) for k, v in step.frozen.items()})
  if step.task.online:
    parts['kv_caches'] = kv_cache_bytes(step.cfg, step.mesh)
  xla = memory.step_bytes(step.compiled) or {}
  return dict(parts, **{f'xla_{k}': int(v) for k, v in xla.items()})


def sampled_prompts(cfg: ExperimentConfig) -> tuple[int, int, int]:
  """(prompts, decoding models, rows) of one online step's sampling: the sampler's prompts (the batch, times
  samples_per_prompt), the models that decode them (the policy and, for a mixture opponent, the reference) and
  the rows decoded (the policy's two a prompt, the reference's one)."""
  o, spec = cfg.online, get_task(cfg.train.objective).objective
  prompts = cfg.train.batch_size * max(getattr(o, 'samples_per_prompt', 1) or 1, 1)
  models = 2 if spec.opponent == 'mixture' else 1
  return prompts, models, prompts * (models + 1)


def kv_slot_bytes(cfg: ExperimentConfig, mesh) -> float:
  """Per device: one row's cache slot in every layer (keys and values), in the sampler's cache dtype, split by
  rows over the batch shards and by kv heads over 'tensor' (with online.sampling.decode_tensor: over every device,
  the sampler's own layout)."""
  m, o = cfg.model, cfg.online
  itemsize = 2 if (o.sampling.kv_cache_dtype or m.compute_dtype) == 'bfloat16' else 4
  axes = batch_spec(1)[0]
  axes = axes if isinstance(axes, tuple) else (axes,)
  shards = int(np.prod([mesh.shape[a] for a in axes if a])) * mesh.shape.get('tensor', 1)
  if decode_tensor_size(o.sampling.decode_tensor, mesh.devices.size, m) > 1:
    shards = mesh.devices.size
  return 2 * m.num_layers * m.kv_heads * m.head_dim * itemsize / max(shards, 1)


def kv_cache_bytes(cfg: ExperimentConfig, mesh) -> int:
  """Per device: the KV caches of one online step's sampling, part of XLA's temporaries: each decoding model's
  prompt slots once per prompt and max_new_tokens slots for each of its rows (sampling/decode.py)."""
  prompts, models, rows = sampled_prompts(cfg)
  slots = models * prompts * cfg.data.prompt_len + rows * cfg.online.sampling.max_new_tokens
  return int(slots * kv_slot_bytes(cfg, mesh))
