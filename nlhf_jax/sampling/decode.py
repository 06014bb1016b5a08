"""The decode loop: prefill, then `lax.while_loop`s of one-token steps over a `DecodeState`, then the outputs.

Prompts are LEFT-padded ([B, Lp] tokens and a bool mask), so every prompt ends in the last column and the first
response token is sampled from the prefill's last logits. Each model keeps a fixed-size cache: the prompt's Lp
slots once per prompt (the 'prefix', read once for all the rows of the prompt) and T = max_new_tokens slots per
row: all shapes are static, and one compiled loop serves every batch. The cache fills from the front, so the
prefill attends over the prompt's slots only and, with cfg.decode_segments, the loop comes in parts, each attending
over the slots written by its end (`Decoder.segments`).

`Decoder` is frozen and holds the static choices: the models' graphdefs (None for a model with no rows), the
row groups and the mixture weight beta (sampling/mixture.py), the SamplingConfig and its token-choice strategy
(sampling/strategies.py), the mesh whose rule table constrains the caches, and the mesh axes the stopping test
sums over inside a per-shard loop. Its methods take the parameters (policy, reference) and the state, and are
pure: `prefill` -> `loop` (or `step` by step) -> `finish`; `run` chooses between one GSPMD loop and a loop per
batch shard (sampling/sharded.py). Temperature and filters act AFTER mixing.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from nlhf_jax.config.schema import decode_spans
from nlhf_jax.models.transformer import init_cache
from nlhf_jax.sampling import sharded
from nlhf_jax.sampling.config import SamplingConfig
from nlhf_jax.sampling.mixture import POLICY, REF, Groups, as_groups, as_rows, mix_logits
from nlhf_jax.sampling.sharded import constrain, constrain_cache
from nlhf_jax.sampling.state import DecodeState
from nlhf_jax.sampling.strategies import Strategy

# ----------------------------------------------------------------------------------------------- model passes


def prefill(model: nnx.Module, prompt_rl: jax.Array, mask_rl: jax.Array, slots: int, mesh: Mesh | None = None,
            cache_dtype=None) -> tuple[jax.Array, dict]:
  """Runs the left-padded prompts through `model` into a fresh cache of `slots` slots, in `cache_dtype` (default:
  the model's compute dtype). Returns (logits of the last prompt position [R, V], cache)."""
  rows, length = prompt_rl.shape
  cache = init_cache(model.cfg, rows, slots, model.compute_dtype if cache_dtype is None else cache_dtype)
  cache['mask'] = jnp.concatenate([mask_rl, jnp.zeros((rows, slots - length), bool)], axis=1)
  cache = constrain_cache(cache, mesh)
  positions = jnp.maximum(jnp.cumsum(mask_rl.astype(jnp.int32), axis=1) - 1, 0)
  hidden, cache = model.hidden(prompt_rl, mask_rl, positions, cache, 0, span=length)  # no key beyond the prompt
  return model.logits(hidden[:, -1:])[:, 0], constrain_cache(cache, mesh)


def decode_step(model: nnx.Module, cache: dict, token_r: jax.Array, position_r: jax.Array, slot: jax.Array,
                mesh: Mesh | None = None, span: int | None = None) -> tuple[jax.Array, dict]:
  """Feeds one token per row at cache slot `slot` (below the static `span`: the slots attended over; None: all;
  with a 'prefix' cache of Lp slots, slot s is the cache's own slot s - Lp). Returns (next-token logits [R, V],
  cache)."""
  ones = jnp.ones((token_r.shape[0], 1), bool)
  own = slot - (cache['prefix']['mask'].shape[1] if 'prefix' in cache else 0)
  cache = dict(cache, mask=jax.lax.dynamic_update_slice_in_dim(cache['mask'], ones, own, axis=1))
  hidden, cache = model.hidden(token_r[:, None], ones, position_r[:, None], cache, slot, span=span)
  return model.logits(hidden)[:, 0], constrain_cache(cache, mesh)


# ----------------------------------------------------------------------------------------------- the decoder

LOOP_SCOPE = 'decode_loop'  # names the decode loop's instructions in compiled programs (nlhf-compile's per-token bytes)
Params = tuple[Any, Any]  # (policy parameters, reference parameters); None for a model that decodes no rows


@dataclasses.dataclass(frozen=True)
class Decoder:
  policy: nnx.GraphDef | None
  ref: nnx.GraphDef | None
  cfg: SamplingConfig
  groups: Groups
  beta: float = 0.0
  mesh: Mesh | None = None
  sync_axes: tuple[str, ...] = ()  # inside a per-shard loop: the manual axes the stopping test sums over

  @property
  def strategy(self) -> Strategy:
    return Strategy.of(self.cfg)

  def _models(self, params: Params) -> dict[str, nnx.Module]:
    """The decoding models, merged in the caller's trace (a module that sets attributes as it runs, such as a
    LoRA-adapted one, may only do so at the trace level it was made in: the loop's body merges its own)."""
    graphdefs = {POLICY: (self.policy, params[0]), REF: (self.ref, params[1])}
    return {name: nnx.merge(*graphdefs[name]) for name, _, _ in self.groups.decoders()}

  def _choose(self, logits: dict[str, jax.Array], state: DecodeState) -> DecodeState:
    mixed = mix_logits(logits.get(POLICY), logits.get(REF), self.groups, self.beta)
    tokens, logp = self.strategy.choose(mixed, state.keys, state.t)
    return state.record(tokens, logp, self.cfg)

  def prefill(self, params: Params, batch: dict, keys_bg: jax.Array) -> DecodeState:
    """Prefills each decoding model once per prompt and samples the first response token. A model's cache is the
    prompt's, once per prompt, as the 'prefix' of a cache of max_new_tokens slots per row: the rows of a prompt
    read its slots once, together (models/attention.py)."""
    prompt, mask = batch['prompt'].astype(jnp.int32), batch['prompt_mask'].astype(bool)
    models, logits, caches = self._models(params), {}, {}
    for name, _, rows in self.groups.decoders():
      model = models[name]
      dtype = self.cfg.cache_dtype(model.compute_dtype, self.mesh)
      last, prefix = prefill(model, constrain(prompt, ('batch', None), self.mesh),
                             constrain(mask, ('batch', None), self.mesh), prompt.shape[1], self.mesh, dtype)
      own = init_cache(model.cfg, prompt.shape[0] * rows, self.cfg.max_new_tokens, dtype)
      caches[name] = constrain_cache({**own, 'prefix': prefix}, self.mesh)
      logits[name] = jnp.repeat(last[:, None], rows, axis=1)
    return self._choose(logits, DecodeState.start(mask, keys_bg, caches, self.cfg))

  def step(self, params: Params, state: DecodeState, span: int | None = None) -> DecodeState:
    """Feeds every row's last token to its model(s) and samples the next one; the models attend over the first
    `span` cache slots (static; None: all), which must hold every slot written so far."""
    models = self._models(params)
    prev = state.last_tokens()  # [B, G]
    position = state.prompt_len + state.t - 1  # [B]
    slot = state.prompt_width + state.t - 1
    logits, caches = {}, {}
    for name, first, rows in self.groups.decoders():
      last, caches[name] = decode_step(models[name], state.caches[name], as_rows(prev[:, first:first + rows]),
                                       jnp.repeat(position, rows, axis=0), slot, self.mesh, span)
      logits[name] = as_groups(last, rows)
    return self._choose(logits, state.replace(caches=caches))

  def segments(self, prompt_width: int) -> list[tuple[int, int]]:
    """(steps, span) of each part of the loop (config.schema.decode_spans): its one-token steps and the cache slots
    it attends over, those its last step has written, no further."""
    return decode_spans(self.cfg.max_new_tokens, self.cfg.decode_segments, prompt_width)

  def loop(self, params: Params, state: DecodeState) -> DecodeState:
    """Steps until every row is done or max_new_tokens tokens are sampled: one `while_loop` per part of
    `segments` (a part whose rows are all done runs no step). Under shard_map, `sync_axes` makes "every row" mean
    the rows of all shards along them: needed when the body holds collectives over other axes, which every device
    must enter the same number of times. Named `LOOP_SCOPE` in compiled programs."""

    def running(state: DecodeState) -> jax.Array:
      running = state.running()
      if self.sync_axes:
        running = jax.lax.psum(running, self.sync_axes)
      return running > 0

    with jax.named_scope(LOOP_SCOPE):
      for steps, span in self.segments(state.prompt_width):
        # the part's own counter from 0: a constant bound that compilers (and nlhf-compile) read as its trip count
        _, state = jax.lax.while_loop(
            lambda carry, steps=steps: (carry[0] < steps) & running(carry[1]),
            lambda carry, span=span: (carry[0] + 1, self.step(params, carry[1], span)),
            (jnp.zeros((), jnp.int32), state))
    return state

  def finish(self, state: DecodeState) -> dict:
    """{'tokens', 'mask', 'logprobs'}, each [B, G, T]: the mask covers the response up to and including its stop
    token."""
    is_eos = self.cfg.is_stop(state.tokens)
    ended_before = (jnp.cumsum(is_eos.astype(jnp.int32), axis=2) - is_eos) > 0
    mask = ~ended_before
    tokens = jnp.where(mask, state.tokens, self.cfg.pad_id)
    return {'tokens': tokens, 'mask': mask, 'logprobs': jnp.where(mask, state.logprobs, 0.0)}

  def decode(self, params: Params, batch: dict, keys_bg: jax.Array) -> dict:
    """prefill, loop, finish: {'tokens', 'mask', 'logprobs'} of shape [B, G, T]."""
    return self.finish(self.loop(params, self.prefill(params, batch, keys_bg)))

  def run(self, params: Params, batch: dict, keys_bg: jax.Array) -> dict:
    """`decode` per batch shard on a mesh whose batch axes have several shards (sharded.per_shard: parameters
    gathered over 'fsdp' once), else, with cfg.sharded_decode, or for a batch that does not divide into the shards,
    as one GSPMD program (parameters left sharded, each step gathering a layer's weights as it needs them; every
    row stops when all are done). Samples are the same every way (keys are per row). With cfg.decode_tensor, on
    the sampler's own layout (`_run_regrouped`)."""
    if self.cfg.decode_tensor and self.mesh is not None:
      return self._run_regrouped(params, batch, keys_bg)
    shards = sharded.batch_shards(self.mesh)
    if self.cfg.sharded_decode or shards == 1 or batch['prompt'].shape[0] % shards:
      return self.decode(params, batch, keys_bg)
    on_shard = lambda p, b, k, sync_axes: dataclasses.replace(self, mesh=None, sync_axes=sync_axes).decode(p, b, k)
    return sharded.per_shard(on_shard, self.mesh, params, batch, keys_bg)

  def _run_regrouped(self, params: Params, batch: dict, keys_bg: jax.Array) -> dict:
    """`run` on the sampler's own layout (SamplingConfig.decode_tensor; sharded.regroup): the weights moved into
    it once, the model passes traced with that mesh in context, the outputs back in the rows' sharding."""
    model = next(iter(self._models(params).values()))
    layout = sharded.regroup(self.mesh, self.cfg.decode_tensor, model.cfg)
    moved = tuple(None if p is None else sharded.to_layout(p, layout) for p in params)
    rows = lambda x: constrain(x, ('batch',) + (None,) * (x.ndim - 1), layout)
    batch, keys_bg = {k: rows(v) for k, v in batch.items()}, rows(keys_bg)
    inner = dataclasses.replace(self, mesh=layout)
    with jax.sharding.use_abstract_mesh(layout.abstract_mesh):  # one GSPMD loop: 'fsdp' is 1, nothing to gather
      out = inner.decode(moved, batch, keys_bg)
    return {k: constrain(v, ('batch',) + (None,) * (v.ndim - 1), self.mesh) for k, v in out.items()}
