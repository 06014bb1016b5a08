"""The accelerator benchmark, one command (`make bench-gpu`; under 8 minutes on one GPU; prints, never asserts):

  python -m nlhf_jax.cli.accelerator_bench [--preset=1b] [--step_batch=8] [--batch=64] [--new=128] [--json]

1. The Nash-MD-PG step of the preset (policy, reference and a reward model of its size; bfloat16 compute, float32
   parameters and AdamW state), as training compiles it (trainer.loop.jit_step, via nlhf_jax/cli/online_bench.py):
   median step time and MFU against a bfloat16 [n, n] @ [n, n] matmul (--peak_n, 8192) measured in this run.
2. Pair sampling (y ~ policy, y' ~ the token-level mixture with the reference, one decode loop; bfloat16
   parameters and caches) at --batch prompts: sampled tokens/s against the memory-bandwidth bound, i.e. the bytes
   a decode step must read (both models' weights, their KV caches at the mean context) over the device copy
   bandwidth measured in this run (perf.copy_bandwidth). The measured time includes the prefill, so the fraction
   is a lower bound.
3. Peak device memory (the accelerator's peak bytes in use; the process's peak RSS on CPU).

It refuses to run without an accelerator (a CPU figure is not this benchmark's); --allow_cpu runs it anyway, for
testing it on small shapes (--preset=tiny). --json prints every figure as one JSON object on the last line:
step_s, mfu, peak_flops, pair_s, sampled_tokens_per_s, bandwidth_bytes_per_s, decode_bytes_per_step,
bound_tokens_per_s, fraction_of_bound, peak_bytes, device.
"""
from __future__ import annotations

import json

from absl import app, flags


def _define_flags() -> None:
  flags.DEFINE_string('preset', '1b', 'Model preset of policy, reference and reward model.')
  flags.DEFINE_integer('step_batch', 8, 'Prompts per Nash-MD-PG step.')
  flags.DEFINE_integer('step_new', 64, 'New tokens per response in the step.')
  flags.DEFINE_integer('iters', 3, 'Timed calls of each (median reported).')
  flags.DEFINE_integer('batch', 64, 'Prompts per sampling call.')
  flags.DEFINE_integer('new', 128, 'New tokens per sampled response.')
  flags.DEFINE_integer('prompt', 128, 'Prompt length of the sampling bench (prompts of prompt/2 to prompt tokens).')
  flags.DEFINE_integer('peak_n', 8192, 'Size of the square bfloat16 matmul whose rate is the MFU denominator.')
  flags.DEFINE_integer('copy_mib', 1024, 'MiB that the bandwidth measurement reads and writes.')
  flags.DEFINE_bool('allow_cpu', False, 'Run without an accelerator (to test the command on small shapes).')
  flags.DEFINE_bool('json', False, 'Print every figure as one JSON object on the last line.')


FLAGS = flags.FLAGS


def sampling_figures(preset: str, batch: int, prompt: int, new: int, iters: int, copy_bytes: int) -> dict:
  """Pair sampling in bfloat16 at `batch` prompts, against the memory-bandwidth bound measured now."""
  import jax
  from flax import nnx

  from nlhf_jax import perf
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.models import Transformer, preset as model_preset
  from nlhf_jax.cli.sampling_bench import make_batch
  from nlhf_jax.sampling.sampler import SamplingConfig, jit_sample_pair
  cfg = ModelConfig(**model_preset(preset, compute_dtype='bfloat16', param_dtype='bfloat16',
                                   max_len=max(model_preset(preset)['max_len'], prompt + new)))
  make = jax.jit(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  policy, reference = make(), jax.jit(lambda: nnx.split(Transformer(cfg, nnx.Rngs(1)))[1])()
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(policy))
  if not cfg.tie_embeddings:  # a step reads B rows of the input embedding table, not all of it
    embed = nnx.to_pure_dict(policy)['embed']
    weights -= sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(embed))
  data = make_batch(batch, prompt, max(prompt // 2, 1), cfg.vocab_size)
  pair = jit_sample_pair(graphdef, graphdef, SamplingConfig(max_new_tokens=new, temperature=1.0, stop_ids=()),
                         0.125)
  key = jax.random.key(0)
  perf.block(pair(policy, reference, data, key))  # compile
  seconds = perf.median_time(lambda: pair(policy, reference, data, key), iters, warmup=0)
  bandwidth = perf.copy_bandwidth(copy_bytes)
  per_step = perf.decode_bytes_per_step(cfg, weights, batch, prompt, new, cache_itemsize=2)
  bound = 2 * batch * bandwidth / per_step  # y and y' tokens a decode step, if reading were all it did
  tokens_per_s = 2 * batch * new / seconds
  return dict(pair_s=seconds, sampled_tokens_per_s=tokens_per_s, bandwidth_bytes_per_s=bandwidth,
              decode_bytes_per_step=per_step, weight_bytes=weights, bound_tokens_per_s=bound,
              fraction_of_bound=tokens_per_s / bound)


def main(argv) -> None:
  del argv
  import jax

  from nlhf_jax import perf
  from nlhf_jax.cli import online_bench
  device = jax.devices()[0]
  if device.platform == 'cpu' and not FLAGS.allow_cpu:
    raise SystemExit('accelerator_bench: JAX sees no accelerator (platform cpu); run it on a GPU or TPU host with '
                     "the matching jax build (e.g. pip install 'jax[cuda12]' at the version of requirements.lock), "
                     'or pass --allow_cpu to test the command on small shapes')
  name = f'{device.platform} {getattr(device, "device_kind", "")}'.strip()
  print(f'accelerator bench on {jax.device_count()} x {name}, preset {FLAGS.preset}', flush=True)
  step = online_bench.measure(FLAGS.preset, FLAGS.step_batch, FLAGS.step_new, FLAGS.iters, 'bfloat16',
                              peak_n=FLAGS.peak_n)
  print(f"1. Nash-MD-PG step (batch {FLAGS.step_batch}, {FLAGS.step_new} new tokens, bfloat16 compute): "
        f"{step['step_s'] * 1e3:.1f} ms, {step['flops'] / 1e12:.2f} TFLOP, MFU {100 * step['mfu']:.1f}% of "
        f"{step['peak'] / 1e12:.1f} TFLOP/s (bfloat16 {FLAGS.peak_n}^3 matmul, measured now)", flush=True)
  s = sampling_figures(FLAGS.preset, FLAGS.batch, FLAGS.prompt, FLAGS.new, FLAGS.iters, FLAGS.copy_mib << 20)
  print(f"2. pair sampling (batch {FLAGS.batch}, prompts {FLAGS.prompt // 2}-{FLAGS.prompt}, {FLAGS.new} new "
        f"tokens, bfloat16): {s['pair_s'] * 1e3:.0f} ms, {s['sampled_tokens_per_s']:.0f} sampled tok/s = "
        f"{100 * s['fraction_of_bound']:.1f}% of the bandwidth bound {s['bound_tokens_per_s']:.0f} tok/s "
        f"({perf.fmt_bytes(s['decode_bytes_per_step'])} read a decode step at "
        f"{s['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s copy bandwidth, measured now)", flush=True)
  peak, what = perf.peak_memory_bytes()
  print(f'3. peak memory: {perf.fmt_bytes(peak)} ({what})', flush=True)
  if FLAGS.json:
    out = dict(step_s=step['step_s'], mfu=step['mfu'], peak_flops=step['peak'], step_flops=step['flops'], **s,
               peak_bytes=peak, device=name, preset=FLAGS.preset)
    print(json.dumps(out), flush=True)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
