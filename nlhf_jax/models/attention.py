"""Causal grouped-query attention with padding masks, sliding windows and an optional KV cache.

Query heads come in `kv_heads` groups of num_heads / kv_heads heads that share one key/value head (query head h
reads kv head h // group, as in the Hugging Face layouts); with kv_heads = num_heads it is multi-head attention.

The cache is a plain dict {'k': [B, KV, S, D], 'v': [B, KV, S, D], 'pos': [B, S]} (head-major, kv heads only)
owned by the caller (the sampler keeps all layers' caches in one flat pytree); the layer writes the new
keys/values at `cache_index` and attends over every cache slot whose `key_mask` is set and whose position is not
in the future. Masks are by position (the count of real tokens before a token), so padding anywhere in the
sequence changes nothing; a local (sliding-window) layer also skips keys `sliding_window` or more positions back,
in the cache as in a full forward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models.layers import RMSNorm, param, rope, rope_frequencies, softcap

_NEG_INF = -1e30


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
    d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    self.q = param(rngs, (d, h, hd), ('embed', 'heads', 'head_dim'))
    self.k = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'))
    self.v = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'))
    self.o = param(rngs, (h, hd, d), ('heads', 'head_dim', 'embed'))
    zeros = jax.nn.initializers.zeros
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (h, hd), ('heads', 'head_dim'), zeros)
      self.k_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), zeros)
      self.v_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), zeros)
    if cfg.out_bias:
      self.o_bias = param(rngs, (d,), ('embed',), zeros)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, cfg.norm_eps, rngs, cfg.norm_offset)
      self.k_norm = RMSNorm(hd, cfg.norm_eps, rngs, cfg.norm_offset)
    self.cfg = cfg
    self.local = cfg.is_local(layer)

  def _project(self, x_btd: jax.Array, name: str) -> jax.Array:
    dt = x_btd.dtype
    out = jnp.einsum('btd,dhk->bthk', x_btd, getattr(self, name)[...].astype(dt))
    if self.cfg.qkv_bias:
      out = out + getattr(self, f'{name}_bias')[...].astype(dt)
    if self.cfg.qk_norm and name != 'v':
      out = getattr(self, f'{name}_norm')(out)
    return out

  def __call__(self, x_btd, positions_bt, key_mask_bs, cache=None, cache_index=None):
    """Returns (output [B, T, D], new cache or None).

    Without a cache, keys are the T inputs themselves and key_mask_bs is [B, T]. With a cache of S slots,
    the T new keys are written at slots cache_index..cache_index+T-1 and key_mask_bs is [B, S].
    """
    cfg, dt = self.cfg, x_btd.dtype
    freq = rope_frequencies(cfg, self.local)
    q = rope(self._project(x_btd, 'q'), positions_bt, freq)
    k = rope(self._project(x_btd, 'k'), positions_bt, freq)
    v = self._project(x_btd, 'v')
    if cache is None:
      key_positions, k_spec = positions_bt, 'bsnk'
    else:  # the cache is head-major [B, KV, S, D]: attention over it needs no transpose of the whole cache
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(
          buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), cache_index, axis=2)
      k, v = write(cache['k'], k), write(cache['v'], v)
      cache = {'k': k, 'v': v, 'pos': jax.lax.dynamic_update_slice_in_dim(
          cache['pos'], positions_bt.astype(cache['pos'].dtype), cache_index, axis=1)}
      key_positions, k_spec = cache['pos'], 'bnsk'
    b, t, h, hd = q.shape
    group = h // cfg.kv_heads
    if group > 1:  # queries [B, T, KV, G, D] against keys [B, S, KV, D] (the cache: [B, KV, S, D])
      q, q_spec, logit_spec = q.reshape(b, t, cfg.kv_heads, group, hd), 'btngk', 'bngts'
    else:  # one query head per kv head: plain multi-head attention
      q_spec, k_spec, logit_spec = 'bthk', k_spec.replace('n', 'h'), 'bhts'
    scale = (cfg.query_pre_attn_scalar or hd) ** -0.5
    logits = jnp.einsum(f'{q_spec},{k_spec}->{logit_spec}', q, k.astype(dt)).astype(jnp.float32) * scale
    logits = softcap(logits, cfg.attn_logit_softcap)
    allowed = (key_positions[:, None, :] <= positions_bt[:, :, None]) & key_mask_bs[:, None, :]
    if self.local:
      allowed &= key_positions[:, None, :] > positions_bt[:, :, None] - cfg.sliding_window
    allowed = allowed.reshape((b,) + (1,) * (logits.ndim - 3) + allowed.shape[1:])
    logits = jnp.where(allowed, logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum(f'{logit_spec},{k_spec}->{q_spec}', probs, v.astype(dt)).reshape(b, t, h, hd)
    out = jnp.einsum('bthk,hkd->btd', out, self.o[...].astype(dt))
    if cfg.out_bias:
      out = out + self.o_bias[...].astype(dt)
    return out, cache
