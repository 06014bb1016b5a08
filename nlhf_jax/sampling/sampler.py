"""Autoregressive sampling with a KV cache: prefill, then a `lax.while_loop` decode over one flat state pytree.

Prompts are LEFT-padded ([B, Lp] tokens and a bool mask), so every prompt ends in the last column and the first
response token is sampled from the prefill's last logits. Each model keeps a fixed-size cache of Lp + T slots
(T = max_new_tokens): all shapes are static, and one compiled loop serves every batch.

Row groups. One loop can decode several responses per prompt. Every prompt owns G rows, in three groups:
  n_policy rows sampled from the policy, n_mix rows from the token-level geometric mixture
  softmax((1 - beta) * logits_policy + beta * logits_ref), and n_ref rows from the reference.
The policy decodes n_policy + n_mix rows per prompt and the reference n_mix + n_ref rows, each in its own cache;
a model with no rows is never run. Rows are laid out prompt-major ([B, G] flattened), so a batch sharded over
('data', 'fsdp') keeps all rows of a prompt on the device that holds the prompt: repeating, mixing and splitting
the groups is local.

Randomness. Each group has its own stream key; row (b, g) uses fold_in(stream_key_g, example_index_b) and token t
of it fold_in(that, t). Samples therefore depend on the seed, the stream and the example only - not on the batch
composition, the position in the batch, the mesh or the number of processes. A token is drawn exactly from the
filtered distribution by a two-level Gumbel-max (`draw`), with no float32 cumulative sum.

Temperature and filters act AFTER mixing: logits = filters(mixed / temperature). Temperature 0 is greedy; then the
returned log-probabilities are those of the filtered mixed logits at temperature 1 (the model's probability of
the chosen token), since the distribution actually sampled from is a point mass.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.distributed.sharding import LOGICAL_AXIS_RULES, logical_to_spec
from nlhf_jax.models.transformer import cache_batch_axis, init_cache, map_cache_rows
from nlhf_jax.sampling.filters import filter_logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample responses. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. A row ends at
  the first of `stop_ids` it samples (the tokenizer's eos and end-of-turn ids; none: every row runs to
  max_new_tokens)."""
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = (2,)
  pad_id: int = 0
  # Models larger than one device: keep the parameters sharded over 'fsdp' in the decode loop (each step gathers
  # a layer's weights as it needs them) instead of gathering them whole at the per-shard loop's boundary.
  sharded_params: bool = False
  # dtype of the KV caches. '' (auto): the models' compute dtype, except float32 on a CPU backend, where XLA
  # rewrites each token's write into a bfloat16 cache as a float32 round trip of the whole cache and feeds the
  # attention matmuls a float32 copy of it (a bfloat16 cache made the CPU decode loop 1.4x slower). Or 'float32',
  # 'bfloat16'.
  cache_dtype: str = ''

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {self.temperature}')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {self.top_p}')
    if self.cache_dtype not in ('', 'float32', 'bfloat16'):
      raise ValueError(f"cache_dtype must be '' (auto), 'float32' or 'bfloat16', got {self.cache_dtype!r}")
    ids = (self.stop_ids,) if isinstance(self.stop_ids, int) else self.stop_ids  # one id or several
    object.__setattr__(self, 'stop_ids', tuple(int(i) for i in ids))

  def kv_cache_dtype(self, compute_dtype, mesh: Mesh | None = None):
    """The dtype the caches are made in (see `cache_dtype`) for models computing in `compute_dtype`."""
    if self.cache_dtype:
      return jnp.dtype(self.cache_dtype)
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return jnp.dtype(jnp.float32) if platform == 'cpu' else jnp.dtype(compute_dtype)

  def is_stop(self, tokens: jax.Array) -> jax.Array:
    """bool, the shape of `tokens`: which tokens end a response."""
    stop = jnp.zeros(tokens.shape, bool)
    for i in self.stop_ids:
      stop |= tokens == i
    return stop


class Groups(NamedTuple):
  """Rows per prompt: sampled from the policy, from the mixture, from the reference."""
  n_policy: int = 1
  n_mix: int = 0
  n_ref: int = 0

  @property
  def total(self) -> int:
    return self.n_policy + self.n_mix + self.n_ref

  @property
  def policy_rows(self) -> int:
    return self.n_policy + self.n_mix

  @property
  def ref_rows(self) -> int:
    return self.n_mix + self.n_ref


# ----------------------------------------------------------------------------------------------- sharding


def constrain(x: jax.Array, axes: tuple, mesh: Mesh | None = None) -> jax.Array:
  """with_sharding_constraint by logical axis names; a no-op when there is neither a mesh argument nor a mesh
  context (so the same code runs unsharded), and inside the per-shard loop of `run` (manual mesh axes)."""
  spec = logical_to_spec(axes)
  if mesh is not None:
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  context = jax.sharding.get_abstract_mesh()
  if not context.empty and not context.manual_axes:
    return jax.lax.with_sharding_constraint(x, spec)
  return x


def batch_shards(mesh: Mesh | None) -> int:
  """How many shards the batch axis has on `mesh` (the rule table's mesh axes of 'batch')."""
  if mesh is None:
    return 1
  axes = LOGICAL_AXIS_RULES['batch']
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def _constrain_cache(cache: dict, mesh: Mesh | None) -> dict:
  out = {'mask': constrain(cache['mask'], ('batch', 'length'), mesh)}
  for name, layer in cache.items():
    if name != 'mask':
      lead = ('layers',) * cache_batch_axis((name,))  # a scanned stack's caches: the layer axis first
      out[name] = {'k': constrain(layer['k'], lead + ('batch', 'kv_heads', 'length', 'head_dim'), mesh),
                   'v': constrain(layer['v'], lead + ('batch', 'kv_heads', 'length', 'head_dim'), mesh),
                   'pos': constrain(layer['pos'], lead + ('batch', 'length'), mesh)}
  return out


# ----------------------------------------------------------------------------------------------- model passes


def prefill(model: nnx.Module, prompt_rl: jax.Array, mask_rl: jax.Array, slots: int, mesh: Mesh | None = None,
            cache_dtype=None) -> tuple[jax.Array, dict]:
  """Runs the left-padded prompts through `model` into a fresh cache of `slots` slots, in `cache_dtype` (default:
  the model's compute dtype). Returns (logits of the last prompt position [R, V], cache)."""
  rows, length = prompt_rl.shape
  cache = init_cache(model.cfg, rows, slots, model.compute_dtype if cache_dtype is None else cache_dtype)
  cache['mask'] = jnp.concatenate([mask_rl, jnp.zeros((rows, slots - length), bool)], axis=1)
  cache = _constrain_cache(cache, mesh)
  positions = jnp.maximum(jnp.cumsum(mask_rl.astype(jnp.int32), axis=1) - 1, 0)
  hidden, cache = model.hidden(prompt_rl, mask_rl, positions, cache, 0)
  return model.logits(hidden[:, -1:])[:, 0], _constrain_cache(cache, mesh)


def decode_step(model: nnx.Module, cache: dict, token_r: jax.Array, position_r: jax.Array, slot: jax.Array,
                mesh: Mesh | None = None) -> tuple[jax.Array, dict]:
  """Feeds one token per row at cache slot `slot`. Returns (next-token logits [R, V], cache)."""
  ones = jnp.ones((token_r.shape[0], 1), bool)
  cache = dict(cache, mask=jax.lax.dynamic_update_slice_in_dim(cache['mask'], ones, slot, axis=1))
  hidden, cache = model.hidden(token_r[:, None], ones, position_r[:, None], cache, slot)
  return model.logits(hidden)[:, 0], _constrain_cache(cache, mesh)


# ----------------------------------------------------------------------------------------------- token choice


def mix_logits(policy_bgv: jax.Array | None, ref_bgv: jax.Array | None, groups: Groups, beta: float) -> jax.Array:
  """[B, G, V] logits of every row: policy rows, then mixture rows, then reference rows."""
  parts = []
  if groups.n_policy:
    parts.append(policy_bgv[:, :groups.n_policy])
  if groups.n_mix:
    parts.append((1.0 - beta) * policy_bgv[:, groups.n_policy:] + beta * ref_bgv[:, :groups.n_mix])
  if groups.n_ref:
    parts.append(ref_bgv[:, groups.n_mix:])
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def choose_tokens(logits_bgv: jax.Array, row_keys_bg: jax.Array, t: jax.Array, cfg: SamplingConfig
                  ) -> tuple[jax.Array, jax.Array]:
  """(tokens [B, G] int32, float32 log-probabilities [B, G] of the distribution they were drawn from). Row (b, g)
  draws with fold_in(row_keys_bg[b, g], t) alone, so its token depends on its own key and logits only."""
  greedy = cfg.temperature == 0.0
  filtered = filter_logits(logits_bgv.astype(jnp.float32), 1.0 if greedy else cfg.temperature, cfg.top_k,
                           cfg.top_p)
  logp = jax.nn.log_softmax(filtered, axis=-1)
  if greedy:
    tokens = jnp.argmax(filtered, axis=-1).astype(jnp.int32)
  else:
    tokens = jax.vmap(jax.vmap(lambda k, row: draw(jax.random.fold_in(k, t), row)))(row_keys_bg, filtered)
  return tokens, jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def block_size(vocab: int) -> int:
  """The block width of `draw`: the power of two nearest above sqrt(vocab)."""
  return 1 << max(0, math.ceil(math.log2(max(vocab, 1)) / 2))


def draw(key: jax.Array, logits_v: jax.Array) -> jax.Array:
  """One token from softmax(logits) (last axis [V], float32; -inf tokens are never drawn), int32 scalar.

  Gumbel-max in two levels: the vocabulary is cut into blocks of `block_size(V)` ids (the last one padded with
  -inf), a block is drawn by Gumbel-max over the blocks' logsumexps, then a token of that block by Gumbel-max over
  its logits. P(block) P(token | block) = softmax(logits)[token], so the draw is exact: every probability is
  resolved relative to the others (the Gumbels are made from 64 random bits, jax.random's 'highest' mode), with
  no floor such as a float32 cumulative sum's (near 1 it cannot resolve steps below 6e-8, and a 23-bit uniform
  none below 1.2e-7). It costs about 2 sqrt(V) random numbers instead of V for one-level Gumbel-max, and no
  array larger than the [V] logits."""
  vocab = logits_v.shape[-1]
  width = block_size(vocab)
  blocks = -(-vocab // width)
  if blocks * width != vocab:
    logits_v = jnp.pad(logits_v, (0, blocks * width - vocab), constant_values=-jnp.inf)
  logits_kw = logits_v.reshape(blocks, width)
  k_block, k_token = jax.random.split(key)
  block = jax.random.categorical(k_block, jax.nn.logsumexp(logits_kw, axis=-1), mode='highest')
  token = jax.random.categorical(k_token, jnp.take(logits_kw, block, axis=0), mode='highest')
  return (block * width + token).astype(jnp.int32)


def row_keys(key: jax.Array, example_index_b: jax.Array, num_groups: int) -> jax.Array:
  """[B, G] keys: fold_in(fold_in(key, g), example_index_b) for group g; one group uses `key` itself."""
  streams = [key] if num_groups == 1 else [jax.random.fold_in(key, g) for g in range(num_groups)]
  per_example = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(example_index_b)
  return jnp.stack([per_example(k) for k in streams], axis=1)


# ----------------------------------------------------------------------------------------------- the loop


def _as_rows(x_bgv: jax.Array) -> jax.Array:
  return x_bgv.reshape((-1,) + x_bgv.shape[2:])


def _as_groups(x_rv: jax.Array, groups_per_prompt: int) -> jax.Array:
  return x_rv.reshape((-1, groups_per_prompt) + x_rv.shape[1:])


def _record(state: dict, tokens_bg, logp_bg, t, cfg: SamplingConfig) -> dict:
  """Writes step t's tokens (pad once a row is done) and updates `done`."""
  done = state['done']
  tokens_bg = jnp.where(done, cfg.pad_id, tokens_bg)
  logp_bg = jnp.where(done, 0.0, logp_bg)
  write = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[..., None].astype(buf.dtype), t, axis=2)
  return dict(state, tokens=write(state['tokens'], tokens_bg), logprobs=write(state['logprobs'], logp_bg),
              done=done | cfg.is_stop(tokens_bg), t=t + 1)


def init_state(policy: nnx.Module | None, ref: nnx.Module | None, batch: dict, keys_bg: jax.Array,
               cfg: SamplingConfig, groups: Groups, beta: float, mesh: Mesh | None = None) -> dict:
  """Prefill both models and sample the first response token. The returned flat state pytree holds the step,
  the tokens and log-probabilities so far, the done flags, the keys, the prompt lengths and the caches."""
  prompt, mask = batch['prompt'].astype(jnp.int32), batch['prompt_mask'].astype(bool)
  b, length = prompt.shape
  slots = length + cfg.max_new_tokens
  logits, caches = {}, {}
  for name, model, g in (('policy', policy, groups.policy_rows), ('ref', ref, groups.ref_rows)):
    if g:  # prefill once per prompt; the g rows of a prompt share (a copy of) its cache
      last, cache = prefill(model, constrain(prompt, ('batch', None), mesh), constrain(mask, ('batch', None), mesh),
                            slots, mesh, cfg.kv_cache_dtype(model.compute_dtype, mesh))
      caches[name] = _constrain_cache(map_cache_rows(lambda x, axis: jnp.repeat(x, g, axis=axis), cache), mesh)
      logits[name] = jnp.repeat(last[:, None], g, axis=1)
  state = {
      't': jnp.zeros((), jnp.int32),
      'tokens': jnp.full((b, groups.total, cfg.max_new_tokens), cfg.pad_id, jnp.int32),
      'logprobs': jnp.zeros((b, groups.total, cfg.max_new_tokens), jnp.float32),
      'done': jnp.zeros((b, groups.total), bool),
      'keys': keys_bg,
      'prompt_len': mask.sum(axis=1).astype(jnp.int32),
      'caches': caches,
  }
  mixed = mix_logits(logits.get('policy'), logits.get('ref'), groups, beta)
  tokens, logp = choose_tokens(mixed, keys_bg, state['t'], cfg)
  return _record(state, tokens, logp, state['t'], cfg)


def decode(policy: nnx.Module | None, ref: nnx.Module | None, state: dict, cfg: SamplingConfig, groups: Groups,
           beta: float, prompt_length: int, mesh: Mesh | None = None, sync_axes: tuple[str, ...] = ()) -> dict:
  """Runs the while loop until every row is done or max_new_tokens tokens are sampled. Under shard_map,
  `sync_axes` (manual mesh axes) makes "every row" mean the rows of all shards along them: needed when the body
  holds collectives over other axes, which every device must enter the same number of times."""
  # Split here and merged inside the body, so that a model is a module of the loop's own trace (a module that
  # sets attributes as it runs, such as a LoRA-adapted one, may only do so at the trace level it was made in).
  split = lambda m: None if m is None else nnx.split(m)
  parts = {'policy': (split(policy), groups.policy_rows), 'ref': (split(ref), groups.ref_rows)}

  def body(state):
    models = {name: (None if part is None else nnx.merge(*part), g) for name, (part, g) in parts.items()}
    t = state['t']
    prev = jax.lax.dynamic_index_in_dim(state['tokens'], t - 1, axis=2, keepdims=False)  # [B, G]
    position = state['prompt_len'] + t - 1  # [B]
    slot = prompt_length + t - 1
    logits, caches = {}, {}
    g0 = {'policy': 0, 'ref': groups.n_policy}
    for name, cache in state['caches'].items():
      model, g = models[name]
      tok = _as_rows(prev[:, g0[name]:g0[name] + g])
      pos = jnp.repeat(position, g, axis=0)
      last, caches[name] = decode_step(model, cache, tok, pos, slot, mesh)
      logits[name] = _as_groups(last, g)
    tokens, logp = choose_tokens(mix_logits(logits.get('policy'), logits.get('ref'), groups, beta),
                                 state['keys'], t, cfg)
    return _record(dict(state, caches=caches), tokens, logp, t, cfg)

  def cond(state):
    running = jnp.sum(~state['done'], dtype=jnp.int32)
    if sync_axes:
      running = jax.lax.psum(running, sync_axes)
    return (state['t'] < cfg.max_new_tokens) & (running > 0)

  return jax.lax.while_loop(cond, body, state)


def finish(state: dict, cfg: SamplingConfig) -> dict:
  """{'tokens', 'mask', 'logprobs'}, each [B, G, T]: the mask covers the response up to and including its stop
  token."""
  is_eos = cfg.is_stop(state['tokens'])
  ended_before = (jnp.cumsum(is_eos.astype(jnp.int32), axis=2) - is_eos) > 0
  mask = ~ended_before
  tokens = jnp.where(mask, state['tokens'], cfg.pad_id)
  return {'tokens': tokens, 'mask': mask, 'logprobs': jnp.where(mask, state['logprobs'], 0.0)}


def _run_local(policy, ref, batch, keys_bg, cfg, groups, beta, mesh, sync_axes=()) -> dict:
  state = init_state(policy, ref, batch, keys_bg, cfg, groups, beta, mesh)
  state = decode(policy, ref, state, cfg, groups, beta, batch['prompt'].shape[1], mesh, sync_axes)
  return finish(state, cfg)


def run(policy: nnx.Module | None, ref: nnx.Module | None, batch: dict, keys_bg: jax.Array, cfg: SamplingConfig,
        groups: Groups, beta: float = 0.0, mesh: Mesh | None = None) -> dict:
  """Prefill, decode and finish: {'tokens', 'mask', 'logprobs'} of shape [B, G, T].

  On a mesh whose batch axes ('data', 'fsdp') have several shards, the whole loop runs per shard under
  `jax.shard_map`, manual over those axes: the parameters are gathered over 'fsdp' once, at the shard_map
  boundary (not inside the loop) and each shard decodes its own rows; 'tensor' stays automatic (GSPMD splits the
  heads, MLP and vocabulary). With tensor = 1 the body has no collective and each shard leaves its while loop when
  its own rows are done; with tensor > 1 every device must run the body's collectives equally often, so the shards
  leave together, when all rows are done (one scalar psum a token). With cfg.sharded_params the loop is one GSPMD
  program instead: the parameters stay sharded over 'fsdp' (and 'tensor'), each step gathering a layer's weights
  as it needs them (ZeRO-3 style), so a model larger than one device's memory decodes; every row stops when all
  are done. Samples are the same every way (keys are per row). A batch that does not divide into the shards runs
  unsplit.
  """
  with jax.named_scope(SCOPE):  # names the sampler's instructions in compiled programs (nlhf-compile's phases)
    policy, ref = decode_weights(policy), decode_weights(ref)
    return _run(policy, ref, batch, keys_bg, cfg, groups, beta, mesh)


SCOPE = 'sample'


def decode_weights(model: nnx.Module | None) -> nnx.Module | None:
  """`model` with its float32 weight matrices in bfloat16 when it computes in bfloat16: cast once, before the
  decode loop, instead of at every token (a float32 policy's weights read at every step are twice the bytes, and
  where the cast does not fuse into the matmul, as on GPUs, a float32 read plus a bfloat16 write and read). Every
  matrix is used through `models.layers.einsum`, which casts it to the bfloat16 activations' dtype, and the
  embedding lookup is cast after the lookup: the samples are the same bit for bit. Vectors (norm scales, biases)
  and, with scale_embeddings, the embedding (its scaling is computed in the weights' dtype), and LoRA adapters
  stay as they are."""
  if model is None or getattr(getattr(model, 'cfg', None), 'compute_dtype', '') != 'bfloat16':
    return model
  keep_embedding = model.cfg.scale_embeddings

  def cast(path, x):
    names = [str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path]
    adapter = any(n.endswith(('_lora_a', '_lora_b')) for n in names)  # LoRA computes its product in float32
    if x.dtype != jnp.float32 or x.ndim < 2 or adapter or (keep_embedding and 'embed' in names):
      return x
    return x.astype(jnp.bfloat16)
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(cast, state))


def _run(policy, ref, batch, keys_bg, cfg, groups, beta, mesh) -> dict:
  shards = batch_shards(mesh)
  if cfg.sharded_params or shards == 1 or batch['prompt'].shape[0] % shards:
    return _run_local(policy, ref, batch, keys_bg, cfg, groups, beta, mesh)
  manual = LOGICAL_AXIS_RULES['batch']
  manual = {manual} if isinstance(manual, str) else set(manual)
  rows = logical_to_spec(('batch',))
  split = lambda m: (None, None) if m is None else nnx.split(m)
  (policy_def, policy_state), (ref_def, ref_state) = split(policy), split(ref)
  merge = lambda d, st: None if d is None else nnx.merge(d, st)

  auto_axes = [a for a in mesh.axis_names if a not in manual and mesh.shape[a] > 1]
  sync_axes = tuple(a for a in mesh.axis_names if a in manual) if auto_axes else ()

  def per_shard(policy_state, ref_state, batch, keys_bg):
    return _run_local(merge(policy_def, policy_state), merge(ref_def, ref_state), batch, keys_bg, cfg, groups,
                      beta, None, sync_axes)

  return jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(), rows, rows), out_specs=rows,
                       axis_names=manual, check_vma=False)(policy_state, ref_state, batch, keys_bg)


# ----------------------------------------------------------------------------------------------- public API


def _group(out: dict, g: int) -> dict:
  return {k: v[:, g] for k, v in out.items()}


def pair_groups(beta: float) -> Groups:
  """Row groups of the (y ~ policy, y' ~ mixture) pair: the mixture group degenerates to a policy group at
  beta = 0 (the reference is not run) and to a reference group at beta = 1 (the policy decodes B rows only)."""
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f'beta must be in [0, 1], got {beta}')
  if beta == 0.0:
    return Groups(n_policy=2)
  if beta == 1.0:
    return Groups(n_policy=1, n_ref=1)
  return Groups(n_policy=1, n_mix=1)


def sample(graphdef: nnx.GraphDef, params: Any, batch: dict, key: jax.Array, cfg: SamplingConfig,
           mesh: Mesh | None = None) -> dict:
  """Samples one response per prompt from the model (graphdef, params).

  batch: 'prompt' int32 [B, Lp] left-padded, 'prompt_mask' bool [B, Lp], 'example_index' int32 [B] (global
  dataset indices). Returns {'tokens' int32, 'mask' bool, 'logprobs' float32}, each [B, max_new_tokens].
  """
  model = nnx.merge(graphdef, params)
  keys = row_keys(key, batch['example_index'], 1)
  return _group(run(model, None, batch, keys, cfg, Groups(n_policy=1), 0.0, mesh), 0)


def sample_pair(policy_graphdef: nnx.GraphDef, policy_params: Any, ref_graphdef: nnx.GraphDef | None,
                ref_params: Any, batch: dict, key: jax.Array, cfg: SamplingConfig, beta: float,
                mesh: Mesh | None = None) -> dict:
  """For each prompt, y ~ policy and y' ~ pi^beta (token-level geometric mixture with the reference), in one
  decode loop. y uses stream fold_in(key, 0) and y' stream fold_in(key, 1), so y equals
  `sample(policy, key=fold_in(key, 0))` and, at beta = 0 (1), y' equals `sample(policy (reference),
  key=fold_in(key, 1))`. `beta` is a static Python float; at beta = 0 the reference may be None.

  Returns {'policy': {...}, 'mixture': {...}}, each {'tokens', 'mask', 'logprobs'} of shape [B, T].
  """
  groups = pair_groups(beta)
  policy = nnx.merge(policy_graphdef, policy_params)
  ref = nnx.merge(ref_graphdef, ref_params) if groups.ref_rows else None
  keys = row_keys(key, batch['example_index'], 2)
  out = run(policy, ref, batch, keys, cfg, groups, beta, mesh)
  return {'policy': _group(out, 0), 'mixture': _group(out, 1)}


# ----------------------------------------------------------------------------------------------- standalone jit


def jit_sample(graphdef: nnx.GraphDef, cfg: SamplingConfig, mesh: Mesh | None = None):
  """A standalone jitted `sample`: fn(params, batch, key) -> outputs (graphdef and config are static)."""
  return jax.jit(lambda params, batch, key: sample(graphdef, params, batch, key, cfg, mesh))


def jit_sample_pair(policy_graphdef: nnx.GraphDef, ref_graphdef: nnx.GraphDef | None, cfg: SamplingConfig,
                    beta: float, mesh: Mesh | None = None):
  """A standalone jitted `sample_pair`: fn(policy_params, ref_params, batch, key) -> outputs. The same program the
  online train step runs inside its jit (prefill, then the decode while_loop, whose caches XLA updates in place),
  so the sampling bench times what training runs."""
  return jax.jit(lambda policy_params, ref_params, batch, key: sample_pair(
      policy_graphdef, policy_params, ref_graphdef, ref_params, batch, key, cfg, beta, mesh))
