"""`nlhf-compile`: compile a config's training step for a TPU slice or NVIDIA GPU nodes from this machine, with no
accelerator, and print per device what it holds, what XLA plans, the FLOPs and bytes it runs, and a roofline time.

  nlhf-compile --target=tpu:v5e-4 --config=experiments/configs/nash_md.py:tiny
  nlhf-compile --target=tpu:v5p-8,gpu:h100x8 --config=experiments/configs/nash_md.py:small --preset=8b \\
      --batch_size=64 --prompt_len=256 --new_tokens=128 [--lora_rank=16] [--mesh=fsdp=-1] [--json]
  nlhf-compile --target=gpu:h100x8 --config=experiments/configs/dpo.py:tiny --hf_config=Qwen2.5-7B/config.json
  nlhf-compile --list

The step is the one `nlhf-train` would run with the same --config and overrides (trainer/compile_only.py): every
objective, LoRA, remat, dtypes, scanned layers, the mesh. Nothing is allocated and no checkpoint or data file is
read: the batch comes from the config, the judge's shape from its run when it is here, else --judge_preset (or
the policy's shape). The compilers are libtpu and jax's CUDA plugin, compile-only (accelerators/devices.py),
installed by `make install` in .venv/compilers; this command alone uses them.

Printed per device: the parameters, optimizer state, extra state, frozen models and batch (from their shardings),
the KV caches of sampling, XLA's figures (arguments, outputs, temporaries, donated: the total against the
device's memory); the compiled FLOPs and HBM bytes with loops counted by their trip counts (accelerators/hlo.py),
the model's analytic FLOPs (perf.step_flops) and their ratio, the sampler's bytes per decoded token against the
ideal, and the roofline time by phase with the MFU it implies (accelerators/roofline.py). A step that does not fit
is an `error:` line with its figure and the switches that make it fit, each compiled and measured.
--json: every figure as one JSON object (one per target) on the last line.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import logs
from nlhf_jax.cli import common
from nlhf_jax.config import ConfigError
from nlhf_jax.accelerators import devices as devices_lib
from nlhf_jax.accelerators import targets as targets_lib

log = logging.getLogger(__spec__.name if __spec__ else __name__)  # nlhf_jax.cli.X under `python -m` too


def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config, as nlhf-train takes it '
                                  '(e.g. experiments/configs/nash_md.py:tiny), with --config.KEY=VALUE overrides.',
                                  lock_config=False)
  flags.DEFINE_list('target', [], 'Targets, e.g. tpu:v5e-8,gpu:h100x8 (--list shows them).')
  flags.DEFINE_bool('list', False, 'List the targets and exit.')
  flags.DEFINE_string('preset', '', 'Replace the config\'s model by this preset shape (e.g. 1b, 8b, 70b).')
  flags.DEFINE_string('hf_config', '', 'Replace the config\'s model by the shape of this Hugging Face config.json '
                      '(with the preset switches of real sizes: scanned, rematerialised, bfloat16 layers).')
  flags.DEFINE_string('judge_preset', '', 'Shape of a model judge whose run is not here (default: the policy\'s).')
  flags.DEFINE_integer('batch_size', None, 'config.train.batch_size.')
  flags.DEFINE_integer('prompt_len', None, 'config.data.prompt_len.')
  flags.DEFINE_integer('new_tokens', None, 'config.online.sampling.max_new_tokens.')
  flags.DEFINE_integer('lora_rank', None, 'config.model.lora.rank (0: full fine-tuning).')
  flags.DEFINE_string('mesh', '', 'Mesh, e.g. fsdp=-1 or data=2,fsdp=4 (default: the config\'s).')
  flags.DEFINE_bool('fixes', True, 'When a step does not fit, compile the switches that would make it fit.')
  flags.DEFINE_bool('json', False, 'Print the figures as one JSON object per target on the last line.')
  flags.DEFINE_string('hlo_dir', '', 'Write each target\'s optimized HLO module there (TARGET.hlo.txt).')
  flags.DEFINE_bool('markdown', False, 'Print the results as a table (docs/benchmark.md, "What fits where").')
  flags.mark_flag_as_required('config')


class CompileError(ConfigError):
  """A target's step does not fit, or the request cannot be compiled."""


def model_overrides(preset: str, hf_config: str) -> dict | None:
  """The model fields that --preset or --hf_config give (None for neither)."""
  from nlhf_jax.config.presets import _AT_SIZE, preset as preset_fields
  if preset and hf_config:
    raise CompileError('give --preset or --hf_config, not both')
  if preset:
    check_preset(preset, '--preset')
    return preset_fields(preset)
  if hf_config:
    from nlhf_jax.models.hf.config import model_config
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
  from nlhf_jax.config.presets import PRESETS
  if name not in PRESETS:
    raise CompileError(f'{flag}={name!r} is unknown; choose one of {", ".join(PRESETS)}')


def experiment(c, num_devices: int, model: dict | None = None, batch_size=None, prompt_len=None, new_tokens=None,
               lora_rank=None, mesh: str = '', sets: dict | None = None):
  """The validated ExperimentConfig of ConfigDict `c` with the command's overrides, for `num_devices`."""
  from nlhf_jax.config import from_config_dict
  from nlhf_jax.config.objectives import get as objective
  from nlhf_jax.distributed.mesh import parse_mesh
  c = c.copy_and_resolve_references() if hasattr(c, 'copy_and_resolve_references') else c
  c.unlock() if hasattr(c, 'unlock') else None
  if model is not None:
    lora = c.model.lora.to_dict() if hasattr(c.model.lora, 'to_dict') else dict(c.model.lora)
    c.model.update(model)
    c.model.lora.update(lora)
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


def measure(cfg, target: targets_lib.Target, devices: list, judge_model=None, hlo_dir: str = '') -> dict:
  """Compiles cfg's step for `devices` (of `target`) and returns every figure."""
  import time

  from nlhf_jax import perf
  from nlhf_jax.accelerators import hlo, roofline
  from nlhf_jax.sampling.decode import LOOP_SCOPE
  from nlhf_jax.sampling.sampler import SCOPE
  from nlhf_jax.trainer import compile_only
  options = None
  start = time.perf_counter()
  head = dict(model=cfg.model.preset, parameters=None, sharded_decode=cfg.online.sampling.sharded_decode,
              decode_tensor=cfg.online.sampling.decode_tensor, decode_segments=cfg.online.sampling.decode_segments,
              target=target.name, devices=len(devices),
              processes=devices_lib.process_count(devices),
              objective=cfg.train.objective, batch_size=cfg.train.batch_size, lora_rank=cfg.model.lora.rank,
              remat=cfg.model.remat, device_memory_bytes=target.memory_bytes)
  try:
    try:
      step = compile_only.compile_step(cfg, devices, judge_model)
    except Exception as e:  # XLA's GPU compiler without a GPU to autotune: see docs/benchmark.md
      if target.platform != 'cuda' or "Couldn't find output tile sizes" not in str(e):
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
    from nlhf_jax.outputs import write_text
    os.makedirs(hlo_dir, exist_ok=True)
    write_text(os.path.join(hlo_dir, f'{target.name.replace(":", "_")}.hlo.txt'), text)
  costs = hlo.analyze(text, (SCOPE,), (LOOP_SCOPE,))
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
  import re
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
  from nlhf_jax.sampling.decode import LOOP_SCOPE
  from nlhf_jax.sampling.sampler import SCOPE
  from nlhf_jax.trainer import compile_only
  new = cfg.online.sampling.max_new_tokens
  decode_ops = [o for o in costs.ops if o.phase == SCOPE and LOOP_SCOPE in o.marks]
  measured = sum(o.bytes for o in decode_ops) / max(new - 1, 1)
  models = ['policy'] + (['reference'] if step.task.objective.opponent == 'mixture' else [])
  frozen = step.frozen.get('reference') or step.frozen.get('base')
  tree = frozen if frozen is not None else step.state.params
  weights = compile_only.total_bytes(tree)
  if not cfg.model.tie_embeddings and 'embed' in tree:  # a decoded token reads one row of the input embedding
    weights -= compile_only.total_bytes(tree['embed'])
  from nlhf_jax.config.mesh_checks import decode_tensor_size
  regrouped = decode_tensor_size(cfg.online.sampling.decode_tensor, n, cfg.model)
  tensor = regrouped if regrouped > 1 else step.mesh.shape.get('tensor', 1)  # the sampler's own layout's
  prompts, _, rows = compile_only.sampled_prompts(cfg)
  cache = compile_only.kv_slot_bytes(cfg, step.mesh) * (len(models) * prompts * cfg.data.prompt_len +
                                                        rows * (new - 1) / 2)  # a prompt's slots once
  ideal = len(models) * weights / tensor + cache
  return dict(decode_bytes_per_token=measured, decode_ideal_bytes_per_token=ideal,
              decode_bytes_ratio=measured / ideal if ideal else None)


FIXES = (('the sampler\'s tensor-parallel layout (online.sampling.decode_tensor=-1)',
          dict(sets={'online.sampling.decode_tensor': -1})),
         ('the sampler\'s weights left sharded (online.sampling.sharded_decode=true)',
          dict(sets={'online.sampling.sharded_decode': True})),
         ('LoRA adapters (model.lora.rank=16)', dict(lora_rank=16)),
         ('remat of every layer (model.remat=full)', dict(model=dict(remat='full'))),
         ('parameters sharded over every device (mesh fsdp=-1)', dict(mesh='fsdp=-1')),
         ('half the batch', dict(half_batch=True)))


def _fixes(c, cfg, target, devices, args: dict, judge_model) -> list[str]:
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
      r = measure(experiment(c, len(devices), **a), target, devices, judge_model)
    except Exception as e:  # a switch the config cannot take
      log.info('%s: %s', what, str(e).splitlines()[0][:200])
      continue
    if r['fits']:
      out.append(f'{what}: {r["per_device_bytes"] / targets_lib.GiB:.1f} GiB a device')
  return out


def _objective(cfg):
  from nlhf_jax.config.objectives import get
  return get(cfg.train.objective)


def report(r: dict) -> str:
  from nlhf_jax.perf import fmt_bytes as g
  if 'xla_message' in r:
    return (f'{r["target"]}: {r["objective"]} step, {r["devices"]} devices, batch {r["batch_size"]}, LoRA rank '
            f'{r["lora_rank"]}, remat {r["remat"]}: the compiler refuses it, needing more than '
            f'{g(r["per_device_bytes"])} of {g(r["device_memory_bytes"])} a device ({r["xla_message"]})')
  lines = [f'{r["target"]}: {r["objective"]} step, {r["devices"]} devices in {r["processes"]} processes, mesh '
           f'{r["mesh"]}, batch {r["batch_size"]}, LoRA rank {r["lora_rank"]}, remat {r["remat"]} '
           f'(compiled in {r["compile_s"]} s{"" if r["triton_gemm"] else ", Triton GEMMs off"})',
           f'  per device: parameters {g(r["params"])}, optimizer state {g(r["opt_state"])}, extra state '
           f'{g(r["extras"])}, ' + ', '.join(f'{k[7:]} {g(v)}' for k, v in r.items() if k.startswith('frozen_')) +
           (f', KV caches {g(r["kv_caches"])} (in the temporaries)' if 'kv_caches' in r else ''),
           f'  XLA: arguments {g(r["xla_arguments"])} + outputs {g(r["xla_outputs"])} + temporaries '
           f'{g(r["xla_temporaries"])} - donated {g(r["xla_donated"])} = {g(r["per_device_bytes"])} of '
           f'{g(r["device_memory_bytes"])}: {"fits" if r["fits"] else "DOES NOT FIT"}',
           f'  FLOPs a device {r["flops"]:.3g} (model {r["analytic_flops"]:.3g}, ratio {r["flops_ratio"]:.2f}), HBM '
           f'bytes {r["hbm_bytes"]:.3g}, collectives {r["collective_bytes"]:.3g} bytes']
  if 'decode_bytes_ratio' in r:
    lines.append(f'  decoding: {r["decode_bytes_per_token"]:.3g} bytes a token a device (ideal '
                 f'{r["decode_ideal_bytes_per_token"]:.3g}, ratio {r["decode_bytes_ratio"]:.2f})')
  phases = ', '.join(f'{k} {p["seconds"] * 1e3:.1f} ms ({p["bound"]}-bound)' for k, p in r['phases'].items()
                     if k != 'total')
  lines.append(f'  roofline: {r["roofline_s"] * 1e3:.1f} ms a step ({phases}), MFU at most {r["roofline_mfu"]:.1%}' +
               (f', {r["sampled_tokens_per_s"]:.3g} sampled tokens/s' if r.get('sampled_tokens_per_s') else ''))
  if r['uncounted_loops']:
    lines.append(f'  loops counted once (trip count unknown): {", ".join(r["uncounted_loops"])}')
  return '\n'.join(lines)


TABLE_HEADER = ('| model | trained | target | memory a device | fits | roofline step | roofline MFU | sampled tokens/s |\n'
                '|---|---|---|---|---|---|---|---|')


def table_row(r: dict) -> str:
  """One row of the "What fits where" table."""
  from nlhf_jax.perf import fmt_bytes
  trained = ((f'LoRA r{r["lora_rank"]}' if r['lora_rank'] else 'full') +
             (', sharded decode' if r['sharded_decode'] else '') +
             (f', decode_tensor={r["decode_tensor"]}' if r.get('decode_tensor') else '') +
             (f', decode_segments={r["decode_segments"]}' if r.get('decode_segments', 1) > 1 else ''))
  memory = f'{fmt_bytes(r["per_device_bytes"])} of {fmt_bytes(r["device_memory_bytes"])}'
  if 'xla_message' in r:
    return f'| {r["model"]} | {trained} | {r["target"]} | over {memory} (refused by the compiler) | no | | | |'
  tokens = f'{r["sampled_tokens_per_s"]:.3g}' if r.get('sampled_tokens_per_s') else ''
  return (f'| {r["model"]} | {trained} | {r["target"]} | {memory} | {"yes" if r["fits"] else "no"} | '
          f'{r["roofline_s"]:.3g} s | {r["roofline_mfu"]:.1%} | {tokens} |')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  f = flags.FLAGS
  if f.list:
    print('\n'.join(t.describe() for t in targets_lib.TARGETS.values()))
    return
  if not f.target:
    raise CompileError('give --target=NAME[,NAME...] (nlhf-compile --list shows them)')
  chosen = [targets_lib.get(name) for name in f.target]  # every name checked before any compile
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.config.presets import preset
  model = model_overrides(f.preset, f.hf_config)
  if f.judge_preset:
    check_preset(f.judge_preset, '--judge_preset')
  judge_model = ModelConfig.from_dict(preset(f.judge_preset)) if f.judge_preset else None
  devices_lib.use_compilers()
  args = dict(model=model, batch_size=f.batch_size, prompt_len=f.prompt_len, new_tokens=f.new_tokens,
              lora_rank=f.lora_rank, mesh=f.mesh)
  results, refused = [], []
  for target in chosen:
    devices = devices_lib.target_devices(target)
    cfg = experiment(f.config, len(devices), **args)
    r = measure(cfg, target, devices, judge_model, f.hlo_dir)
    print(report(r), flush=True)
    if not r['fits']:
      fixes = _fixes(f.config, cfg, target, devices, args, judge_model) if f.fixes else []
      r['fixes'] = fixes
      refused.append(f'the {cfg.train.objective} step needs {r["per_device_bytes"] / targets_lib.GiB:.1f} GiB a '
                     f'device on {target.name}, which has {target.memory_bytes / targets_lib.GiB:.1f} GiB; ' +
                     (f'these fit (compiled): {"; ".join(fixes)}' if fixes else
                      'no single switch (the tensor-parallel or sharded decoding, LoRA, remat=full, fsdp over every '
                      'device, half the batch) '
                      'makes it fit: '
                      'choose a target with more devices'))
    results.append(r)
  if f.markdown:
    print('\n'.join([TABLE_HEADER] + [table_row(r) for r in results]))
  if f.json:
    print(json.dumps(results if len(results) > 1 else results[0], default=str))
  if refused:
    raise CompileError(' | '.join(refused))


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
