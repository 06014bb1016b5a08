"""Online NLHF objectives on fixed samples (docs/math.md sections 4-5).

The train step samples first (outside any gradient), scores the pairs with the judge, and then differentiates one
of these surrogate losses with respect to the policy's per-token log-probabilities. Every function here takes
per-token log-probabilities [B, T] of the sampled responses and their masks; `policy_lp` carries the gradient,
everything else is treated as a constant.

Nash-MD-PG (policy gradient against the mixture opponent y' ~ pi^beta):
  g = grad log pi(y|x) * [P(y > y'|x) - 1/2 - tau * log(pi(y|x) / mu(y|x))]
The KL part splits over tokens; with `reward_to_go` each grad log pi(y_n|x, y_<n) is multiplied only by the
log-ratios of positions >= n (the terms before n have zero-mean score-function products). Both forms are
unbiased estimates of the gradient of P(pi > pi') - tau KL(pi || mu) with the opponent held fixed.

The losses nash_md_pg, rlhf_pg and ipo_pg are registered by name (objectives/registry.py) with the online
signature fn(lp, lp2, inputs, config.online).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nlhf_jax.objectives.registry import register_loss

sg = jax.lax.stop_gradient


def reverse_cumsum(x_bt: jax.Array) -> jax.Array:
  """out[:, n] = sum_{m >= n} x[:, m]."""
  return jnp.flip(jnp.cumsum(jnp.flip(x_bt, axis=1), axis=1), axis=1)


def kl_penalty_terms(policy_lp, ref_lp, mask, reward_to_go: bool) -> jax.Array:
  """Per-token multiplier of tau in the advantage: the log-ratio to go (or the whole sequence's), [B, T]."""
  log_ratio = sg(policy_lp - ref_lp) * mask
  if reward_to_go:
    return reverse_cumsum(log_ratio)
  return jnp.broadcast_to(log_ratio.sum(axis=1, keepdims=True), log_ratio.shape)


def policy_gradient_loss(policy_lp, ref_lp, mask, score, baseline, tau: float, reward_to_go: bool = True):
  """-(1/B) sum_b sum_n log pi(y_bn) * [score_b - baseline_b - tau * klterm_bn], with the bracket constant.

  score: P(y > y') (Nash-MD-PG) or r(x, y) (RLHF) [B]; baseline: a constant or [B] (no gradient flows through it).
  """
  mask = mask.astype(jnp.float32)
  advantage = sg(score - baseline)[:, None] - tau * kl_penalty_terms(policy_lp, ref_lp, mask, reward_to_go)
  return -jnp.mean(jnp.sum(policy_lp * advantage * mask, axis=1))


def nash_md_pg_loss(policy_lp, ref_lp, mask, preference, tau: float, reward_to_go: bool = True):
  """Nash-MD-PG (and its SP, BR and Nash-EMA configurations): score P(y > y'), baseline 1/2."""
  return policy_gradient_loss(policy_lp, ref_lp, mask, preference, 0.5, tau, reward_to_go)


def rlhf_pg_loss(policy_lp, ref_lp, mask, reward, baseline_reward, tau: float, reward_to_go: bool = True):
  """Regularised policy gradient on a reward: score r(x, y), baseline r(x, y'') of an independent sample."""
  return policy_gradient_loss(policy_lp, ref_lp, mask, reward, baseline_reward, tau, reward_to_go)


def ipo_loss(lp_a, ref_lp_a, mask_a, lp_b, ref_lp_b, mask_b, preference, tau: float):
  """Online IPO weighted by the judge: P (h - 1/(2 tau))^2 + (1 - P) (-h - 1/(2 tau))^2, with
  h = log(pi(a)/mu(a)) - log(pi(b)/mu(b)); its minimiser in the tabular case is the regularised Nash
  equilibrium (IPO paper, section 5). Both log-probabilities carry the gradient."""
  ratio = lambda lp, ref, m: jnp.sum((lp - ref) * m.astype(jnp.float32), axis=1)
  h = ratio(lp_a, ref_lp_a, mask_a) - ratio(lp_b, ref_lp_b, mask_b)
  target = 1.0 / (2.0 * tau)
  p = sg(preference)
  return jnp.mean(p * (h - target) ** 2 + (1.0 - p) * (-h - target) ** 2)


register_loss('nash_md_pg', 'online', lambda lp, lp2, inputs, o: nash_md_pg_loss(
    lp, inputs['ref_lp'], inputs['mask'], inputs['pref'], o.tau, o.reward_to_go))
register_loss('rlhf_pg', 'online', lambda lp, lp2, inputs, o: rlhf_pg_loss(
    lp, inputs['ref_lp'], inputs['mask'], inputs['reward'], inputs['baseline'], o.tau, o.reward_to_go))
register_loss('ipo_pg', 'online', lambda lp, lp2, inputs, o: ipo_loss(
    lp, inputs['ref_lp'], inputs['mask'], lp2, inputs['ref_lp2'], inputs['mask2'], inputs['pref'], o.tau))


def sample_statistics(policy_lp, ref_lp, mask, sample_lp=None) -> dict:
  """KL(pi || mu) estimate (mean sequence log-ratio), mean length and, when the sampler's own log-probabilities
  are given, the entropy estimate -E log pi(y)."""
  m = mask.astype(jnp.float32)
  out = {'kl': jnp.mean(jnp.sum(sg(policy_lp - ref_lp) * m, axis=1)), 'response_length': jnp.mean(m.sum(1))}
  if sample_lp is not None:
    out['entropy'] = -jnp.mean(jnp.sum(sample_lp * m, axis=1))
  return out
