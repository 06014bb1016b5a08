"""Models that judge responses: the pairwise preference model and the Bradley-Terry reward model.

Both read text in the segment layout of the data pipeline: a LEFT-padded prompt ([bos] prompt [sep]) followed
by RIGHT-padded responses (response [eos]). Segments are concatenated with their padding left in place; the
padding is masked out of attention and the positions count real tokens only, so the result equals that of the
packed sequence.

Preference model (docs/math.md section 1): a backbone reads the joint text x, y, y' and a linear head gives a
score g(x, y, y'). The preference logit is f(x, y, y') = g(x, y, y') - g(x, y', y), antisymmetric by construction,
so P(y > y' | x) = sigmoid(f) satisfies P(y > y') + P(y' > y) = 1 and P(y > y) = 1/2 exactly, whatever the
parameters. Both orders are scored in one forward pass of a 2B batch.

Reward model: the same backbone with a scalar head on x, y; P(y > y') = sigmoid(r(x, y) - r(x, y')).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models.layers import param
from nlhf_jax.models.transformer import Transformer


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

  def read_out(self, tokens_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """float32 [B]."""
    h, _ = self.backbone.hidden(tokens_bt, mask_bt)
    last = jnp.take_along_axis(h, last_real_index(mask_bt)[:, None, None], axis=1)[:, 0]
    return (last.astype(jnp.float32) @ self.head[...]) + self.bias[...]


class PreferenceModel(ScalarHead):
  """Pairwise preference model: logit f(x, y, y') with f(x, y, y') = -f(x, y', y) exactly."""

  def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask) -> jax.Array:
    x, a, b = (prompt, prompt_mask), (response_a, response_a_mask), (response_b, response_b_mask)
    ab, ab_mask = concat_segments(x, a, b)
    ba, ba_mask = concat_segments(x, b, a)
    g = self.read_out(jnp.concatenate([ab, ba], axis=0), jnp.concatenate([ab_mask, ba_mask], axis=0))
    g_ab, g_ba = jnp.split(g, 2, axis=0)
    return g_ab - g_ba

  def __call__(self, batch: dict) -> jax.Array:
    """The preference logit of a pairs batch (see nlhf_jax/data/pipelines.py)."""
    return self.logit(batch['prompt'], batch['prompt_mask'], batch['response_a'], batch['response_a_mask'],
                      batch['response_b'], batch['response_b_mask'])


class RewardModel(ScalarHead):
  """Bradley-Terry reward model: r(x, y); the pair logit is r(x, a) - r(x, b)."""

  def reward(self, prompt, prompt_mask, response, response_mask) -> jax.Array:
    return self.read_out(*concat_segments((prompt, prompt_mask), (response, response_mask)))

  def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask) -> jax.Array:
    # One forward pass over both responses (a 2B batch).
    both = lambda u, v: jnp.concatenate([u, v], axis=0)
    r = self.reward(both(prompt, prompt), both(prompt_mask, prompt_mask), both(response_a, response_b),
                    both(response_a_mask, response_b_mask))
    r_a, r_b = jnp.split(r, 2, axis=0)
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
