"""Compiling a config's training step for an accelerator target without its hardware, and the figures of the
compiled program: what nlhf-compile (cli/compile.py) prints.

`experiment` builds the validated ExperimentConfig from a config and the command's overrides (a preset or a
Hugging Face config.json shape, batch, lengths, LoRA rank, mesh, single keys); `measure` compiles its step for a
target's compile-only devices (trainer/compile_only.py) and returns every figure as one dict: per-device memory
(from the shardings and from XLA), compiled FLOPs and bytes with loops counted by their trip counts
(accelerators/hlo.py) against the analytic count (perf.step_flops), the sampler's bytes per decoded token against
the ideal, and the roofline by phase (accelerators/roofline.py). A step that does not fit comes back with
fits=False; `switches_that_fit` compiles each of FIXES on it and names those that fit. Errors in the request are
CompileError (a ConfigError: one line).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time

from nlhf_jax import perf
from nlhf_jax.accelerators import devices as devices_lib
from nlhf_jax.accelerators import hlo, roofline
from nlhf_jax.accelerators import targets as targets_lib
from nlhf_jax.accelerators.targets import CompileError
from nlhf_jax.config import from_config_dict
from nlhf_jax.config.mesh_checks import decode_tensor_size
from nlhf_jax.config.objectives import get as objective
from nlhf_jax.config.presets import _AT_SIZE, PRESETS
from nlhf_jax.config.presets import preset as preset_fields
from nlhf_jax.distributed.mesh import parse_mesh
from nlhf_jax.models import flash
from nlhf_jax.models.hf.config import model_config
from nlhf_jax.outputs import write_text
from nlhf_jax.sampling.decode import LOOP_SCOPE
from nlhf_jax.sampling.sampler import SCOPE
from nlhf_jax.trainer import compile_only

log = logging.getLogger(__name__)


def model_overrides(preset: str, hf_config: str) -> dict | None:
  """The model fields that --preset or --hf_config give (None for neither)."""
  if preset and hf_config:
    raise CompileError('give --preset or --hf_config, not both')
  if preset:
    check_preset(preset, '--preset')
    return preset_fields(preset)
  if hf_config:
    if not os.path.isfile(hf_config):
      raise CompileError(f'--hf_config={hf_config} is not a file; give the config.json of a Hugging Face model')
    with open(hf_config) as f:
      try:
        fields = dataclasses.asdict(model_config(json.load(f)))
      except json.JSONDecodeError as e:
        raise CompileError(f'--hf_config={hf_config}: not valid JSON ({e})') from e
    fields.pop('lora', None)
    return dict(fields, **_AT_SIZE)
  return None


def check_preset(name: str, flag: str) -> None:
  if name not in PRESETS:
    raise CompileError(f'{flag}={name!r} is unknown; choose one of {", ".join(PRESETS)}')


def experiment(c, num_devices: int, model: dict | None = None, batch_size=None, prompt_len=None, new_tokens=None,
               lora_rank=None, mesh: str = '', sets: dict | None = None, typed: dict | None = None):
  """The validated ExperimentConfig of ConfigDict `c` with the command's overrides, for `num_devices`. `typed`:
  the `--config.*` overrides of the command line ({'model.remat': 'none'}), whose model fields are kept over the
  `model` fields of a preset or Hugging Face config."""
  c = c.copy_and_resolve_references() if hasattr(c, 'copy_and_resolve_references') else c
  c.unlock() if hasattr(c, 'unlock') else None
  if model is not None:
    lora = c.model.lora.to_dict() if hasattr(c.model.lora, 'to_dict') else dict(c.model.lora)
    c.model.update(model)
    c.model.lora.update(lora)
    sets = {**{k: v for k, v in (typed or {}).items() if k.startswith('model.')}, **(sets or {})}
  spec = objective(c.train.objective)
  if batch_size:
    c.train.batch_size = batch_size
  if prompt_len:
    c.data.prompt_len = prompt_len
  if new_tokens:
    c.online.sampling.max_new_tokens = new_tokens
  if lora_rank is not None:
    c.model.lora.rank = lora_rank
  if spec.online:
    c.model.max_len = max(c.model.max_len, c.data.prompt_len + c.online.sampling.max_new_tokens)
    if c.online.judge in ('preference_model', 'reward_model') and not c.online.judge_checkpoint:
      c.online.judge_checkpoint = '-'  # compiled from its shape (--judge_preset), never read
    if c.model.lora.rank and not c.online.reference_checkpoint:
      c.online.reference_checkpoint = '-'  # the LoRA base: abstract here
  if mesh:
    c.mesh = parse_mesh(mesh)
  for key, value in (sets or {}).items():  # 'online.sampling.sharded_decode' -> c.online.sampling.sharded_decode
    *sections, field = key.split('.')
    node = c
    for name in sections:
      node = node[name]
    setattr(node, field, value)
  return from_config_dict(c, num_devices)


def measure(cfg, target: targets_lib.Target, devices: list, judge_model=None, hlo_dir: str = '',
            triton_gemm: bool = True) -> dict:
  """Compiles cfg's step for `devices` (of `target`) and returns every figure. `triton_gemm=False`: a GPU target's
  matmuls are cuBLAS calls from the start (what the compile falls back to when Triton cannot tile one)."""
  options = None if triton_gemm or target.platform != 'cuda' else {'xla_gpu_enable_triton_gemm': False}
  start = time.perf_counter()
  head = dict(model=cfg.model.preset, parameters=None, sharded_decode=cfg.online.sampling.sharded_decode,
              decode_tensor=cfg.online.sampling.decode_tensor, decode_segments=cfg.online.sampling.decode_segments,
              target=target.name, devices=len(devices),
              processes=devices_lib.process_count(devices),
              objective=cfg.train.objective, batch_size=cfg.train.batch_size, lora_rank=cfg.model.lora.rank,
              remat=cfg.model.remat, device_memory_bytes=target.memory_bytes)
  try:
    try:
      step = compile_only.compile_step(cfg, devices, judge_model, compiler_options=options)
    except Exception as e:  # XLA's GPU compiler without a GPU to autotune: see docs/benchmark.md
      if options or target.platform != 'cuda' or "Couldn't find output tile sizes" not in str(e):
        raise
      options = {'xla_gpu_enable_triton_gemm': False}
      step = compile_only.compile_step(cfg, devices, judge_model, compiler_options=options)
  except Exception as e:  # the TPU compiler refuses a program larger than HBM itself
    needed = _out_of_memory(str(e))
    if needed is None:
      raise
    return dict(head, fits=False, per_device_bytes=needed, compile_s=round(time.perf_counter() - start, 1),
                xla_message=str(e).splitlines()[0][:300])
  seconds = time.perf_counter() - start
  parts = compile_only.memory_parts(step)
  text = step.compiled.as_text()
  if hlo_dir:
    os.makedirs(hlo_dir, exist_ok=True)
    write_text(os.path.join(hlo_dir, f'{target.name.replace(":", "_")}.hlo.txt'), text)
  costs = hlo.analyze(text, (SCOPE,), (LOOP_SCOPE,), flash.kernel_costs)
  phases = roofline.roofline(costs, target)
  n = len(devices)
  analytic = perf.step_flops(cfg, step.judge_model) / n
  total = phases['total']
  out = dict(head, mesh=dict(step.mesh.shape), compile_s=round(seconds, 1), triton_gemm=options is None,
             parameters=compile_only.total_bytes(step.state.params), per_device_bytes=parts.get('xla_total', 0),
             fits=parts.get('xla_total', 0) <= target.memory_bytes, **parts,
             flops=costs.flops, analytic_flops=analytic, flops_ratio=costs.flops / analytic if analytic else None,
             hbm_bytes=costs.bytes, collective_bytes=costs.collective_bytes, loops=costs.loops,
             uncounted_loops=costs.uncounted_loops, roofline_s=total.seconds,
             roofline_mfu=roofline.mfu(analytic, total.seconds, target),
             phases={k: dict(seconds=p.seconds, bound=p.bound, flops=p.flops, bytes=p.bytes,
                             compute_s=p.compute_s, memory_s=p.memory_s, collective_s=p.collective_s)
                     for k, p in phases.items()})
  if step.task.online:
    out.update(_decode_figures(cfg, step, costs, n))
    out['sampled_tokens_per_s'] = (2 * cfg.train.batch_size * cfg.online.sampling.max_new_tokens / total.seconds
                                   if total.seconds else None)
  return out


def _out_of_memory(message: str) -> int | None:
  """The bytes a device would need, from the TPU compiler's 'Ran out of memory on HBM ... (39.02G) exceeds ...'."""
  if 'RESOURCE_EXHAUSTED' not in message or 'memory' not in message:
    return None
  m = re.search(r'\(([0-9.]+)([KMGT])\) exceeds', message)
  if not m:
    return None
  return int(float(m.group(1)) * 1024 ** ' KMGT'.index(m.group(2)))


def _decode_figures(cfg, step, costs, n: int) -> dict:
  """The sampler's HBM bytes per decoded token (the instructions of the sample phase inside the decode loop) and the
  ideal: every decoding model's weights (an untied input embedding left out: a token reads one row of it) and the
  filled slots of the KV caches read once per token (a prompt's slots once for each model, whatever rows it
  decodes from them; each row's own slots, on average (new - 1) / 2), per device."""
  new = cfg.online.sampling.max_new_tokens
  decode_ops = [o for o in costs.ops if o.phase == SCOPE and LOOP_SCOPE in o.marks]
  measured = sum(o.bytes for o in decode_ops) / max(new - 1, 1)
  frozen = step.frozen.get('reference') or step.frozen.get('base')
  tree = frozen if frozen is not None else step.state.params
  weights = compile_only.total_bytes(tree)
  if not cfg.model.tie_embeddings and 'embed' in tree:  # a decoded token reads one row of the input embedding
    weights -= compile_only.total_bytes(tree['embed'])
  regrouped = decode_tensor_size(cfg.online.sampling.decode_tensor, n, cfg.model)
  tensor = regrouped if regrouped > 1 else step.mesh.shape.get('tensor', 1)  # the sampler's own layout's
  prompts, models, rows = compile_only.sampled_prompts(cfg)  # models: the policy, and a mixture's reference
  cache = compile_only.kv_slot_bytes(cfg, step.mesh) * (models * prompts * cfg.data.prompt_len +
                                                        rows * (new - 1) / 2)  # a prompt's slots once
  ideal = models * weights / tensor + cache
  return dict(decode_bytes_per_token=measured, decode_ideal_bytes_per_token=ideal,
              decode_bytes_ratio=measured / ideal if ideal else None)


FIXES = (('the sampler\'s tensor-parallel layout (online.sampling.decode_tensor=-1)',
          dict(sets={'online.sampling.decode_tensor': -1})),
         ('the sampler\'s weights left sharded (online.sampling.sharded_decode=true)',
          dict(sets={'online.sampling.sharded_decode': True})),
         ('the sampler\'s scanned layers kept on GPU (online.sampling.unroll_layers=false)',
          dict(sets={'online.sampling.unroll_layers': False}, gpu=True)),
         ('LoRA adapters (model.lora.rank=16)', dict(lora_rank=16)),
         ('remat of every layer (model.remat=full)', dict(model=dict(remat='full'))),
         ('parameters sharded over every device (mesh fsdp=-1)', dict(mesh='fsdp=-1')),
         ('half the batch', dict(half_batch=True)))


def switches_that_fit(c, cfg, target, devices, args: dict, judge_model, triton_gemm: bool = True) -> list[str]:
  """The switches of FIXES that make the step fit, each compiled: 'SWITCH: N GiB a device'."""
  out = []
  for what, change in FIXES:
    a = dict(args)
    if 'lora_rank' in change:
      if cfg.model.lora.rank or not _objective(cfg).trains_policy:
        continue
      a['lora_rank'] = change['lora_rank']
    if 'model' in change:
      if cfg.model.remat == 'full':
        continue
      a['model'] = dict(a.get('model') or {}, **change['model'])
    if 'mesh' in change:
      if cfg.mesh.fsdp in (-1, len(devices)):
        continue
      a['mesh'] = change['mesh']
    if change.get('gpu') and target.platform != 'cuda':
      continue
    if 'sets' in change:
      key, value = next(iter(change['sets'].items()))
      if not _objective(cfg).online or getattr(cfg.online.sampling, key.rsplit('.', 1)[1]) == value:
        continue
      a['sets'] = dict(a.get('sets') or {}, **change['sets'])
    if change.get('half_batch'):
      if cfg.train.batch_size // 2 < len(devices) or cfg.train.batch_size % 2:
        continue
      a['batch_size'] = cfg.train.batch_size // 2
    try:
      r = measure(experiment(c, len(devices), **a), target, devices, judge_model, triton_gemm=triton_gemm)
    except Exception as e:  # a switch the config cannot take
      log.info('%s: %s', what, str(e).splitlines()[0][:200])
      continue
    if r['fits']:
      out.append(f'{what}: {r["per_device_bytes"] / targets_lib.GiB:.1f} GiB a device')
  return out


def _objective(cfg):
  return objective(cfg.train.objective)
