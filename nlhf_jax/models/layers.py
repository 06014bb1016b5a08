"""Transformer building blocks in Flax NNX. Every parameter carries `logical_axes` metadata, which the rule
table in nlhf_jax/distributed/sharding.py maps to mesh axes."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = jax.nn.initializers.normal(stddev=0.02)


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], init=_INIT) -> nnx.Param:
  """A float32 parameter with its logical axis names."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), logical_axes=tuple(axes))


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs):
    self.scale = param(rngs, (dim,), ('norm',), jax.nn.initializers.ones)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...]).astype(x.dtype)


class SwiGLU(nnx.Module):
  def __init__(self, d_model: int, mlp_dim: int, rngs: nnx.Rngs):
    self.gate = param(rngs, (d_model, mlp_dim), ('embed', 'mlp'))
    self.up = param(rngs, (d_model, mlp_dim), ('embed', 'mlp'))
    self.down = param(rngs, (mlp_dim, d_model), ('mlp', 'embed'))

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = x.dtype
    h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))
    return h @ self.down[...].astype(dt)


def rope(x_bthd: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (rotate-half form), computed in float32."""
  head_dim = x_bthd.shape[-1]
  freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angle = positions_bt[..., None].astype(jnp.float32) * freq  # [B, T, D/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x_bthd.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthd.dtype)
