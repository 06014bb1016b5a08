"""The losses of the successors of Nash-MD (docs/math.md section 8), on fixed samples.

Every tabular update of INPO, COMAL and MPO is a mirror step from pi_t, the policy of the iteration,

  log pi_{t+1}(y) = a log pi_t(y) + b log ref(y) + c P(y > pi_t) + const,

with (a, b, c) = (1 - eta tau, eta tau, eta) and ref = mu for INPO (COMAL: ref = its prox centre), and
(1, eta tau, eta) / (1 + eta tau) with ref = the magnet for MPO. Its deep form is a squared loss on pairs
y, y' ~ pi_t judged P = P(y > y'): with h = Delta log pi - a Delta log pi_t - b Delta log ref (Delta: y minus y'),

  loss = P (h - c/2)^2 + (1 - P) (-h - c/2)^2,

whose minimiser over all policies is the mirror step (the least-squares fit of c (P(y > y') - 1/2) by a
difference v(y) - v(y') under y, y' ~ pi_t is v = c P(. > pi_t) + const). Only log pi carries the gradient.

SPPO: E_{y ~ pi_t} (log(pi(y) / pi_t(y)) - eta (P(y > pi_t) - 1/2))^2, with P(y > pi_t) estimated by the mean
judgement of y against the K - 1 other samples of its prompt (unbiased; the loss is linear in it, so the gradient
estimate is unbiased too).

Extragradient (EGPO): the optimizer's update of the gradient at theta_t gives the half step theta_{t+1/2} (its
optimizer state is dropped), then the update of the gradient taken at theta_{t+1/2} is applied from theta_t.

The losses mirror_pairs (INPO's step), magnetic_pairs (MPO's) and sppo are registered by name
(objectives/registry.py) with the online signature fn(lp, lp2, inputs, config.online).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nlhf_jax.objectives.registry import register_loss

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class MirrorStep:
  """log pi_{t+1} = anchor log pi_t + reference log ref + scale P(y > pi_t) + const."""
  anchor: float
  reference: float
  scale: float


def inpo_step(eta: float, tau: float) -> MirrorStep:
  """INPO's (and COMAL's inner) step: online mirror descent on the game regularised by tau towards ref."""
  return MirrorStep(1.0 - eta * tau, eta * tau, eta)


def magnetic_step(eta: float, tau: float) -> MirrorStep:
  """MPO's magnetic mirror descent step: argmax eta P(pi > pi_t) - eta tau KL(pi, magnet) - KL(pi, pi_t)."""
  return MirrorStep(1.0 / (1.0 + eta * tau), eta * tau / (1.0 + eta * tau), eta / (1.0 + eta * tau))


def sequence_logprob(lp, mask) -> jax.Array:
  """sum_n lp[:, n] over the response's tokens: [B]."""
  return jnp.sum(lp * mask.astype(jnp.float32), axis=1)


def mirror_pair_loss(step: MirrorStep, lp_a, anchor_a, ref_a, mask_a, lp_b, anchor_b, ref_b, mask_b, preference):
  """The squared loss whose minimiser is `step`, on pairs (a, b) ~ pi_t with P(a > b) = preference [B].

  lp_*: log pi (carry the gradient), anchor_*: log pi_t, ref_*: log ref, all per token [B, T]."""
  def part(lp, anchor, ref, mask):
    return sequence_logprob(lp - step.anchor * sg(anchor) - step.reference * sg(ref), mask)
  h = part(lp_a, anchor_a, ref_a, mask_a) - part(lp_b, anchor_b, ref_b, mask_b)
  target = 0.5 * step.scale
  p = sg(preference)
  return jnp.mean(p * (h - target) ** 2 + (1.0 - p) * (-h - target) ** 2)


def sppo_loss(lp, anchor_lp, mask, win_rate, eta: float):
  """mean_b (log(pi(y_b) / pi_t(y_b)) - eta (win_rate_b - 1/2))^2; y_b ~ pi_t, win_rate_b estimates P(y_b > pi_t)."""
  ratio = sequence_logprob(lp - sg(anchor_lp), mask)
  return jnp.mean((ratio - eta * (sg(win_rate) - 0.5)) ** 2)


def _mirror_pairs(make_step: Callable[[float, float], MirrorStep]):
  """The online loss of the mirror step make_step(eta, tau) on pairs y, y' ~ pi_t, whose KL reference (mu, the
  prox centre or the magnet) is inputs['kl_ref_lp'] and inputs['kl_ref_lp2']."""
  def loss(lp, lp2, inputs, o):
    return mirror_pair_loss(make_step(o.eta, o.tau), lp, inputs['anchor_lp'], inputs['kl_ref_lp'], inputs['mask'],
                            lp2, inputs['anchor_lp2'], inputs['kl_ref_lp2'], inputs['mask2'], inputs['pref'])
  return loss


register_loss('mirror_pairs', 'online', _mirror_pairs(inpo_step))
register_loss('magnetic_pairs', 'online', _mirror_pairs(magnetic_step))
register_loss('sppo', 'online', lambda lp, lp2, inputs, o: sppo_loss(lp, inputs['anchor_lp'], inputs['mask'],
                                                                     inputs['pref'], o.eta))


def pair_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, second): the k (k - 1) / 2 unordered pairs j < l of k samples."""
  first, second = np.triu_indices(k, 1)
  return first.astype(np.int32), second.astype(np.int32)


def win_rates(pairs: jax.Array, k: int) -> jax.Array:
  """pairs [B, k (k - 1) / 2]: P(y_j > y_l) for the pairs of `pair_indices(k)`; returns [B, k], the mean judgement
  of each sample against the k - 1 others (P(y_l > y_j) = 1 - P(y_j > y_l))."""
  first, second = pair_indices(k)
  wins = jnp.zeros(pairs.shape[:1] + (k, k), pairs.dtype)
  wins = wins.at[:, first, second].set(pairs).at[:, second, first].set(1.0 - pairs)
  return wins.sum(-1) / (k - 1)


GradAt = Callable[[Any, int], tuple[Any, Any]]


def extragradient_update(tx: optax.GradientTransformation, params, opt_state, grad_at: GradAt):
  """(params, opt_state, aux) after one extragradient step: grad_at(params, 0) gives the gradient at theta_t,
  whose update (from a copy of the optimizer state) makes theta_{t+1/2}; grad_at(half, 1) -> (grads, aux) gives
  the gradient at theta_{t+1/2}, whose update is applied from theta_t with the optimizer state."""
  grads0, _ = grad_at(params, 0)
  half_updates, _ = tx.update(grads0, opt_state, params)
  half = optax.apply_updates(params, half_updates)
  grads, aux = grad_at(half, 1)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, aux
