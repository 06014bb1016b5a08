"""How a token is chosen from a row's logits: small strategy objects, composed in one place (`Strategy.of`).

- `Temperature` divides the logits (a no-op at 1); `TopK` and `TopP` truncate them, marking the excluded tokens
  with -inf. Each wraps the math of sampling/filters.py and says whether it changes anything at a vocabulary size
  (`active`), so that a pass that recomputes the sampled distribution (online/step.py's `sampled_logprobs`) builds
  the full logits only when a truncation is on.
- `Strategy` applies the temperature, then the truncations in order, then draws: `draw`, an exact two-level
  Gumbel-max, or argmax at temperature 0 (greedy, whose log-probabilities are those of the truncated logits at
  temperature 1, the model's probability of the chosen token).

A new filter (e.g. min-p) is one class here with `__call__` and `active`, its place in `Strategy.of`, its field in
SamplingConfig and its row in config/validate.py's SAMPLING_OPTIONS (plus a field of config/schema.py's
SamplingOptions, config.online.sampling, if users set it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import jax
import jax.numpy as jnp

from nlhf_jax.sampling import filters
from nlhf_jax.sampling.config import SamplingConfig


class Truncation(Protocol):
  """Keeps part of the vocabulary (the others' logits become -inf); pure and jittable, over the last axis."""

  def __call__(self, logits: jax.Array) -> jax.Array:
    ...

  def active(self, vocab: int) -> bool:
    """Whether it can exclude a token of a `vocab`-sized vocabulary (if not, it returns its input)."""
    ...


@dataclasses.dataclass(frozen=True)
class Temperature:
  value: float = 1.0

  def __call__(self, logits: jax.Array) -> jax.Array:
    return filters.apply_temperature(logits, self.value)


@dataclasses.dataclass(frozen=True)
class TopK:
  k: int = 0

  def __call__(self, logits: jax.Array) -> jax.Array:
    return filters.top_k_filter(logits, self.k)

  def active(self, vocab: int) -> bool:
    return 0 < self.k < vocab


@dataclasses.dataclass(frozen=True)
class TopP:
  p: float = 1.0

  def __call__(self, logits: jax.Array) -> jax.Array:
    return filters.top_p_filter(logits, self.p)

  def active(self, vocab: int) -> bool:
    return self.p < 1.0


@dataclasses.dataclass(frozen=True)
class Strategy:
  """The temperature, the truncations (applied in order, on the tempered logits) and greedy or sampled."""
  temperature: Temperature
  truncations: tuple[Truncation, ...]
  greedy: bool

  @classmethod
  def of(cls, cfg: SamplingConfig) -> Strategy:
    """The one composition of the options: temperature, then top-k, then top-p. Temperature 0 is greedy."""
    greedy = cfg.temperature == 0.0
    return cls(Temperature(1.0 if greedy else cfg.temperature), (TopK(cfg.top_k), TopP(cfg.top_p)), greedy)

  def truncates(self, vocab: int) -> bool:
    return any(t.active(vocab) for t in self.truncations)

  def truncate(self, logits: jax.Array) -> jax.Array:
    for t in self.truncations:
      logits = t(logits)
    return logits

  def logits(self, logits: jax.Array) -> jax.Array:
    """The logits of the distribution tokens are drawn from (greedy: at temperature 1)."""
    return self.truncate(self.temperature(logits))

  def choose(self, logits_bgv: jax.Array, keys_bg: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, G] int32, float32 log-probabilities [B, G] of the distribution they were drawn from). Row (b, g)
    draws with fold_in(keys_bg[b, g], t) alone, so its token depends on its own key and logits only."""
    filtered = self.logits(logits_bgv.astype(jnp.float32))
    logp = jax.nn.log_softmax(filtered, axis=-1)
    if self.greedy:
      tokens = jnp.argmax(filtered, axis=-1).astype(jnp.int32)
    else:
      tokens = jax.vmap(jax.vmap(lambda k, row: draw(jax.random.fold_in(k, t), row)))(keys_bg, filtered)
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
