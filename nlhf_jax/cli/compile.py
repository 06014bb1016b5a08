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

import json

from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import logs
from nlhf_jax.cli import common
from nlhf_jax.accelerators import devices as devices_lib
from nlhf_jax.accelerators import targets as targets_lib
from nlhf_jax.accelerators.targets import CompileError



def _define_flags() -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config, as nlhf-train takes it '
                                  '(e.g. experiments/configs/nash_md.py:tiny), with --config.KEY=VALUE overrides.',
                                  lock_config=False)
  flags.DEFINE_list('target', [], 'Targets, e.g. tpu:v5e-8,gpu:h100x8 (--list shows them).')
  flags.DEFINE_bool('list', False, 'List the targets and exit.')
  flags.DEFINE_string('preset', '', 'Replace the config\'s model by this preset shape (e.g. 1b, 8b, 70b); '
                      '--config.model.KEY=VALUE overrides still apply (e.g. --config.model.attention_impl=flash).')
  flags.DEFINE_string('hf_config', '', 'Replace the config\'s model by the shape of this Hugging Face config.json '
                      '(with the preset switches of real sizes: scanned, rematerialised, bfloat16 layers).')
  flags.DEFINE_string('judge_preset', '', 'Shape of a model judge whose run is not here (default: the policy\'s).')
  flags.DEFINE_integer('batch_size', None, 'config.train.batch_size.')
  flags.DEFINE_integer('prompt_len', None, 'config.data.prompt_len.')
  flags.DEFINE_integer('new_tokens', None, 'config.online.sampling.max_new_tokens.')
  flags.DEFINE_integer('lora_rank', None, 'config.model.lora.rank (0: full fine-tuning).')
  flags.DEFINE_string('mesh', '', 'Mesh, e.g. fsdp=-1 or data=2,fsdp=4 (default: the config\'s).')
  flags.DEFINE_bool('fixes', True, 'When a step does not fit, compile the switches that would make it fit.')
  flags.DEFINE_bool('triton_gemm', True, 'GPU targets: let XLA make matmuls Triton kernels (false: cuBLAS calls only, '
                    'what the compile falls back to when Triton cannot tile one without a GPU to autotune on).')
  flags.DEFINE_bool('json', False, 'Print the figures as one JSON object per target on the last line.')
  flags.DEFINE_string('hlo_dir', '', 'Write each target\'s optimized HLO module there (TARGET.hlo.txt).')
  flags.DEFINE_bool('markdown', False, 'Print the results as a table (docs/benchmark.md, "What fits where").')
  flags.mark_flag_as_required('config')


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
  devices_lib.use_compilers()  # before JAX is imported
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.config.presets import preset
  from nlhf_jax.trainer.target_compile import check_preset, experiment, measure, model_overrides, switches_that_fit
  model = model_overrides(f.preset, f.hf_config)
  if f.judge_preset:
    check_preset(f.judge_preset, '--judge_preset')
  judge_model = ModelConfig.from_dict(preset(f.judge_preset)) if f.judge_preset else None
  args = dict(model=model, batch_size=f.batch_size, prompt_len=f.prompt_len, new_tokens=f.new_tokens,
              lora_rank=f.lora_rank, mesh=f.mesh, typed=dict(f['config'].override_values))
  results, refused = [], []
  for target in chosen:
    devices = devices_lib.target_devices(target)
    cfg = experiment(f.config, len(devices), **args)
    r = measure(cfg, target, devices, judge_model, f.hlo_dir, f.triton_gemm)
    print(report(r), flush=True)
    if not r['fits']:
      fixes = switches_that_fit(f.config, cfg, target, devices, args, judge_model, f.triton_gemm) if f.fixes else []
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
