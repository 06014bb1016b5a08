"""Log-probabilities of target tokens, from full logits or chunk by chunk over the vocabulary.

`token_logprobs(logits, targets)` reads float32 [B, T, V] logits. `chunked_token_logprobs(hidden, unembed, ...)`
computes the same values from the final hidden states [B, T, D] and the unembedding [D, V] without ever holding a
[B, T, V] array, in the forward or the backward pass:

- the vocabulary is cut into n = ceil(V / chunk) chunks of `chunk` ids; when `chunk` does not divide V the
  last chunk is the last `chunk` ids with those the previous chunk covered masked out (so no padded copy of the
  unembedding is made); a `jax.lax.scan` visits them in order and keeps, per token, a running maximum, the sum
  of exp(logit - maximum) and the target's logit (an online logsumexp), all float32;
- each chunk's logits are hidden @ unembed[:, ids] in hidden's dtype with float32 accumulation, then the
  optional final soft-cap cap * tanh(x / cap), in float32 (`Transformer.logits` computes the same logits, except
  that it rounds a bfloat16 product to bfloat16 before casting it to float32);
- the chunk body is under `jax.checkpoint`: the backward pass recomputes each chunk's logits, so the memory
  beyond the inputs and the gradients is a few [B, T, chunk] arrays, whatever V is.

Gradients flow to hidden and unembed and equal those of the dense computation (up to float rounding). With
`with_stats=True` the same pass also gives each token's entropy of the next-token distribution and whether its
target is the argmax (ties broken as jnp.argmax breaks them: the lowest id). Targets must lie in [0, V).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from nlhf_jax.models import layers


class TokenStats(NamedTuple):
  """Per-token figures of `chunked_token_logprobs(..., with_stats=True)`, each [B, T]."""
  logprobs: jax.Array  # float32 log p(target)
  entropy: jax.Array  # float32 entropy (nats) of the next-token distribution
  is_argmax: jax.Array  # bool: the target is the most likely id


class OnlineSoftmax(NamedTuple):
  """Per token [B, T], float32 unless noted: the online-logsumexp state after the chunks seen so far (the scan's
  carry) and, with stats, the entropy's running sum and the argmax so far (None without stats)."""
  max: jax.Array  # running maximum logit (no gradient: logsumexp does not depend on it)
  sumexp: jax.Array  # sum of exp(logit - max)
  target: jax.Array  # the target's logit (0 until its chunk is seen)
  zexp: jax.Array | None = None  # sum of logit * exp(logit - max), for the entropy
  best: jax.Array | None = None  # largest logit so far (strictly larger in a later chunk replaces it)
  best_id: jax.Array | None = None  # its id, int32


def token_logprobs(logits_btv: jax.Array, targets_bt: jax.Array) -> jax.Array:
  """float32 log-probabilities of `targets` under `logits`."""
  logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_bt[..., None], axis=-1)[..., 0]


def chunk_logits(hidden_btd: jax.Array, unembed_dc: jax.Array, softcap: float = 0.0,
                 vocab_first: bool = False) -> jax.Array:
  """float32 logits [B, T, C] of one vocabulary chunk ([D, C], or [C, D] rows of an embedding table with
  `vocab_first`): matmul in hidden's dtype with float32 accumulation, then the optional soft-cap."""
  spec = '...d,cd->...c' if vocab_first else '...d,dc->...c'
  z = jnp.einsum(spec, hidden_btd, unembed_dc.astype(hidden_btd.dtype), preferred_element_type=jnp.float32)
  return layers.softcap(z, softcap)


def _init(targets_bt: jax.Array, with_stats: bool) -> OnlineSoftmax:
  zeros = jnp.zeros(targets_bt.shape, jnp.float32)
  neg_inf = jnp.full(targets_bt.shape, -jnp.inf, jnp.float32)
  if not with_stats:
    return OnlineSoftmax(neg_inf, zeros, zeros)
  return OnlineSoftmax(neg_inf, zeros, zeros, zeros, neg_inf, jnp.zeros(targets_bt.shape, jnp.int32))


def _update(acc: OnlineSoftmax, z: jax.Array, start: jax.Array, first: jax.Array, ragged: bool,
            targets_bt: jax.Array) -> OnlineSoftmax:
  """Folds one chunk's logits z [B, T, C] of ids start .. start + C - 1 into acc; with `ragged`, the ids below
  `first` (already folded in by the previous chunk) are masked out."""
  ids = start + jnp.arange(z.shape[-1])
  masked = jnp.where(ids >= first, z, -jnp.inf) if ragged else z
  chunk_max = jnp.max(masked, axis=-1)
  new_max = jax.lax.stop_gradient(jnp.maximum(acc.max, chunk_max))
  rescale = jnp.exp(acc.max - new_max)
  p = jnp.exp(z - new_max[..., None])
  if ragged:
    p = jnp.where(ids >= first, p, 0.0)
  local = targets_bt - start
  here = (targets_bt >= first) & (local < z.shape[-1])
  picked = jnp.take_along_axis(z, jnp.clip(local, 0, z.shape[-1] - 1)[..., None], axis=-1)[..., 0]
  out = OnlineSoftmax(new_max, acc.sumexp * rescale + p.sum(-1), acc.target + jnp.where(here, picked, 0.0))
  if acc.zexp is None:
    return out
  better = chunk_max > acc.best
  return out._replace(zexp=acc.zexp * rescale + (p * z).sum(-1), best=jnp.where(better, chunk_max, acc.best),
                      best_id=jnp.where(better, jnp.argmax(masked, axis=-1).astype(jnp.int32) + start, acc.best_id))


def chunked_log_softmax_stats(hidden_btd: jax.Array, unembed_dv: jax.Array, targets_bt: jax.Array, chunk: int,
                              softcap: float = 0.0, with_stats: bool = False) -> OnlineSoftmax:
  """The OnlineSoftmax state after every vocabulary chunk of `chunk` ids (see the module docstring)."""
  if chunk < 1:
    raise ValueError(f'chunk must be a positive number of vocabulary ids, got {chunk}')
  vocab = unembed_dv.shape[1]
  chunk = min(chunk, vocab)
  n = -(-vocab // chunk)
  ragged = n * chunk != vocab

  @jax.checkpoint
  def body(acc: OnlineSoftmax, i: jax.Array) -> tuple[OnlineSoftmax, None]:
    first = i * chunk  # the chunk's first new id; the last chunk starts earlier and masks the ids already seen
    start = jnp.minimum(first, vocab - chunk)
    w = jax.lax.dynamic_slice_in_dim(unembed_dv, start, chunk, axis=1)
    return _update(acc, chunk_logits(hidden_btd, w, softcap), start, first, ragged, targets_bt), None

  acc, _ = jax.lax.scan(body, _init(targets_bt, with_stats), jnp.arange(n, dtype=jnp.int32))
  return acc


def chunked_logits(hidden_btd: jax.Array, unembed_dv: jax.Array, chunk: int, softcap: float = 0.0,
                   vocab_first: bool = False) -> jax.Array:
  """float32 logits [..., V] (those of `chunk_logits` over the whole vocabulary) built `chunk` ids at a time, so
  that only a [D, chunk] slice of the unembedding is ever gathered across devices: the sampler's next-token
  logits under config.model.logits_chunk. The last chunk overlaps the one before it when chunk does not divide V.
  With `vocab_first` the unembedding is given as [V, D] (a tied embedding table) and sliced by rows: no transposed
  copy of the table is made (XLA made one at every decoded token)."""
  vocab = unembed_dv.shape[0 if vocab_first else 1]
  chunk = min(chunk, vocab)
  n = -(-vocab // chunk)
  out = jnp.zeros(hidden_btd.shape[:-1] + (vocab,), jnp.float32)

  def body(out, i):
    start = jnp.minimum(i * chunk, vocab - chunk)
    w = jax.lax.dynamic_slice_in_dim(unembed_dv, start, chunk, axis=0 if vocab_first else 1)
    logits = chunk_logits(hidden_btd, w, softcap, vocab_first)
    return jax.lax.dynamic_update_slice_in_dim(out, logits, start, axis=-1), None

  out, _ = jax.lax.scan(body, out, jnp.arange(n, dtype=jnp.int32))
  return out


def chunked_token_logprobs(hidden_btd: jax.Array, unembed_dv: jax.Array, targets_bt: jax.Array, chunk: int,
                           softcap: float = 0.0, with_stats: bool = False) -> jax.Array | TokenStats:
  """float32 log p(target) [B, T] of hidden [B, T, D] projected by unembed [D, V] (the logits of
  `Transformer.logits`), `chunk` vocabulary ids at a time; with `with_stats`, a TokenStats that adds the entropy
  and the is-argmax flag."""
  acc = chunked_log_softmax_stats(hidden_btd, unembed_dv, targets_bt.astype(jnp.int32), chunk, softcap, with_stats)
  log_z = acc.max + jnp.log(acc.sumexp)
  logprobs = acc.target - log_z
  if not with_stats:
    return logprobs
  entropy = log_z - acc.zexp / acc.sumexp
  return TokenStats(logprobs, entropy, acc.best_id == targets_bt)


def response_logprobs(model, prompt, prompt_mask, response, response_mask) -> jax.Array:
  """float32 log pi(y_n | x, y_<n) [B, T] of right-padded responses after left-padded prompts (0 at padding),
  for a Transformer `model`. The vocabulary projection runs on the T positions that predict the response only
  (in chunks with config.model.logits_chunk)."""
  tokens = jnp.concatenate([prompt, response], axis=1)
  mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
  hidden, _ = model.hidden(tokens[:, :-1], mask[:, :-1])
  lp = model.token_logprobs(hidden[:, prompt.shape[1] - 1:], response)
  return jnp.where(response_mask, lp, 0.0)
