"""Causal multi-head attention with padding masks and an optional KV cache.

The cache is a plain dict {'k': [B, S, H, D], 'v': [B, S, H, D]} owned by the caller (the sampler keeps all
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
      key_positions = positions_bt
    else:
      k = jax.lax.dynamic_update_slice_in_dim(cache['k'], k.astype(cache['k'].dtype), cache_index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache['v'], v.astype(cache['v'].dtype), cache_index, axis=1)
      cache = {'k': k, 'v': v, 'pos': jax.lax.dynamic_update_slice_in_dim(
          cache['pos'], positions_bt.astype(cache['pos'].dtype), cache_index, axis=1)}
      key_positions = cache['pos']
    logits = jnp.einsum('bthk,bshk->bhts', q, k.astype(dt)).astype(jnp.float32) * q.shape[-1] ** -0.5
    allowed = (key_positions[:, None, :] <= positions_bt[:, :, None]) & key_mask_bs[:, None, :]
    logits = jnp.where(allowed[:, None, :, :], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum('bhts,bshk->bthk', probs, v.astype(dt))
    return jnp.einsum('bthk,hkd->btd', out, self.o[...].astype(dt)), cache
