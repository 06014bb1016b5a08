"""Causal multi-head attention with padding masks and an optional KV cache.

The cache is a plain dict {'k': [B, H, S, D], 'v': [B, H, S, D]} (head-major) owned by the caller (the sampler keeps all
layers' caches in one flat pytree); the layer writes the new keys/values at `cache_index` and attends over
every cache slot whose `key_mask` is set and whose position is not in the future.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.models.layers import param, rope

_NEG_INF = -1e30


class Attention(nnx.Module):
  def __init__(self, d_model: int, num_heads: int, head_dim: int, rope_theta: float, rngs: nnx.Rngs):
    self.q = param(rngs, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.k = param(rngs, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.v = param(rngs, (d_model, num_heads, head_dim), ('embed', 'heads', 'head_dim'))
    self.o = param(rngs, (num_heads, head_dim, d_model), ('heads', 'head_dim', 'embed'))
    self.rope_theta = rope_theta

  def __call__(self, x_btd, positions_bt, key_mask_bs, cache=None, cache_index=None):
    """Returns (output [B, T, D], new cache or None).

    Without a cache, keys are the T inputs themselves and key_mask_bs is [B, T]. With a cache of S slots,
    the T new keys are written at slots cache_index..cache_index+T-1 and key_mask_bs is [B, S].
    """
    dt = x_btd.dtype
    q = rope(jnp.einsum('btd,dhk->bthk', x_btd, self.q[...].astype(dt)), positions_bt, self.rope_theta)
    k = rope(jnp.einsum('btd,dhk->bthk', x_btd, self.k[...].astype(dt)), positions_bt, self.rope_theta)
    v = jnp.einsum('btd,dhk->bthk', x_btd, self.v[...].astype(dt))
    if cache is None:
      key_positions, k_spec = positions_bt, 'bshk'
    else:  # the cache is head-major [B, H, S, D]: attention over it needs no transpose of the whole cache
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(
          buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), cache_index, axis=2)
      k, v = write(cache['k'], k), write(cache['v'], v)
      cache = {'k': k, 'v': v, 'pos': jax.lax.dynamic_update_slice_in_dim(
          cache['pos'], positions_bt.astype(cache['pos'].dtype), cache_index, axis=1)}
      key_positions, k_spec = cache['pos'], 'bhsk'
    logits = jnp.einsum(f'bthk,{k_spec}->bhts', q, k.astype(dt)).astype(jnp.float32) * q.shape[-1] ** -0.5
    allowed = (key_positions[:, None, :] <= positions_bt[:, :, None]) & key_mask_bs[:, None, :]
    logits = jnp.where(allowed[:, None, :, :], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum(f'bhts,{k_spec}->bthk', probs, v.astype(dt))
    return jnp.einsum('bthk,hkd->btd', out, self.o[...].astype(dt)), cache
