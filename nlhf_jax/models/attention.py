"""Causal grouped-query attention with padding masks, sliding windows and an optional KV cache.

Query heads come in `kv_heads` groups of num_heads / kv_heads heads that share one key/value head (query head h
reads kv head h // group, as in the Hugging Face layouts); with kv_heads = num_heads it is multi-head attention.

The cache is a plain dict {'k': [B, KV, S, D], 'v': [B, KV, S, D], 'pos': [B, S]} (head-major, kv heads only)
owned by the caller (the sampler keeps all layers' caches in one flat pytree), or, for a layer of a scanned stack,
the stack's arrays (layer axis first) with the running layer's index under 'layer'. It may hold a 'prefix' cache of the
same form with P rows (P dividing B) and Lp slots: the first Lp slots of each run of B / P consecutive rows (a
prompt's cache, kept once for the samples decoded from it), read once for the run; the cache's own slots then
stand for slots Lp on. The layer writes its new
keys/values at `cache_index` (into the stack in place, its own slots only) and attends over every slot of its cache
whose `key_mask` is set and whose position is not in the future. Masks are by position (the count of real tokens
before a token), so padding anywhere in the sequence changes nothing; a local (sliding-window) layer also skips
keys `sliding_window` or more positions back, in the cache as in a full forward pass.

A layer knows whether it is local and its RoPE frequencies from its index (`LayerKind.of`); a layer of a scanned
stack (config.model.scan_layers) has no index of its own and receives its LayerKind (a traced flag and frequency
array) with each call. With config.model.attention_impl='dot_product' the attention of more than one query
position (training, prefill) goes through `jax.nn.dot_product_attention` with the same mask, in its default
implementation, which JAX 0.10 makes XLA's on every platform (the probabilities materialised, as here; its cuDNN
flash attention needs cuDNN, and a GPU, to compile). With 'flash', the attention of several positions without a
cache (training, scoring) or written into one at a static index (a prefill, the preference model's responses after
their prompt) goes through the Pallas flash-attention kernel of models/flash.py, which never writes the
probabilities to memory; layers it cannot express (a logit softcap, a sliding window) keep the einsum form.
With 'flash', one decoded position over a layer's own cache (not a scanned stack's) goes through the decode kernel
of models/flash.py, which reads the prompt's prefix once for its rows and the rows' slots up to `span`, keeping
the softmax on chip, when its slot counts take a block (`flash.decodable`: 16 slots or more, head_dim a power of
two of at least 16). Otherwise one-token decoding is computed as products and sums (`_product_einsum`), which
read the cache in place (matmuls on TPU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from typing import NamedTuple

from nlhf_jax.config import ModelConfig
from nlhf_jax.distributed.sharding import constrain_activations, context_platform
from nlhf_jax.models import flash
from nlhf_jax.models.layers import RMSNorm, einsum, param, param_dtype, rope, rope_frequencies, softcap, unmerged

_NEG_INF = -1e30

_SLOT_AXIS = {'k': 2, 'v': 2, 'pos': 1}  # the slot axis of a layer's cache arrays


def _write(cache: dict, new: dict, index) -> dict:
  """The cache with `new` (k, v [B, KV, T, D] and pos [B, T]) written at slots index..index+T-1. A stacked cache
  (every layer's arrays, layer axis first, with the `layer` being run) is written in place at that layer."""
  layer = cache.get('layer')

  def one(name):
    buf = cache[name]
    update = new[name].astype(buf.dtype)
    if layer is None:
      return jax.lax.dynamic_update_slice_in_dim(buf, update, index, axis=_SLOT_AXIS[name])
    starts = [layer] + [0] * update.ndim
    starts[1 + _SLOT_AXIS[name]] = index
    return jax.lax.dynamic_update_slice(buf, update[None], starts)
  return {**cache, **{name: one(name) for name in _SLOT_AXIS}}


def _layer_view(cache: dict, name: str, span: int | None = None) -> jax.Array:
  """One layer's array `name` of the cache (of a stacked cache: the running layer's), its first `span` slots (all
  of them when None)."""
  layer, full = cache.get('layer'), cache[name]
  axis = _SLOT_AXIS[name] + (layer is not None)
  sizes = list(full.shape)
  sizes[axis] = full.shape[axis] if span is None else min(span, full.shape[axis])
  if layer is None:
    return full if sizes == list(full.shape) else jax.lax.slice_in_dim(full, 0, sizes[axis], axis=axis)
  sizes[0] = 1
  starts = [layer] + [0] * (full.ndim - 1)
  return jax.lax.dynamic_slice(full, starts, sizes)[0]


class LayerKind(NamedTuple):
  """What differs between layers: whether the layer is local (a Python bool, or a traced bool in a scanned
  stack) and its RoPE frequencies [head_dim / 2]."""
  local: bool | jax.Array
  freq: jax.Array

  @classmethod
  def of(cls, cfg: ModelConfig, layer: int) -> 'LayerKind':
    local = cfg.is_local(layer)
    return cls(local, rope_frequencies(cfg, local))

  @classmethod
  def stacked(cls, cfg: ModelConfig) -> 'LayerKind':
    """Every layer's kind, stacked on a leading layer axis (the scanned inputs of a stack)."""
    kinds = [cls.of(cfg, i) for i in range(cfg.num_layers)]
    return cls(jnp.asarray([k.local for k in kinds]), jnp.stack([k.freq for k in kinds]))


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, layer: int | None, rngs: nnx.Rngs):
    d, h, kv, hd, dt = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, param_dtype(cfg)
    self.q = param(rngs, (d, h, hd), ('embed', 'heads', 'head_dim'), dtype=dt)
    self.k = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'), dtype=dt)
    self.v = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'), dtype=dt)
    self.o = param(rngs, (h, hd, d), ('heads', 'head_dim', 'embed'), dtype=dt)
    zeros = jax.nn.initializers.zeros
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (h, hd), ('heads', 'head_dim'), zeros, dt)
      self.k_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), zeros, dt)
      self.v_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), zeros, dt)
    if cfg.out_bias:
      self.o_bias = param(rngs, (d,), ('embed',), zeros, dt)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, cfg.norm_eps, rngs, cfg.norm_offset, dt)
      self.k_norm = RMSNorm(hd, cfg.norm_eps, rngs, cfg.norm_offset, dt)
    self.cfg = cfg
    self.layer = layer  # None in a scanned stack: the kind comes with each call

  def _project(self, x_btd: jax.Array, name: str) -> jax.Array:
    dt = x_btd.dtype
    out = einsum('btd,dhk->bthk', x_btd, getattr(self, name)[...])
    if self.cfg.qkv_bias:
      out = out + getattr(self, f'{name}_bias')[...].astype(dt)
    if self.cfg.qk_norm and name != 'v':
      out = getattr(self, f'{name}_norm')(out)
    return out

  def __call__(self, x_btd, positions_bt, key_mask_bs, cache=None, cache_index=None, kind: LayerKind | None = None,
               span: int | None = None):
    """Returns (output [B, T, D], new cache or None).

    Without a cache, keys are the T inputs themselves and key_mask_bs is [B, T]. With a cache of S slots,
    the T new keys are written at slots cache_index..cache_index+T-1 and key_mask_bs is [B, S]; with a static
    `span`, the queries attend over the first `span` slots only (the caller's promise that no key they may attend
    to lies beyond: a cache filled from the front reads its filled part only).
    """
    cfg, dt = self.cfg, x_btd.dtype
    kind = LayerKind.of(cfg, self.layer) if kind is None else kind
    xq, xk, xv = unmerged(x_btd, 3)
    q = rope(self._project(xq, 'q'), positions_bt, kind.freq)
    k = rope(self._project(xk, 'k'), positions_bt, kind.freq)
    v = self._project(xv, 'v')
    prefix = None if cache is None else cache.get('prefix')
    if cache is None:
      key_positions, k_spec = positions_bt, 'bsnk'
    else:  # the cache is head-major [B, KV, S, D]: attention over it needs no transpose of the whole cache
      width = 0 if prefix is None else prefix['pos'].shape[-1]  # slots below it are the prefix's
      cache = _write(cache, {'k': jnp.swapaxes(k, 1, 2), 'v': jnp.swapaxes(v, 1, 2), 'pos': positions_bt},
                     cache_index - width)
      k, v, key_positions = (_layer_view(cache, name, None if span is None else span - width)
                             for name in ('k', 'v', 'pos'))
      if prefix is not None:  # one copy per prompt, read once for its rows
        prefix = {**prefix, 'layer': cache.get('layer')}
        prefix = tuple(_layer_view(prefix, name) for name in ('k', 'v', 'pos'))
        rows = k.shape[0] // prefix[0].shape[0]
        key_positions = jnp.concatenate([jnp.repeat(prefix[2], rows, axis=0), key_positions], axis=1)
      key_mask_bs = key_mask_bs[:, :key_positions.shape[1]]
      k_spec = 'bnsk'
    allowed = (key_positions[:, None, :] <= positions_bt[:, :, None]) & key_mask_bs[:, None, :]  # [B, T, S]
    windowed = cfg.sliding_window and kind.local is not False
    if windowed:
      in_window = key_positions[:, None, :] > positions_bt[:, :, None] - cfg.sliding_window
      allowed &= in_window if kind.local is True else (in_window | ~kind.local)
    scale = (cfg.query_pre_attn_scalar or q.shape[-1]) ** -0.5
    kernel = cfg.attention_impl == 'flash' and not cfg.attn_logit_softcap and not windowed
    if kernel and q.shape[1] == 1 and cache is not None and cache.get('layer') is None \
        and flash.decodable(q.shape[-1], k.shape[2], 0 if prefix is None else prefix[0].shape[2]):
      # the layer's whole buffers, read in place up to the view's slots
      out = flash.decode(q[:, 0], _layer_view(cache, 'k'), _layer_view(cache, 'v'), allowed[:, 0], scale, k.shape[2],
                         None if prefix is None else prefix[:2])[:, None]
    elif kernel and q.shape[1] > 1 and prefix is None and (cache is None or isinstance(cache_index, int)):
      if cache is not None:  # the cache's head-major keys, the new ones at a static cache_index
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
      out = flash.attention(q, k, v, key_mask_bs, scale, 0 if cache is None else cache_index)
    elif cfg.attention_impl == 'dot_product' and q.shape[1] > 1 and not cfg.attn_logit_softcap and prefix is None:
      out = _fused(q, k, v, allowed, cache is not None, scale)
    else:
      out = self._einsum_attention(q, k, v, allowed, k_spec, cache is not None and q.shape[1] == 1,
                                   None if prefix is None else prefix[:2])
    out = einsum('bthk,hkd->btd', out, self.o[...], split='heads')
    if cfg.out_bias:
      out = out + self.o_bias[...].astype(dt)
    return out, cache

  def _einsum_attention(self, q, k, v, allowed, k_spec: str, decoding: bool = False, prefix=None):
    """softmax(q k^T * scale [soft-capped], masked) v in float32 logits; q [B, T, H, D], k/v as k_spec. Computed
    in the wider of q's and k's dtypes (a float32 KV cache is read as it is, not cast to the compute dtype) and
    returned in q's dtype. `decoding` (one new token over the cache): as products and sums (`_product_einsum`),
    except on TPU, whose compiler reads a layer's cache out of the stack inside the matmul itself (there the
    products read 1.4x the bytes of the matmuls: 8b step on a v5p-8 slice). `prefix` (keys, values [P, KV, Lp,
    D], P = B / rows): slots before k's, one copy for each run of `rows` consecutive rows, whose queries read it
    together; the logits of both parts make one softmax (`allowed` covers the prefix's slots first)."""
    cfg, dt = self.cfg, q.dtype
    q = q.astype(jnp.promote_types(dt, k.dtype))
    if decoding:  # split like the cache (kv heads over 'tensor'), so that the products need no move of the cache
      q = constrain_activations(q, ('batch', None, 'heads', None))
    b, t, h, hd = q.shape
    group = h // cfg.kv_heads
    if group > 1:  # queries [B, T, KV, G, D] against keys [B, S, KV, D] (the cache: [B, KV, S, D])
      q, q_spec, logit_spec = q.reshape(b, t, cfg.kv_heads, group, hd), 'btngk', 'bngts'
    else:  # one query head per kv head: plain multi-head attention
      q_spec, k_spec, logit_spec = 'bthk', k_spec.replace('n', 'h'), 'bhts'
    scale = (cfg.query_pre_attn_scalar or hd) ** -0.5
    contract = _product_einsum if decoding and context_platform() != 'tpu' else einsum
    logits = contract(f'{q_spec},{k_spec}->{logit_spec}', q, k, jnp.float32)
    if prefix is not None:  # runs r of prompt b: [B / rows, rows, ...] against the prompt's one copy
      runs = lambda x: x.reshape((prefix[0].shape[0], -1) + x.shape[1:])
      grouped = lambda spec: spec.replace('b', 'br')
      pre = contract(f'{grouped(q_spec)},{k_spec}->{grouped(logit_spec)}', runs(q), prefix[0], jnp.float32)
      logits = jnp.concatenate([pre.reshape((b,) + pre.shape[2:]), logits], axis=-1)
    logits = softcap(logits * scale, cfg.attn_logit_softcap)
    allowed = allowed.reshape((b,) + (1,) * (logits.ndim - 3) + allowed.shape[1:])
    logits = jnp.where(allowed, logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    if prefix is None:
      return contract(f'{logit_spec},{k_spec}->{q_spec}', probs, v, dt).reshape(b, t, h, hd)
    width = prefix[1].shape[k_spec.index('s')]
    out = contract(f'{grouped(logit_spec)},{k_spec}->{grouped(q_spec)}', runs(probs[..., :width]), prefix[1],
                   jnp.float32)
    out = out.reshape((b,) + out.shape[2:]) + contract(f'{logit_spec},{k_spec}->{q_spec}', probs[..., width:], v,
                                                       jnp.float32)
    return out.astype(dt).reshape(b, t, h, hd)


def _product_einsum(spec: str, x: jax.Array, y: jax.Array, out_dtype) -> jax.Array:
  """einsum(spec, x, y) as a float32 broadcast product summed over the contracted labels, in `out_dtype`: the
  attention of one decoded token over its cache. As a matmul, XLA's GPU compiler hands cuBLAS a contiguous copy of
  the running layer's cache, sliced out of a scanned stack's (the whole KV cache copied at every token); as a
  product and a sum it reads the cache where it is, within one fusion. Products of bfloat16 values are exact in
  float32, so this equals the bfloat16 matmul with a float32 result up to the order of the sum. The product's
  axes follow y's (the cache's) order, so the cache is read in its own layout, never transposed."""
  (a, b), out = spec.split('->')[0].split(','), spec.split('->')[1]
  labels = b + ''.join(c for c in a if c not in b)

  def expand(arr, lab):
    present = [c for c in labels if c in lab]
    arr = jnp.transpose(arr.astype(jnp.float32), [lab.index(c) for c in present])
    return arr.reshape([arr.shape[present.index(c)] if c in lab else 1 for c in labels])
  summed = jnp.sum(expand(x, a) * expand(y, b), axis=tuple(i for i, c in enumerate(labels) if c not in out))
  kept = [c for c in labels if c in out]
  return jnp.transpose(summed, [kept.index(c) for c in out]).astype(out_dtype)


def _fused(q, k, v, allowed, head_major: bool, scale: float) -> jax.Array:
  """jax.nn.dot_product_attention with the boolean mask `allowed` [B, T, S]; keys in the cache's head-major
  layout are brought to [B, S, KV, D] first. Returns [B, T, H, D]."""
  if head_major:
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  dt = q.dtype
  return jax.nn.dot_product_attention(q, k.astype(dt), v.astype(dt), mask=allowed[:, None], scale=scale)
