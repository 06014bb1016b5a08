"""Sampling throughput on the reference configuration (prints, never asserts).

  python -m nlhf_jax.cli.sampling_bench [--preset small] [--batch 8] [--new 64] [--iters 5]
      [--compute_dtypes float32,bfloat16] [--json]

Prompts of 32-64 tokens (left-padded to 64), float32 parameters. Each compute dtype of --compute_dtypes (default
float32 alone) is timed in this process; bfloat16 compute keeps float32 accumulation and log-probabilities, and
the KV caches are the sampler's default (float32 on CPU: SamplingConfig.kv_cache_dtype). EOS is disabled (no stop
ids) so that every row samples the full max_new_tokens and the token counts are exact. Reported: policy-only
sampling, and the (y ~ policy, y' ~ mixture) pair in one loop, each with compile time and sampled tokens/s; the
pair's matmul FLOPs and achieved rate, against the rate of a decode-shaped matmul ([3B, d_model] @
[d_model, mlp_dim]: the pair decodes 2B policy rows and B reference rows a step) and of a square one; then the
peak memory.

--json adds, as the last line, one JSON object of every figure (numbers; seconds as *_s, rates as *_per_s, FLOP/s
as *_flops, bytes as *_bytes): policy_s, policy_tokens_per_s, policy_first_call_s, policy_compile_s, the same
four for pair_*, pair_flop_count (matmul FLOPs of one pair call), pair_flops (its achieved rate),
decode_matmul_flops, peak_flops (the square float32 matmul), pair_fraction_of_peak = pair_flops / peak_flops and
peak_bytes. A second compute dtype adds the same keys suffixed with it (pair_s_bfloat16, pair_flops_bfloat16,
decode_matmul_flops_bfloat16, peak_flops_bfloat16: its own square matmul, pair_fraction_of_peak_bfloat16, ...).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models import Transformer, preset
from nlhf_jax.perf import (block, fmt_bytes, matmul_flops, matmul_peak_flops, median_time, peak_memory_bytes,
                           sampling_flops)
from nlhf_jax.sampling import SamplingConfig, jit_sample, jit_sample_pair


def make_batch(batch: int, max_prompt: int, min_prompt: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_prompt, max_prompt + 1, size=batch)
  mask = np.arange(max_prompt)[None, :] >= (max_prompt - lengths)[:, None]
  tokens = np.where(mask, rng.integers(4, vocab, size=(batch, max_prompt)), 0).astype(np.int32)
  return {'prompt': jnp.asarray(tokens), 'prompt_mask': jnp.asarray(mask),
          'example_index': jnp.arange(batch, dtype=jnp.int32)}


def timed(name: str, fn, args: tuple, tokens: int, iters: int) -> dict:
  """Times fn(*args): prints one line; returns its figures keyed s, tokens_per_s, first_call_s, compile_s."""
  t0 = time.perf_counter()
  block(fn(*args))
  first = time.perf_counter() - t0
  seconds = median_time(lambda: fn(*args), iters, warmup=0)
  compile_s = max(first - seconds, 0)
  print(f'{name:<34} {seconds * 1e3:8.1f} ms   {tokens / seconds:9.0f} sampled tokens/s   '
        f'(first call incl. compile {first:.2f} s, compile ~{compile_s:.2f} s)')
  return {'s': seconds, 'tokens_per_s': tokens / seconds, 'first_call_s': first, 'compile_s': compile_s}


def _prefixed(prefix: str, figures: dict) -> dict:
  return {f'{prefix}_{k}': v for k, v in figures.items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='small')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--new', type=int, default=64)
  parser.add_argument('--prompt', type=int, default=64)
  parser.add_argument('--min_prompt', type=int, default=32)
  parser.add_argument('--beta', type=float, default=0.125)
  parser.add_argument('--iters', type=int, default=5)
  parser.add_argument('--compute_dtypes', default='float32',
                      help='Comma-separated compute dtypes (float32, bfloat16), each timed in this process.')
  parser.add_argument('--json', action='store_true', help='Print every figure as one JSON object, last line.')
  args = parser.parse_args(argv)
  for dtype in args.compute_dtypes.split(','):
    if dtype not in ('float32', 'bfloat16'):
      parser.error(f'--compute_dtypes: {dtype!r} is not a compute dtype; use float32 and/or bfloat16')
  return args


def bench_dtype(args: argparse.Namespace, compute_dtype: str) -> dict:
  """Times policy-only and pair sampling with `compute_dtype` compute; returns the figures --json prints."""
  cfg = ModelConfig(**{**preset(args.preset), 'compute_dtype': compute_dtype})
  graphdef, policy = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  _, ref = nnx.split(Transformer(cfg, nnx.Rngs(1)))
  batch = make_batch(args.batch, args.prompt, args.min_prompt, cfg.vocab_size)
  scfg = SamplingConfig(max_new_tokens=args.new, temperature=1.0, stop_ids=())
  key = jax.random.key(0)
  print(f'{jax.devices()[0].platform} x{jax.device_count()}, preset {args.preset}: vocab {cfg.vocab_size}, '
        f'd_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads; batch {args.batch}, prompts '
        f'{args.min_prompt}-{args.prompt}, {args.new} new tokens, beta {args.beta}, {compute_dtype} compute')

  single = jit_sample(graphdef, scfg)
  figures = _prefixed('policy', timed('policy only (B x T)', single, (policy, batch, key), args.batch * args.new,
                                      args.iters))
  pair = jit_sample_pair(graphdef, graphdef, scfg, args.beta)
  figures.update(_prefixed('pair', timed('policy + mixture pair (2 x B x T)', pair, (policy, ref, batch, key),
                                         2 * args.batch * args.new, args.iters)))
  flops = sampling_flops(cfg, args.batch, args.prompt, args.new, mixture=True,  # as nlhf-compile counts it
                         segments=scfg.decode_segments)
  dtype = jnp.dtype(compute_dtype)
  skinny = matmul_flops(3 * args.batch, cfg.d_model, cfg.mlp_dim, dtype, iters=50)  # one decode step's MLP shape
  square = matmul_peak_flops(dtype)
  seconds = figures['pair_s']
  print(f'pair: {flops / 1e9:.2f} GFLOP, {flops / seconds / 1e9:.1f} GFLOP/s achieved = '
        f'{flops / seconds / square:.1%} of the square matmul; {compute_dtype} matmul rates measured now: '
        f'[{3 * args.batch}x{cfg.d_model}]@[{cfg.d_model}x{cfg.mlp_dim}] {skinny / 1e9:.1f} GFLOP/s, '
        f'1024^3 {square / 1e9:.1f} GFLOP/s')
  figures.update(pair_flop_count=flops, pair_flops=flops / seconds, decode_matmul_flops=skinny, peak_flops=square,
                 pair_fraction_of_peak=flops / seconds / square)
  return figures


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs the bench on `argv` (default: the command line); returns the figures that --json prints."""
  args = parse_args(argv)
  first, *others = args.compute_dtypes.split(',')
  figures = bench_dtype(args, first)
  for compute_dtype in others:
    part = bench_dtype(args, compute_dtype)
    figures.update({f'{k}_{compute_dtype}': v for k, v in part.items()})
    print(f'  {compute_dtype} pair / {first} pair: {part["pair_s"] / figures["pair_s"]:.2f} (same run)')
  peak, what = peak_memory_bytes()
  print(f'peak memory: {fmt_bytes(peak)} ({what})')
  figures['peak_bytes'] = peak
  if args.json:
    print(json.dumps(figures), flush=True)
  return figures


if __name__ == '__main__':
  main()
