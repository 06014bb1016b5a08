"""Decoder-only Transformer language model in Flax NNX: the native Llama-style model and, through ModelConfig
fields, the conventions of the pretrained families (Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3; docs/models.md).

Layers are unrolled (`layer_0`, `layer_1`, ... : one compiled copy each) or, with config.model.scan_layers, one
stack `layers` whose parameters carry a leading layer axis and which `jax.lax.scan` runs (compile time independent
of depth). Both layouts compute the same function; checkpoints convert between them (`stack_layers`,
`unstack_layers`). config.model.remat puts each layer under `jax.checkpoint` (policies 'dots_saveable': keep the
matmul outputs; 'full': keep only the layer's input). The KV cache follows the layout: per-layer dicts, or one
dict 'layers' of arrays with the layer axis first (`cache_batch_axis` says where the rows are).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.distributed.sharding import constrain_activations, context_shards
from nlhf_jax.models.attention import Attention, LayerKind
from nlhf_jax.models.layers import GatedMLP, RMSNorm, param, param_dtype
from nlhf_jax.models.logprobs import (TokenStats, chunk_logits, chunked_logits, chunked_token_logprobs,
                                      token_logprobs)

STACK = 'layers'  # the parameter (and cache) subtree of a scanned stack
REMAT_POLICIES = {'full': jax.checkpoint_policies.nothing_saveable,
                  'dots_saveable': jax.checkpoint_policies.dots_saveable}

# The residual stream's sharding (under distributed.within_mesh): rows over the batch axes, like the inputs.
RESIDUAL = ('batch', 'length', None)
# A decoded position's residual stream (one token a row, with a cache): rows split over 'tensor' too, where they
# divide. With heads and the MLP split over 'tensor', each device then normalizes and adds its share of the rows:
# the projections' partial sums are reduce-scattered to it and the normalized rows all-gathered for the next
# projections, where a stream kept whole is all-reduced and every device does every row's elementwise work
# (sequence parallelism, over rows). The blocks' sublayers take whole rows (RESIDUAL) either way.
DECODE_RESIDUAL = ('decode_rows', 'length', None)
_UNWRITTEN = 2**30  # cache position of a slot that holds no key yet: never attended to


def _residual_axes(tokens_bt, cache) -> tuple:
  """DECODE_RESIDUAL for a decoded position whose rows divide into the shards of 'decode_rows', else RESIDUAL."""
  rows, length = tokens_bt.shape
  decoding = cache is not None and length == 1 and rows % context_shards('decode_rows') == 0
  return DECODE_RESIDUAL if decoding else RESIDUAL


class Block(nnx.Module):
  """Pre-norm residual block; with cfg.post_norms also a norm on each branch's output (Gemma's sandwich)."""

  def __init__(self, cfg: ModelConfig, layer: int | None, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.d_model, cfg.norm_eps, rngs, cfg.norm_offset, param_dtype(cfg))
    self.attn_norm = norm()
    self.attn = Attention(cfg, layer, rngs)
    self.mlp_norm = norm()
    self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, rngs, cfg.mlp_activation, param_dtype(cfg))
    if cfg.post_norms:
      self.attn_post_norm = norm()
      self.mlp_post_norm = norm()
    self.post_norms = cfg.post_norms

  def __call__(self, x, positions, key_mask, cache=None, cache_index=None, kind: LayerKind | None = None,
               span: int | None = None):
    whole = lambda y: constrain_activations(y, RESIDUAL)  # a sublayer's input: whole rows (see DECODE_RESIDUAL)
    h, cache = self.attn(whole(self.attn_norm(x)), positions, key_mask, cache, cache_index, kind, span)
    x = x + (self.attn_post_norm(h) if self.post_norms else h)
    h = self.mlp(whole(self.mlp_norm(x)))
    return x + (self.mlp_post_norm(h) if self.post_norms else h), cache


class Transformer(nnx.Module):
  """tokens [B, T] -> float32 logits [B, T, V] (and hidden states for heads that need them)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = param_dtype(cfg)
    self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'), dtype=dt)
    if cfg.scan_layers:
      setattr(self, STACK, _stacked_blocks(cfg, rngs))
    else:
      for i in range(cfg.num_layers):
        setattr(self, f'layer_{i}', Block(cfg, i, rngs))
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs, cfg.norm_offset, dt)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'), dtype=dt)

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.cfg.compute_dtype == 'bfloat16' else jnp.float32

  def embed_tokens(self, tokens_bt) -> jax.Array:
    """The input embeddings [B, T, D] in the compute dtype. With cfg.scale_embeddings (Gemma) they are multiplied
    by sqrt(d_model) as transformers does it: the constant rounded to float32 and then to the parameters' dtype,
    the product in that dtype (in bfloat16 parameters sqrt(3584) is 59.75, not 59.87), then the cast."""
    x = jnp.take(self.embed[...], tokens_bt, axis=0)
    if self.cfg.scale_embeddings:
      x = x * jnp.asarray(np.float32(self.cfg.d_model ** 0.5)).astype(x.dtype)
    return x.astype(self.compute_dtype)

  def hidden(self, tokens_bt, mask_bt, positions_bt=None, cache=None, cache_index=None, span: int | None = None):
    """Final-norm hidden states [B, T, D] and the updated cache (a dict of per-layer caches, or None).

    mask_bt marks real tokens (False for padding). Positions default to the count of real tokens before each
    token, so left-padded prompts get the same positions as unpadded ones. `span` (static, with a cache): attend
    over the cache's first `span` slots only, where a cache filled from the front holds every key the tokens may
    see (models/attention.py); None reads every slot. A cache may hold a 'prefix' cache (one row per run of
    rows, its slots before the cache's own: models/attention.py), returned as it came.
    """
    if positions_bt is None:
      positions_bt = jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1, 0)
    residual = _residual_axes(tokens_bt, cache)
    x = constrain_activations(self.embed_tokens(tokens_bt), residual)
    key_mask = mask_bt if cache is None else cache['mask']
    new_cache = None if cache is None else {'mask': key_mask}
    prefix = None if cache is None else cache.get('prefix')
    if prefix is not None:  # the prompt's slots first, one copy per run of rows (models/attention.py)
      new_cache['prefix'] = prefix
      rows = key_mask.shape[0] // prefix['mask'].shape[0]
      key_mask = jnp.concatenate([jnp.repeat(prefix['mask'], rows, axis=0), key_mask], axis=1)
    with_prefix = lambda c, name: c if prefix is None else {**c, 'prefix': prefix[name]}
    without_prefix = lambda c: {k: v for k, v in c.items() if k not in ('prefix', 'layer')}

    def run(block_graphdef, block_state, x, layer_cache, kind):
      x, layer_cache = nnx.merge(block_graphdef, block_state)(x, positions_bt, key_mask, layer_cache, cache_index,
                                                              kind, span)
      return constrain_activations(x, residual), layer_cache
    if self.cfg.remat != 'none':
      run = jax.checkpoint(run, policy=REMAT_POLICIES[self.cfg.remat], static_argnums=(0,))
    if self.cfg.scan_layers:
      graphdef, stacked = nnx.split(getattr(self, STACK))

      if cache is None:
        def body(x, inputs):
          layer_state, kind = inputs
          return run(graphdef, layer_state, x, None, kind)[0], None
        x, _ = jax.lax.scan(body, x, (stacked, LayerKind.stacked(self.cfg)))
        return self.final_norm(x), None

      def cached_body(carry, inputs):  # the stacked cache is carried; each layer writes its new slots in place
        x, caches = carry
        layer_state, kind, i = inputs
        x, caches = run(graphdef, layer_state, x, {**caches, 'layer': i}, kind)
        return (x, {name: caches[name] for name in caches if name != 'layer'}), None
      (x, stack), _ = jax.lax.scan(
          cached_body, (x, with_prefix(cache[STACK], STACK)),
          (stacked, LayerKind.stacked(self.cfg), jnp.arange(self.cfg.num_layers, dtype=jnp.int32)))
      new_cache[STACK] = without_prefix(stack)
      return self.final_norm(x), new_cache
    for i in range(self.cfg.num_layers):
      layer_cache = None if cache is None else with_prefix(cache[f'layer_{i}'], f'layer_{i}')
      block = getattr(self, f'layer_{i}')
      if self.cfg.remat == 'none':
        x, layer_cache = block(x, positions_bt, key_mask, layer_cache, cache_index, span=span)
        x = constrain_activations(x, residual)
      else:
        x, layer_cache = run(*nnx.split(block), x, layer_cache, LayerKind.of(self.cfg, i))
      if cache is not None:
        new_cache[f'layer_{i}'] = without_prefix(layer_cache)
    return self.final_norm(x), new_cache

  def unembedding(self) -> jax.Array:
    """[D, V]: the output projection (the embedding, transposed, when they are tied)."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]

  def logits(self, hidden_btd):
    """float32 logits [B, T, V], from the output table in its own layout (a tied embedding read by rows: no
    transposed copy of it). With config.model.logits_chunk, where the mesh in context splits the table over
    'fsdp' (a GSPMD program such as sharded decoding), they are made chunk by chunk of the vocabulary
    (models/logprobs.chunked_logits), so that the table is gathered a [D, chunk] slice at a time. Elsewhere the
    table is whole on the device (one device, the per-shard decode loop) or split by vocabulary (each device makes
    its own part of the logits), and chunks would only copy it a slice at a time (on GPU, at every token)."""
    tied = self.cfg.tie_embeddings
    table = self.embed[...] if tied else self.unembed[...]
    if self.cfg.logits_chunk and context_shards('embed') > 1 and context_shards('vocab') == 1:
      return chunked_logits(hidden_btd, table, self.cfg.logits_chunk, self.cfg.final_logit_softcap, vocab_first=tied)
    return chunk_logits(hidden_btd, table, self.cfg.final_logit_softcap, vocab_first=tied)

  def token_logprobs(self, hidden_btd, targets_bt, with_stats: bool = False):
    """float32 log p(targets) [B, T] from final hidden states (with_stats: a TokenStats with the entropy and
    whether each target is the argmax). With config.model.logits_chunk the vocabulary is visited in chunks and
    no [B, T, V] array exists (nlhf_jax/models/logprobs.py); otherwise the logits are made whole."""
    if self.cfg.logits_chunk:
      return chunked_token_logprobs(hidden_btd, self.unembedding(), targets_bt, self.cfg.logits_chunk,
                                    self.cfg.final_logit_softcap, with_stats)
    logits = self.logits(hidden_btd)
    lp = token_logprobs(logits, targets_bt)
    if not with_stats:
      return lp
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return TokenStats(lp, entropy, jnp.argmax(logits, axis=-1) == targets_bt)

  def __call__(self, tokens_bt, mask_bt, positions_bt=None, cache=None, cache_index=None):
    h, cache = self.hidden(tokens_bt, mask_bt, positions_bt, cache, cache_index)
    return self.logits(h), cache


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """num_layers Blocks as one, each parameter with a leading 'layers' axis (each layer its own init keys)."""
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(layer_rngs):
    return Block(cfg, None, layer_rngs)
  stack = make(rngs)
  for _, var in nnx.iter_graph(stack):
    if isinstance(var, nnx.Param):
      var.set_metadata(logical_axes=('layers',) + tuple(var.get_metadata()['logical_axes']))
  return stack


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
  """An empty KV cache of `length` slots. cache['mask'] marks slots that hold real (non-padding) keys;
  the sampler sets it as it writes. With scan_layers the layers' arrays are stacked under cache['layers']."""
  stack = (cfg.num_layers,) if cfg.scan_layers else ()
  shape = stack + (batch, cfg.kv_heads, length, cfg.head_dim)  # head-major, kv heads only: see attention.py
  layer = lambda: {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype),
                   'pos': jnp.full(stack + (batch, length), _UNWRITTEN, jnp.int32)}
  cache = {STACK: layer()} if cfg.scan_layers else {f'layer_{i}': layer() for i in range(cfg.num_layers)}
  cache['mask'] = jnp.zeros((batch, length), bool)
  return cache


def cache_batch_axis(path: tuple) -> int:
  """The row axis of a cache leaf at `path` (a tuple of keys): 1 in a stacked cache (layers first), else 0."""
  return 1 if path and path[0] == STACK else 0


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unrolled params (layer_0 ... layer_{L-1}) -> the scanned layout (one 'layers' subtree, layer axis first)."""
  layers = [params[f'layer_{i}'] for i in range(num_layers)]
  out = {k: v for k, v in params.items() if not k.startswith('layer_')}
  out[STACK] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def unrolled(model: Transformer) -> Transformer:
  """`model` with unrolled layers: its scanned stack's parameters split per layer, each layer's its own arrays (a
  copy, made once). Computes the same function. The sampler decodes from it on GPU, where a matmul in the layer
  loop otherwise takes a copy of its weights sliced out of the stack at every token."""
  cfg = dataclasses.replace(model.cfg, scan_layers=False)
  graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]
  return nnx.merge(graphdef, unstack_layers(nnx.to_pure_dict(nnx.state(model)), cfg.num_layers))


def unstack_layers(params: dict, num_layers: int) -> dict:
  """The scanned layout -> unrolled params."""
  out = {k: v for k, v in params.items() if k != STACK}
  for i in range(num_layers):
    out[f'layer_{i}'] = jax.tree.map(lambda x: x[i], params[STACK])
  return out
