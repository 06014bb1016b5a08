"""Measurement helpers shared by the benchmarks: timing, matmul peak, model FLOPs, peak memory.

Model FLOPs follow the usual accounting: a matmul of [m, k] x [k, n] costs 2 m k n; a training step costs
three forward passes (forward, and backward through activations and weights). MFU is model FLOPs per second
divided by the matmul peak measured in the same process (the machine may be shared and noisy).
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from nlhf_jax.config import ModelConfig, objectives
from nlhf_jax.config.schema import decode_spans


def block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, 'block_until_ready') else a, x)


def median_time(fn: Callable[[], object], iters: int, warmup: int = 1) -> float:
  """Median wall time in seconds of `fn()` (results blocked on) after `warmup` untimed calls."""
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_flops(m: int, k: int, n: int, dtype=jnp.float32, iters: int = 10) -> float:
  """Achieved FLOP/s of an [m, k] @ [k, n] matmul on the default device (float32 accumulation)."""
  a = jax.random.normal(jax.random.key(0), (m, k), dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(dtype))
  return 2 * m * k * n / median_time(lambda: f(a, b), iters, warmup=2)


def matmul_peak_flops(dtype=jnp.float32, n: int = 1024, iters: int = 10) -> float:
  """Achieved FLOP/s of an n x n x n matmul: the MFU denominator."""
  return matmul_flops(n, n, n, dtype, iters)


def forward_flops_per_token(cfg: ModelConfig, context: int, vocab_head: bool = True) -> float:
  """Matmul FLOPs of one token's forward pass attending over `context` keys (embedding lookup is free), with
  the vocabulary projection unless `vocab_head` is False (a scalar-head judge, a position whose logits are not
  needed)."""
  attn_proj = 2 * cfg.d_model * (cfg.num_heads + cfg.kv_heads) * cfg.head_dim  # q, o; k, v over kv heads
  mlp = 3 * cfg.d_model * cfg.mlp_dim
  scores = 2 * context * cfg.num_heads * cfg.head_dim  # q.k and probs.v
  head = cfg.d_model * cfg.vocab_size if vocab_head else 0
  return 2 * (cfg.num_layers * (attn_proj + mlp) + head) + cfg.num_layers * 2 * scores


def train_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
  """Model FLOPs of one training step on [batch, seq_len] tokens (full-length attention, as computed)."""
  return 3 * batch * seq_len * forward_flops_per_token(cfg, seq_len)


def _gradient_passes(cfg: ModelConfig) -> float:
  """Forward-pass equivalents of a policy's forward and backward pass: 3 (the backward takes two: input and weight
  gradients), 2 under LoRA (a frozen base takes no weight gradients; the adapters' are negligible), plus one
  forward recomputed under remat='full'."""
  return (2.0 if cfg.lora.rank else 3.0) + (1.0 if cfg.remat == 'full' else 0.0)


def sampling_flops(cfg: ModelConfig, rows: int, prompt: int, new: int, mixture: bool, segments: int = 1) -> float:
  """Matmul FLOPs of sampling a pair (y, y') for `rows` prompts as the sampler computes them: each decoding model
  (the policy and, for a `mixture` opponent, the reference) prefills a prompt once over its prompt's slots, with
  logits at the last position only (the first response token), then runs new - 1 one-token steps, the policy for
  2 rows a prompt and the reference for 1, in the loop's `segments` parts (config.schema.decode_spans), each part's
  steps over the slots written by its end."""
  fwd = forward_flops_per_token
  prefill = prompt * fwd(cfg, prompt, vocab_head=False) + fwd(cfg, 0) - fwd(cfg, 0, vocab_head=False)
  decode = sum(steps * fwd(cfg, span) for steps, span in decode_spans(new, segments, prompt))
  return rows * ((2 if mixture else 1) * prefill + (3 if mixture else 2) * decode)


def step_flops(cfg, judge_cfg: ModelConfig | None = None) -> float:
  """Model FLOPs (matmuls, as computed: full-length attention) of one training step of `cfg` (an
  ExperimentConfig), the analytic count that nlhf-compile sets beside the compiled one (docs/benchmark.md).
  Online objectives: sampling (`sampling_flops`), the reference's forward pass on the sequences the loss reads,
  the policy's forward and backward passes (`_gradient_passes`), and a model judge reading the prompt and each
  response (`judge_cfg`, by default the policy's shape; no judge FLOPs for an oracle)."""
  spec, m, d, b = objectives.get(cfg.train.objective), cfg.model, cfg.data, cfg.train.batch_size
  fwd, passes = forward_flops_per_token, _gradient_passes(m)
  if spec.kind == 'supervised':
    if spec.data == 'demonstrations':
      return passes * b * d.seq_len * fwd(m, d.seq_len)
    length = d.prompt_len + spec.responses * d.response_len
    sequences = 1 if spec.responses == 2 else 2
    return passes * b * sequences * length * fwd(m, length, vocab_head=False)
  if spec.offline:
    length = d.prompt_len + d.response_len
    reference = 0.0 if cfg.offline.reference_logprobs == 'cached' else 1.0
    return (passes + reference) * 2 * b * length * fwd(m, length)
  o = cfg.online
  k = max(getattr(o, 'samples_per_prompt', 1) or 1, 1)
  rows, new, prompt = b * k, o.sampling.max_new_tokens, d.prompt_len
  length = prompt + new
  sampled = sampling_flops(m, rows, prompt, new, mixture=spec.opponent == 'mixture',
                           segments=o.sampling.decode_segments)
  body = (length - 1) * fwd(m, length - 1, vocab_head=False)
  head = new * (fwd(m, 0) - fwd(m, 0, vocab_head=False))
  sequences = rows * (2 if spec.second_logprobs else 1) * (body + head)
  judge = 0.0
  if o.judge in ('preference_model', 'reward_model'):
    j = judge_cfg or m
    judge = rows * (prompt * fwd(j, prompt, False) + 2 * new * fwd(j, length, False))
  return sampled + sequences * (1 + passes) + judge


def peak_memory_bytes() -> tuple[float, str]:
  """(bytes, what) - the accelerator's peak bytes in use if it reports them, else the process's peak RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return float(stats['peak_bytes_in_use']), f'{jax.devices()[0].platform} peak bytes in use'
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return float(rss if sys.platform == 'darwin' else rss * 1024), 'process peak RSS'


def device_memory(devices) -> tuple[float, str] | None:
  """(bytes, description): the memory that one of `devices` (this process's) has for a program, or None when
  the backend does not say. An accelerator: its allocator's limit less what is in use (the smallest over the
  devices); CPU: the host's available memory divided among the CPU devices, which share it."""
  devices = list(devices)
  if devices[0].platform == 'cpu':
    import psutil
    available = psutil.virtual_memory().available
    return available / len(devices), (f'{fmt_bytes(available)} of available host memory shared by '
                                       f'{len(devices)} CPU device(s)')
  free = []
  for device in devices:
    stats = device.memory_stats() or {}
    if 'bytes_limit' in stats:
      free.append(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  if not free:
    return None
  return float(min(free)), f'{devices[0].device_kind}, free of its allocator\'s limit'


def fmt_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024:
      return f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} TiB'


def copy_bandwidth(nbytes: int = 1 << 30, iters: int = 10) -> float:
  """Achieved device memory bandwidth in bytes/s of an elementwise pass over `nbytes` of bfloat16 (each element
  read once and written once): the denominator of a decode loop's bandwidth bound."""
  x = jnp.ones((nbytes // 2,), jnp.bfloat16)
  f = jax.jit(lambda x: x + jnp.bfloat16(1))
  return 2 * x.size * 2 / median_time(lambda: f(x), iters, warmup=2)


def decode_bytes_per_step(cfg: ModelConfig, weight_bytes: float, batch: int, prompt: int, new: int,
                          cache_itemsize: int = 2, models: int = 2) -> float:
  """Bytes that one step of pair decoding must read, averaged over the `new` steps: the weights of the `models`
  decoding (policy and reference; `weight_bytes` each, the input embedding table left out unless tied, since a
  step reads only its rows) and their KV caches (the policy 2B rows, the reference B, of prompt + t positions)."""
  rows = 3 * batch if models == 2 else batch
  per_position = 2 * cfg.num_layers * cfg.kv_heads * cfg.head_dim * cache_itemsize * rows
  mean_context = prompt + (new - 1) / 2
  return models * weight_bytes + per_position * mean_context
