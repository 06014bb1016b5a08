"""Decoder-only Transformer language model in Flax NNX: the native Llama-style model and, through ModelConfig
fields, the conventions of the pretrained families (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3; docs/models.md)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models.attention import Attention
from nlhf_jax.models.layers import GatedMLP, RMSNorm, param, softcap

_UNWRITTEN = 2**30  # cache position of a slot that holds no key yet: never attended to


class Block(nnx.Module):
  """Pre-norm residual block; with cfg.post_norms also a norm on each branch's output (Gemma's sandwich)."""

  def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.d_model, cfg.norm_eps, rngs, cfg.norm_offset)
    self.attn_norm = norm()
    self.attn = Attention(cfg, layer, rngs)
    self.mlp_norm = norm()
    self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, rngs, cfg.mlp_activation)
    if cfg.post_norms:
      self.attn_post_norm = norm()
      self.mlp_post_norm = norm()
    self.post_norms = cfg.post_norms

  def __call__(self, x, positions, key_mask, cache=None, cache_index=None):
    h, cache = self.attn(self.attn_norm(x), positions, key_mask, cache, cache_index)
    x = x + (self.attn_post_norm(h) if self.post_norms else h)
    h = self.mlp(self.mlp_norm(x))
    return x + (self.mlp_post_norm(h) if self.post_norms else h), cache


class Transformer(nnx.Module):
  """tokens [B, T] -> float32 logits [B, T, V] (and hidden states for heads that need them)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'))
    for i in range(cfg.num_layers):
      setattr(self, f'layer_{i}', Block(cfg, i, rngs))
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs, cfg.norm_offset)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'))

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.cfg.compute_dtype == 'bfloat16' else jnp.float32

  def hidden(self, tokens_bt, mask_bt, positions_bt=None, cache=None, cache_index=None):
    """Final-norm hidden states [B, T, D] and the updated cache (a dict of per-layer caches, or None).

    mask_bt marks real tokens (False for padding). Positions default to the count of real tokens before each
    token, so left-padded prompts get the same positions as unpadded ones.
    """
    if positions_bt is None:
      positions_bt = jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1, 0)
    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(self.compute_dtype)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(self.cfg.d_model ** 0.5, self.compute_dtype)
    key_mask = mask_bt if cache is None else cache['mask']
    new_cache = None if cache is None else {'mask': key_mask}
    for i in range(self.cfg.num_layers):
      layer_cache = None if cache is None else cache[f'layer_{i}']
      x, layer_cache = getattr(self, f'layer_{i}')(x, positions_bt, key_mask, layer_cache, cache_index)
      if cache is not None:
        new_cache[f'layer_{i}'] = layer_cache
    return self.final_norm(x), new_cache

  def logits(self, hidden_btd):
    w = self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]
    logits = jnp.einsum('btd,dv->btv', hidden_btd, w.astype(hidden_btd.dtype)).astype(jnp.float32)
    return softcap(logits, self.cfg.final_logit_softcap)

  def __call__(self, tokens_bt, mask_bt, positions_bt=None, cache=None, cache_index=None):
    h, cache = self.hidden(tokens_bt, mask_bt, positions_bt, cache, cache_index)
    return self.logits(h), cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
  """An empty KV cache of `length` slots. cache['mask'] marks slots that hold real (non-padding) keys;
  the sampler sets it as it writes."""
  shape = (batch, cfg.kv_heads, length, cfg.head_dim)  # head-major, kv heads only: see attention.py
  layer = lambda: {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype),
                   'pos': jnp.full((batch, length), _UNWRITTEN, jnp.int32)}
  cache = {f'layer_{i}': layer() for i in range(cfg.num_layers)}
  cache['mask'] = jnp.zeros((batch, length), bool)
  return cache


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """float32 log-probabilities of `targets` under `logits`."""
  logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_bt[..., None], axis=-1)[..., 0]
