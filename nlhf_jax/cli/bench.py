"""`nlhf-bench` (make bench): speed and memory of the sharded SFT train step.

  nlhf-bench                          # tiny, small and 125m (batch 4 x 128), each in a fresh process
  nlhf-bench --presets=125m:8x256,1b:2x128 --iters=3
  nlhf-bench --presets=tiny:2x16 --iters=1 --json

A preset may carry its own batch shape, PRESET:BATCHxSEQ (otherwise --batch_size x --seq_len). For each it prints
the median step time, tokens/s, model FLOPs per step, MFU against a matmul peak measured in the same process, the
compiled step's memory footprint and the process's peak memory. Each preset runs in its own process so that peak
memory belongs to it alone.

--json adds, as the last line, one JSON object with one entry per preset, keyed PRESET:BATCHxSEQ, each an
object of numbers: params, batch, seq_len, devices, step_s, tokens_per_s, step_flop_count (model FLOPs of one
step), step_flops (their achieved rate), peak_flops (the matmul peak measured in the same process, in the
compute dtype: float32 unless --compute_dtype=bfloat16), step_fraction_of_peak (the MFU), compiled_bytes (absent
where XLA gives no memory analysis) and peak_bytes.
"""
from __future__ import annotations

import json
import subprocess
import sys

from absl import app, flags


def _define_flags() -> None:
  """The command's flags, defined when it runs (not on import, so its functions import beside other
  commands' flags)."""
  flags.DEFINE_list('presets', ['tiny', 'small', '125m:4x128'],
                    'Model presets (nlhf_jax/config/presets.py), each PRESET or PRESET:BATCHxSEQ.')
  flags.DEFINE_integer('batch_size', 8, 'Global batch size.')
  flags.DEFINE_integer('seq_len', 256, 'Tokens per example.')
  flags.DEFINE_integer('iters', 5, 'Timed steps (median reported).')
  flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of the model.')
  flags.DEFINE_string('child', None, 'Internal: measure this preset in this process, print JSON.')
  flags.DEFINE_bool('json', False, 'Print every figure as one JSON object, the last line.')


FLAGS = flags.FLAGS


def measure(preset: str, batch: int, seq_len: int, iters: int, compute_dtype: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from nlhf_jax import perf
  from nlhf_jax.config import MeshConfig, ModelConfig, OptimConfig
  from nlhf_jax.distributed import make_mesh
  from nlhf_jax.models import Transformer
  from nlhf_jax.config.presets import PRESETS
  from nlhf_jax.objectives import sft_loss
  from nlhf_jax.training import init, optim, steps

  cfg = ModelConfig(**dict(PRESETS[preset], preset=preset, compute_dtype=compute_dtype))
  mesh = make_mesh(MeshConfig(data=-1))
  tx = optim.make_optimizer(OptimConfig(), 1000)
  graphdef, state, shardings = init.create_state(lambda r: Transformer(cfg, r), tx, mesh, seed=0)
  step = steps.make_train_step(graphdef, sft_loss, tx, optim.schedule(OptimConfig(), 1000))
  jitted = jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0)
  rng = np.random.default_rng(0)
  batch_np = {'tokens': rng.integers(4, cfg.vocab_size, (batch, seq_len), dtype=np.int32),
              'mask': np.ones((batch, seq_len), bool), 'loss_mask': np.ones((batch, seq_len), np.float32)}
  data = jax.device_put(batch_np)
  compiled = jitted.lower(state, data).compile()
  mem = compiled.memory_analysis()
  footprint = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                        + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  box = {'state': state}

  def one_step():
    box['state'], metrics = compiled(box['state'], data)
    return metrics['loss']

  seconds = perf.median_time(one_step, iters, warmup=2)
  peak = perf.matmul_peak_flops(jnp.bfloat16 if compute_dtype == 'bfloat16' else jnp.float32)
  flops = perf.train_flops(cfg, batch, seq_len - 1)
  mem_bytes, mem_kind = perf.peak_memory_bytes()
  n_params = sum(x.size for x in jax.tree.leaves(box['state'].params))
  return dict(preset=preset, params=n_params, batch=batch, seq_len=seq_len, devices=jax.device_count(),
              platform=jax.devices()[0].platform, compute_dtype=compute_dtype, step_s=seconds,
              tokens_per_s=batch * seq_len / seconds, flops_per_step=flops, matmul_peak=peak,
              mfu=flops / seconds / peak, compiled_bytes=footprint, peak_bytes=mem_bytes, peak_kind=mem_kind)


def parse_preset(entry: str, batch: int, seq_len: int) -> tuple[str, int, int]:
  """'125m:4x128' -> ('125m', 4, 128); a bare preset takes the default batch shape."""
  preset, _, shape = entry.partition(':')
  if shape:
    try:
      batch, seq_len = (int(v) for v in shape.lower().split('x'))
    except ValueError:
      raise app.UsageError(f'--presets entry {entry!r}: expected PRESET or PRESET:BATCHxSEQ, e.g. 125m:4x128')
  return preset, batch, seq_len


def report(r: dict) -> str:
  from nlhf_jax.perf import fmt_bytes
  compiled = 'n/a' if r['compiled_bytes'] is None else fmt_bytes(r['compiled_bytes'])
  return (f"{r['preset']:>6} | {r['params'] / 1e6:8.2f}M params | batch {r['batch']} x {r['seq_len']} | "
          f"step {r['step_s'] * 1e3:9.1f} ms | {r['tokens_per_s']:10.0f} tok/s | "
          f"{r['flops_per_step'] / 1e9:9.2f} GFLOP/step | MFU {100 * r['mfu']:5.1f}% of "
          f"{r['matmul_peak'] / 1e9:.0f} GFLOP/s ({r['compute_dtype']} matmul, measured) | "
          f"compiled {compiled} | peak {fmt_bytes(r['peak_bytes'])} ({r['peak_kind']})")


def figures(r: dict) -> dict:
  """The numbers of one measurement (a `measure` result), named as --json prints them."""
  out = {'params': r['params'], 'batch': r['batch'], 'seq_len': r['seq_len'], 'devices': r['devices'],
         'step_s': r['step_s'], 'tokens_per_s': r['tokens_per_s'], 'step_flop_count': r['flops_per_step'],
         'step_flops': r['flops_per_step'] / r['step_s'], 'peak_flops': r['matmul_peak'],
         'step_fraction_of_peak': r['mfu'], 'compiled_bytes': r['compiled_bytes'], 'peak_bytes': r['peak_bytes']}
  return {k: v for k, v in out.items() if v is not None}


def main(argv) -> None:
  del argv
  if FLAGS.child:
    print(json.dumps(measure(FLAGS.child, FLAGS.batch_size, FLAGS.seq_len, FLAGS.iters, FLAGS.compute_dtype)))
    return
  print(f'SFT train step, median of {FLAGS.iters} steps after compilation (one process per preset)')
  results = {}
  for entry in FLAGS.presets:
    preset, batch, seq_len = parse_preset(entry, FLAGS.batch_size, FLAGS.seq_len)
    cmd = [sys.executable, '-m', 'nlhf_jax.cli.bench', f'--child={preset}', f'--batch_size={batch}',
           f'--seq_len={seq_len}', f'--iters={FLAGS.iters}', f'--compute_dtype={FLAGS.compute_dtype}']
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(report(r), flush=True)
    results[f'{preset}:{batch}x{seq_len}'] = figures(r)
  if FLAGS.json:
    print(json.dumps(results), flush=True)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
