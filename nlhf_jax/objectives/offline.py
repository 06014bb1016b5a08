"""Offline preference optimisation on a fixed data set of pairs: DPO and IPO (docs/math.md section 5).

A pairs batch (nlhf_jax/data/pipelines.py) holds a prompt x, two responses a and b and p = P(a > b) (1 or 0
for a hard label, anything in [0, 1] for a soft one). With the sequence log-ratios

    r(y) = log pi(y | x) - log mu(y | x)    (sums over the response's tokens; the token mean when length-normalised)
    h = r(a) - r(b),

the losses are

    dpo:  binary cross-entropy of sigmoid(tau h) against q = (1 - eps) p + eps (1 - p)
          (eps = label_smoothing: conservative DPO; eps = 0 and p = 1 give -log sigmoid(tau h)),
    ipo:  p (h - 1/(2 tau))^2 + (1 - p) (h + 1/(2 tau))^2
          (the expectation of IPO's (h(y_w, y_l) - 1/(2 tau))^2 over which response wins; its minimiser is
          h = (2p - 1) / (2 tau)); with length_normalized, r is the token mean ("length-normalised IPO").

mu is frozen: its log-probabilities of a and b are computed without a gradient (`with_reference`) and put in the
batch as `reference_logprob_a` / `_b` (sums) before the policy's pass. The metrics are named for what they are:
the implicit reward margin tau h, the implicit reward's preference accuracy (pairs whose label is not a tie) and
the log-ratios of the preferred and the other response. Both losses are registered by name
(objectives/registry.py) as per-pair losses of (h, p, config.offline); `make_loss` turns any such loss into the
training loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nlhf_jax.config.schema import OfflineConfig
from nlhf_jax.models.logprobs import response_logprobs
from nlhf_jax.objectives.pairwise import binary_cross_entropy
from nlhf_jax.objectives.registry import register_loss

LOSSES = ('dpo', 'ipo')  # the offline losses this module registers


def pair_logprobs(model, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(log pi(a | x), log pi(b | x)) [B] each, sums over the responses' tokens, from one pass over [a; b]."""
  prompt = jnp.concatenate([batch['prompt']] * 2, axis=0)
  prompt_mask = jnp.concatenate([batch['prompt_mask']] * 2, axis=0)
  response = jnp.concatenate([batch['response_a'], batch['response_b']], axis=0)
  response_mask = jnp.concatenate([batch['response_a_mask'], batch['response_b_mask']], axis=0)
  lp = response_logprobs(model, prompt, prompt_mask, response, response_mask).sum(axis=-1)
  return jnp.split(lp, 2)


def with_reference(reference_model, batch: dict) -> dict:
  """The batch with mu's log-probabilities of a and b (no gradient flows into mu)."""
  lp_a, lp_b = jax.lax.stop_gradient(pair_logprobs(reference_model, batch))
  return dict(batch, reference_logprob_a=lp_a, reference_logprob_b=lp_b)


def with_cached_reference(table: jax.Array, batch: dict) -> dict:
  """The batch with mu's log-probabilities of a and b read from `table` [N, 2] (one row per example of the split,
  computed once: trainer/reference_cache.py) by the batch's example_index."""
  rows = table[batch['example_index']]
  return dict(batch, reference_logprob_a=rows[:, 0], reference_logprob_b=rows[:, 1])


def margins(model, batch: dict, length_normalized: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(h, r(a), r(b)) [B] each, for a batch `with_reference`."""
  lp_a, lp_b = pair_logprobs(model, batch)
  r_a = lp_a - batch['reference_logprob_a']
  r_b = lp_b - batch['reference_logprob_b']
  if length_normalized:
    r_a = r_a / jnp.maximum(batch['response_a_mask'].sum(axis=-1), 1)
    r_b = r_b / jnp.maximum(batch['response_b_mask'].sum(axis=-1), 1)
  return r_a - r_b, r_a, r_b


def dpo_loss(h: jax.Array, p: jax.Array, tau: float, label_smoothing: float = 0.0) -> jax.Array:
  """[B]: the binary cross-entropy of sigmoid(tau h) against the smoothed label."""
  return binary_cross_entropy(tau * h, (1.0 - label_smoothing) * p + label_smoothing * (1.0 - p))


def ipo_loss(h: jax.Array, p: jax.Array, tau: float) -> jax.Array:
  """[B]: IPO's squared loss in expectation over the winner (p: P(a > b))."""
  target = 0.5 / tau
  return p * (h - target) ** 2 + (1.0 - p) * (h + target) ** 2


register_loss('dpo', 'offline', lambda h, p, o: dpo_loss(h, p, o.tau, o.label_smoothing))
register_loss('ipo', 'offline', lambda h, p, o: ipo_loss(h, p, o.tau))


def make_loss(per_pair, o: OfflineConfig):
  """loss_fn(model, batch, rng) -> (loss, metrics) for nlhf_jax/training/steps.py, on a batch `with_reference`:
  the mean over the pairs of `per_pair(h, p, o)` (a registered offline loss) and the implicit reward's metrics."""
  tau = o.tau

  def loss_fn(model, batch: dict, rng: jax.Array):
    del rng
    p = batch['preference'].astype(jnp.float32)
    h, r_a, r_b = margins(model, batch, o.length_normalized)
    per_pair_loss = per_pair(h, p, o)
    a_preferred = p >= 0.5
    decided = (p != 0.5).astype(jnp.float32)
    correct = ((h > 0) == (p > 0.5)).astype(jnp.float32) * decided
    metrics = {'implicit_reward_margin': (tau * h).mean(),
               'implicit_accuracy': correct.sum() / jnp.maximum(decided.sum(), 1.0),
               'logratio_preferred': jnp.where(a_preferred, r_a, r_b).mean(),
               'logratio_other': jnp.where(a_preferred, r_b, r_a).mean()}
    return per_pair_loss.mean(), metrics

  return loss_fn
