"""Transformer building blocks in Flax NNX. Every parameter carries `logical_axes` metadata, which the rule
table in nlhf_jax/distributed/sharding.py maps to mesh axes."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.distributed.sharding import GPU_PLATFORMS, context_platform, context_shards

_INIT = jax.nn.initializers.normal(stddev=0.02)


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], init=_INIT,
          dtype=jnp.float32) -> nnx.Param:
  """A parameter (float32 unless `dtype` says otherwise) with its logical axis names."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32).astype(dtype), logical_axes=tuple(axes))


def einsum(spec: str, x: jax.Array, w: jax.Array, out_dtype=None, split: str | None = None) -> jax.Array:
  """einsum(spec, x, w) with w cast to x's dtype, accumulated in float32, returned in `out_dtype` (x's dtype
  by default). Every matmul of the models goes through here: with bfloat16 operands an XLA dot whose output is
  also bfloat16 may be run on float32 copies of its operands (XLA:CPU does), while one that asks for a float32
  result runs on the bfloat16 operands themselves. In float32 it is the plain einsum. It stays a jnp.einsum
  call, so LoRA (nlhf_jax/models/lora.py) intercepts it.

  `split`: the logical axis the contraction runs over (the output projections: 'heads', 'mlp'). Where the mesh in
  context splits it over devices (tensor parallelism, e.g. the sampler's own layout), each device's partial sum
  leaves the matmul in x's dtype, so the all-reduce that adds them moves bfloat16, half the bytes of float32 (the
  convention of tensor-parallel inference); elsewhere the result is as above.

  For one position (a decoded token) on GPU, a bfloat16 matmul with a bfloat16 result asks for it directly:
  cuBLAS and XLA's Triton GEMMs accumulate in float32 and round once, as the float32 result and its cast do,
  without writing the float32 result to memory and reading it back (the production step's decode loop: 0.43 of
  23.2 GB a token). Not where a gradient may flow: a matmul's transpose takes its result type, and the gradient's
  partial sums over the batch's devices would then be added in bfloat16."""
  dt = x.dtype
  direct = (_one_position(spec, x) and jnp.dtype(out_dtype or dt) == dt == jnp.bfloat16
            and context_platform() in GPU_PLATFORMS)
  partial = dt if (split and context_shards(split) > 1) or direct else jnp.float32
  out = jnp.einsum(spec, x, w.astype(dt), preferred_element_type=partial)
  return out.astype(out_dtype or dt)


def _one_position(spec: str, x: jax.Array) -> bool:
  """Whether x holds one position: its 't' axis ('btd,...'), or the axis before the contracted last one
  ('...d,...'), has size 1."""
  labels = spec.split(',')[0]
  if 't' in labels and '.' not in labels:
    return x.shape[labels.index('t')] == 1
  return labels.startswith('...') and x.ndim >= 2 and x.shape[-2] == 1


def param_dtype(cfg: ModelConfig):
  """The dtype the model stores its parameters in (config.model.param_dtype)."""
  return jnp.bfloat16 if cfg.param_dtype == 'bfloat16' else jnp.float32


class RMSNorm(nnx.Module):
  """x / rms(x) * (offset + scale), computed in float32. offset 0 is the Llama convention (scale starts at 1);
  offset 1 is Gemma's, which stores scale - 1 (it starts at 0)."""

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, offset: float = 0.0, dtype=jnp.float32):
    init = jax.nn.initializers.zeros if offset else jax.nn.initializers.ones
    self.scale = param(rngs, (dim,), ('norm',), init, dtype)
    self.eps = eps
    self.offset = offset

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    scale = scale + self.offset if self.offset else scale
    return (normed * scale).astype(x.dtype)


_ACTIVATIONS = {'silu': jax.nn.silu, 'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True)}


class GatedMLP(nnx.Module):
  """down(act(x @ gate) * (x @ up)): SwiGLU with act = silu, GeGLU with act = tanh-approximate gelu."""

  def __init__(self, d_model: int, mlp_dim: int, rngs: nnx.Rngs, activation: str = 'silu', dtype=jnp.float32):
    self.gate = param(rngs, (d_model, mlp_dim), ('embed', 'mlp'), dtype=dtype)
    self.up = param(rngs, (d_model, mlp_dim), ('embed', 'mlp'), dtype=dtype)
    self.down = param(rngs, (mlp_dim, d_model), ('mlp', 'embed'), dtype=dtype)
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    proj = lambda v, w, split=None: einsum('...d,df->...f', v, w[...], split=split)
    x_gate, x_up = unmerged(x, 2)
    h = _ACTIVATIONS[self.activation](proj(x_gate, self.gate)) * proj(x_up, self.up)
    return proj(h, self.down, 'mlp')


def unmerged(x: jax.Array, n: int) -> tuple[jax.Array, ...]:
  """n uses of x for n matmuls with weights of their own. For one position (a decoded token) off TPU, x passes
  through an optimization barrier as n distinct values: XLA's dot merger would otherwise join the matmuls that
  share x into one, concatenating their weights into a new array at every token (on GPU a copy of the q, k, v and
  the gate and up weights per layer and token). Elsewhere (several positions, or TPU) x itself, n times."""
  if x.ndim < 2 or x.shape[-2] != 1 or context_platform() == 'tpu':
    return (x,) * n
  return tuple(jax.lax.optimization_barrier((x,) * n))


def softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap); the identity when cap is 0."""
  return cap * jnp.tanh(x / cap) if cap else x


def rope_frequencies(cfg: ModelConfig, local: bool) -> jax.Array:
  """float32 [head_dim / 2] rotation frequencies of a layer: base theta, then the configured scaling.

  Local layers with their own base (rope_local_theta > 0) are not scaled."""
  dim = cfg.head_dim
  own_base = local and cfg.rope_local_theta > 0
  theta = cfg.rope_local_theta if own_base else cfg.rope_theta
  freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  if own_base or cfg.rope_scaling == 'none':
    return freq
  if cfg.rope_scaling == 'linear':
    return freq / cfg.rope_factor
  # 'llama3': long wavelengths divided by the factor, short ones kept, a smooth blend in between.
  wavelength = 2 * math.pi / freq
  low_wavelength = cfg.rope_original_max_len / cfg.rope_low_freq_factor
  high_wavelength = cfg.rope_original_max_len / cfg.rope_high_freq_factor
  smooth = (cfg.rope_original_max_len / wavelength - cfg.rope_low_freq_factor) / (
      cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
  blended = (1 - smooth) * freq / cfg.rope_factor + smooth * freq
  scaled = jnp.where(wavelength > low_wavelength, freq / cfg.rope_factor, freq)
  medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
  return jnp.where(medium, blended, scaled)


def rope(x_bthd: jax.Array, positions_bt: jax.Array, freq: jax.Array) -> jax.Array:
  """Rotary position embedding (rotate-half form) with the [head_dim / 2] frequencies of rope_frequencies,
  computed in float32."""
  angle = positions_bt[..., None].astype(jnp.float32) * freq  # [B, T, D/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x_bthd.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthd.dtype)
