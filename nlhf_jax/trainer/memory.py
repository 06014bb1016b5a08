"""The memory a training step needs, checked before any weight is read.

Training compiles its step against abstract inputs (ShapeDtypeStructs with the shardings it trains with) before
it restores or initialises anything; `check_step_fits` reads XLA's memory analysis of that program (per device:
arguments + outputs + temporaries - the donated inputs that the outputs reuse) and compares it with what a device
has (perf.device_memory: an accelerator's free memory; on CPU the host's available memory shared by this
process's CPU devices; with several processes the least of any process, so that all refuse or none does). A step
that does not fit is a ConfigError naming both figures and the fields that bring it down. jit keeps the compiled
program, so the first step's call does not compile it again.
"""
from __future__ import annotations

import logging

import jax

from nlhf_jax import perf
from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.distributed import global_batch
from nlhf_jax.distributed.multihost import smallest_over_processes

log = logging.getLogger(__name__)


def abstract_batch(data, mesh) -> dict:
  """ShapeDtypeStructs (with shardings) of the global batches that the iterator `data` gives, read from its next
  batch, which it then gives again (its state is put back)."""
  state = data.get_state()
  local = next(data)
  data.set_state(state)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), global_batch(mesh, local))


def step_bytes(compiled) -> dict | None:
  """XLA's figures for one device of a compiled program (None when the backend gives none): 'total' and its parts."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  parts = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
               temporaries=mem.temp_size_in_bytes, donated=mem.alias_size_in_bytes)
  return dict(parts, total=parts['arguments'] + parts['outputs'] + parts['temporaries'] - parts['donated'])


def check_step_fits(compiled, cfg: ExperimentConfig, task, mesh) -> None:
  """Raises ConfigError when the compiled step needs more memory than a device of `mesh` has (see the module
  docstring); logs both figures otherwise."""
  need, have = step_bytes(compiled), perf.device_memory(mesh.local_devices)
  if need is None or have is None:
    log.info('the step\'s memory is not checked: the %s backend does not report it', jax.default_backend())
    return
  available, where = have
  fewest = smallest_over_processes(available)  # every process refuses, or none: no process waits for the others
  if fewest < available:
    available, where = fewest, f'{where}; the least of any process of this run'
  b = perf.fmt_bytes
  figures = (f"{b(need['total'])} per device (XLA's compiled figures: arguments {b(need['arguments'])} + outputs "
             f"{b(need['outputs'])} + temporaries {b(need['temporaries'])} - donated {b(need['donated'])})")
  if need['total'] > available:
    raise ConfigError(f'the {task.objective.name} step needs {figures}, but a device has {b(available)} ({where}); '
                      f'to fit, {fixes(cfg, task, mesh)}')
  log.info('the step needs %s; a device has %s (%s)', figures, b(available), where)


def fixes(cfg: ExperimentConfig, task, mesh) -> str:
  """The config fields that lower a step's memory, with their values."""
  t, d, m = cfg.train, cfg.data, cfg.model
  lengths = {'demonstrations': f'data.seq_len ({d.seq_len})',
             'pairs': f'data.prompt_len ({d.prompt_len}) or data.response_len ({d.response_len})',
             'prompts': f'data.prompt_len ({d.prompt_len}) or online.sampling.max_new_tokens '
                        f'({cfg.online.sampling.max_new_tokens})'}
  out = [f'lower train.batch_size ({t.batch_size}) or {lengths[task.objective.data]}']
  if t.batch_size // t.grad_accum_steps > 1:
    out.append(f'raise train.grad_accum_steps ({t.grad_accum_steps}: the same batch in smaller micro-batches)')
  if m.remat != 'full':
    out.append(f'set model.remat=full (now {m.remat!r})')
  if not m.logits_chunk and m.vocab_size > 16384:
    out.append(f'set model.logits_chunk=16384 (no [batch, length, {m.vocab_size}] logits)')
  if task.online and not cfg.online.frozen_dtype:
    out.append('set online.frozen_dtype=bfloat16 (the reference and the judge in half the bytes)')
  if task.objective.trains_policy and m.lora.rank == 0:
    out.append('train LoRA adapters (model.lora.rank=16)')
  if mesh.shape.get('data', 1) > 1:
    out.append(f'shard the parameters over the data devices (mesh.fsdp={mesh.shape.get("fsdp", 1)}, mesh.data='
               f'{mesh.shape["data"]})')
  return ', '.join(out[:-1]) + (', or ' if len(out) > 1 else '') + out[-1]
