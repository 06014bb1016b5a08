"""Models that judge responses: the pairwise preference model and the Bradley-Terry reward model.

Both read text in the segment layout of the data pipeline: a LEFT-padded prompt ([bos] prompt [sep]) followed
by RIGHT-padded responses (response [eos]). Segments are concatenated with their padding left in place; the
padding is masked out of attention and the positions count real tokens only, so the result equals that of the
packed sequence.

Preference model (docs/math.md section 1): a backbone reads the joint text x, y, y' and a linear head gives a
score g(x, y, y'). The preference logit is f(x, y, y') = g(x, y, y') - g(x, y', y), antisymmetric by construction,
so P(y > y' | x) = sigmoid(f) satisfies P(y > y') + P(y' > y) = 1 and P(y > y) = 1/2, whatever the parameters.
Exactly, not to rounding: the two orders are scored by one computation on the same B rows, taken in turn (a
`lax.map` over the orders), so swapping y and y' swaps two bitwise-equal scores: f(x, y', y) == -f(x, y, y') and
f(x, y, y) == 0 bitwise, and P(y > y') + P(y' > y) = 1 to one float32 rounding of the sigmoid.

Reward model: the same backbone with a scalar head on x, y; P(y > y') = sigmoid(r(x, y) - r(x, y')).

Scoring a pair reads the prompt once: the backbone runs over the prompt into a KV cache, which every
continuation of that prompt (y and y' for the reward model; y y' and y' y for the preference model) then
extends, one after the other. The result is that of the full joint sequences (the same positions, masks and
keys), at the cost of one prompt pass instead of two: the saving that matters with long prompts (a summarised
post) and short responses.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models.layers import param
from nlhf_jax.models.transformer import Transformer, init_cache


def concat_segments(*segments: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """[(tokens [B, Ti], mask [B, Ti]), ...] -> tokens [B, sum Ti], mask [B, sum Ti]."""
  return (jnp.concatenate([t for t, _ in segments], axis=1), jnp.concatenate([m for _, m in segments], axis=1))


def last_real_index(mask_bt: jax.Array) -> jax.Array:
  """Index of the last real token of each row, int32 [B] (0 for an empty row)."""
  t = mask_bt.shape[1]
  idx = jnp.where(mask_bt, jnp.arange(t, dtype=jnp.int32)[None, :], -1)
  return jnp.maximum(jnp.max(idx, axis=1), 0)


class ScalarHead(nnx.Module):
  """A backbone and a linear read-out of the final hidden state at the last real token."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.backbone = Transformer(cfg, rngs)
    self.head = param(rngs, (cfg.d_model,), ('embed',), jax.nn.initializers.zeros)
    self.bias = param(rngs, (), (), jax.nn.initializers.zeros)

  def _head(self, h_btd: jax.Array, index_b: jax.Array) -> jax.Array:
    last = jnp.take_along_axis(h_btd, index_b[:, None, None], axis=1)[:, 0]
    return (last.astype(jnp.float32) @ self.head[...]) + self.bias[...]

  def read_out(self, tokens_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """float32 [B]: the head on the last real token of each row."""
    h, _ = self.backbone.hidden(tokens_bt, mask_bt)
    return self._head(h, last_real_index(mask_bt))

  def read_out_continuations(self, prefix: tuple[jax.Array, jax.Array],
                             continuations: list[tuple[jax.Array, jax.Array]]) -> list[jax.Array]:
    """read_out of [prefix, c] for every continuation c (each [B, Tc] with its mask, every row non-empty, all of
    one width), reading the prefix once: it is run into a KV cache that each continuation then extends.

    The continuations take turns through one `lax.map` body over B rows, so every continuation is scored by the
    same computation at the same row: equal inputs give bitwise equal scores, whichever turn they come in (what
    makes the preference model's antisymmetry exact rather than true to rounding)."""
    prompt, prompt_mask = prefix
    b, lp = prompt.shape
    tokens = jnp.stack([t for t, _ in continuations])  # [K, B, Tc]
    mask = jnp.stack([m for _, m in continuations])
    cfg = self.backbone.cfg
    cache = init_cache(cfg, b, lp + tokens.shape[2], self.backbone.compute_dtype)
    cache['mask'] = jnp.concatenate([prompt_mask, jnp.zeros_like(mask[0])], axis=1)
    positions = jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1) - 1, 0)
    _, cache = self.backbone.hidden(prompt, prompt_mask, positions, cache, 0, span=lp)  # nothing beyond it yet
    start = prompt_mask.sum(axis=1).astype(jnp.int32)
    backbone = nnx.split(self.backbone)  # merged inside the body: a module of the loop's own trace

    def extend(continuation):
      c_tokens, c_mask = continuation
      c_cache = dict(cache, mask=jnp.concatenate([cache['mask'][:, :lp], c_mask], axis=1))
      c_positions = start[:, None] + jnp.maximum(jnp.cumsum(c_mask.astype(jnp.int32), axis=1) - 1, 0)
      h, _ = nnx.merge(*backbone).hidden(c_tokens, c_mask, c_positions, c_cache, lp)
      return self._head(h, last_real_index(c_mask))

    return list(jax.lax.map(extend, (tokens, mask)))


class PreferenceModel(ScalarHead):
  """Pairwise preference model: logit f(x, y, y') with f(x, y, y') = -f(x, y', y) exactly."""

  def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask) -> jax.Array:
    a, b = (response_a, response_a_mask), (response_b, response_b_mask)
    g_ab, g_ba = self.read_out_continuations((prompt, prompt_mask), [concat_segments(a, b), concat_segments(b, a)])
    return g_ab - g_ba

  def __call__(self, batch: dict) -> jax.Array:
    """The preference logit of a pairs batch (see nlhf_jax/data/pipelines.py)."""
    return self.logit(batch['prompt'], batch['prompt_mask'], batch['response_a'], batch['response_a_mask'],
                      batch['response_b'], batch['response_b_mask'])


class RewardModel(ScalarHead):
  """Bradley-Terry reward model: r(x, y); the pair logit is r(x, a) - r(x, b)."""

  def reward(self, prompt, prompt_mask, response, response_mask) -> jax.Array:
    return self.read_out(*concat_segments((prompt, prompt_mask), (response, response_mask)))

  def rewards(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
              ) -> tuple[jax.Array, jax.Array]:
    """(r(x, a), r(x, b)) with the prompt read once."""
    r_a, r_b = self.read_out_continuations((prompt, prompt_mask), [(response_a, response_a_mask),
                                                                   (response_b, response_b_mask)])
    return r_a, r_b

  def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask) -> jax.Array:
    r_a, r_b = self.rewards(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask)
    return r_a - r_b

  def __call__(self, batch: dict) -> jax.Array:
    return self.logit(batch['prompt'], batch['prompt_mask'], batch['response_a'], batch['response_a_mask'],
                      batch['response_b'], batch['response_b_mask'])


def pair_scorer(graphdef: nnx.GraphDef):
  """`score_pairs(params, prompts, responses_a, responses_b) -> P(a > b | x)`, float32 [B], for the model
  (preference or reward model) that `graphdef` describes; each text argument is a (tokens, mask) pair.

  Pure and jittable; with sharded params and batch it runs sharded (the batch over the data axes, the backbone
  by the rule table). Online training judges sampled pairs through it (nlhf_jax/online/judges.py).
  """
  def score_pairs(params, prompts, responses_a, responses_b) -> jax.Array:
    return jax.nn.sigmoid(nnx.merge(graphdef, params).logit(*prompts, *responses_a, *responses_b))
  return score_pairs


def reward_scorer(graphdef: nnx.GraphDef):
  """`score(params, prompts, responses) -> r(x, y)`, float32 [B], for a RewardModel's graphdef; pure and
  jittable like `pair_scorer`."""
  def score(params, prompts, responses) -> jax.Array:
    return nnx.merge(graphdef, params).reward(*prompts, *responses)
  return score
