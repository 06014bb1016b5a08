"""Tabular learning dynamics as pure JAX functions: Nash-MD and its baselines (docs/math.md section 3).

Every algorithm is one mirror-descent step on the regularised objective against some opponent payoff a_t:

    log pi_{t+1} = (1 - eta_t tau) log pi_t + eta_t tau log mu + eta_t a_t + const,

and the algorithms differ only in a_t (a vector over actions, per context):

- nash_md:       a_t = P(. > pi^mu_t), pi^mu_t ∝ pi_t^(1 - eta_t tau) mu^(eta_t tau)  (the geometric mixture);
- omd:           a_t = P(. > pi_t)  (online mirror descent: the opponent is the current policy);
- nash_ema:      a_t = P(. > pibar_t), pibar_t = beta pibar_{t-1} + (1 - beta) pi_t, pibar_0 = pi_0  (choice: the
                 arithmetic moving average, the first-order approximation of a geometric EMA mixture);
- self_play:     a_t = P(. > pi_t) with tau = 0 in the update (multiplicative weights on the unregularised game);
- best_response: a_t = P(. > mu)  (converges to argmax_pi P_tau(pi > mu) = softmax(log mu + P mu / tau));
- rlhf:          a_t = r, a fixed reward (a Bradley-Terry fit), converging to pi ∝ mu exp(r / tau).

A game here is `Tables(P [C, n, n], log_mu [C, n], rho [C])`. Unused (padding) actions have mu = 0, stored as the
finite log value NEG so that games of different sizes can be stacked and vmapped: padded actions keep probability 0.
The step loop is a lax.scan; the curves KL_rho(target, pi_t) and the exploitability e_tau(pi_t) are recorded for
t = 0..T. Precision follows the inputs: pass float64 arrays under `jax.enable_x64(True)` for exact checks.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30  # log of a zero probability (finite, so that 0 * NEG = 0 and padded actions stay at probability 0)

ALGORITHMS = ('nash_md', 'omd', 'nash_ema', 'self_play', 'best_response', 'rlhf')
SCHEDULES = ('theory', 'constant', 'inverse_sqrt')


class Tables(NamedTuple):
  """A contextual game as arrays: P [C, n, n], log mu [C, n] (NEG where mu = 0), rho [C]."""
  P: jax.Array
  log_mu: jax.Array
  rho: jax.Array


class Curves(NamedTuple):
  """kl[t] = KL_rho(target, pi_t) and exploitability[t] = e_tau(pi_t) for t = 0..T; log_pi: log pi_T [C, n]."""
  kl: jax.Array
  exploitability: jax.Array
  log_pi: jax.Array


def safe_log(p) -> np.ndarray:
  """log p with log 0 = NEG (numpy, float64)."""
  p = np.asarray(p, dtype=np.float64)
  with np.errstate(divide='ignore'):
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), NEG)


def tables(P, mu, rho=None, n: int | None = None) -> Tables:
  """float64 numpy arrays of a game (P [n, n] or [C, n, n], mu [n] or [C, n]), zero-padded to n actions (mu = 0
  there). JAX converts them on use: float64 under `jax.enable_x64(True)`, float32 otherwise."""
  P = np.asarray(P, dtype=np.float64)
  P = P[None] if P.ndim == 2 else P
  C, m = P.shape[0], P.shape[-1]
  mu = np.broadcast_to(np.asarray(mu, dtype=np.float64), (C, m))
  rho = np.full(C, 1.0 / C) if rho is None else np.asarray(rho, dtype=np.float64)
  n = m if n is None else n
  if n < m:
    raise ValueError(f'cannot pad {m} actions to {n}')
  Pp = np.full((C, n, n), 0.5)
  Pp[:, :m, :m] = P
  mup = np.zeros((C, n))
  mup[:, :m] = mu
  return Tables(Pp, safe_log(mup), rho)


def pad_policy(pi, n: int) -> np.ndarray:
  """A policy [m] or [C, m] padded with zeros to n actions, with a context axis."""
  pi = np.asarray(pi, dtype=np.float64)
  pi = pi[None] if pi.ndim == 1 else pi
  return np.concatenate([pi, np.zeros(pi.shape[:-1] + (n - pi.shape[-1],))], axis=-1)


def normalize(logits):
  """log softmax along the last axis."""
  return logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)


def action_preference(P, pi):
  """P(y > pi) per context: [C, n]."""
  return jnp.einsum('cij,cj->ci', P, pi)


def kl(log_p, log_q, rho):
  """KL_rho(p, q) = E_x sum_y p(y) (log p(y) - log q(y)), with 0 log 0 = 0."""
  p = jnp.exp(log_p)
  terms = jnp.where(p > 0, p * (log_p - log_q), 0.0)
  return jnp.sum(rho * terms.sum(-1))


def exploitability(game: Tables, log_pi, tau):
  """e_tau(pi) = E_x [tau log sum_y mu(y) exp(P(y > pi) / tau) + tau KL(pi, mu)] - 1/2 (docs/math.md section 2).

  tau must be positive here; for tau = 0 use exploitability0."""
  a = action_preference(game.P, jnp.exp(log_pi))
  lse = jax.scipy.special.logsumexp(game.log_mu + a / tau, axis=-1)
  return jnp.sum(game.rho * tau * lse) + tau * kl(log_pi, game.log_mu, game.rho) - 0.5


def exploitability0(game: Tables, log_pi):
  """Unregularised exploitability E_x max_{y : mu(y) > 0} P(y > pi) - 1/2."""
  a = action_preference(game.P, jnp.exp(log_pi))
  a = jnp.where(game.log_mu > NEG / 2, a, -jnp.inf)
  return jnp.sum(game.rho * a.max(-1)) - 0.5


def step_size(schedule: str, t, tau, eta):
  """eta_t: 'theory' 2 / (tau (t + 2)) (Theorem 1), 'constant' eta, 'inverse_sqrt' eta / sqrt(t + 1)."""
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  if schedule == 'theory':
    return 2.0 / (tau * (t + 2.0))
  if schedule == 'constant':
    return eta * jnp.ones_like(t)
  if schedule == 'inverse_sqrt':
    return eta / jnp.sqrt(t + 1.0)
  raise ValueError(f'unknown step-size schedule {schedule!r}; use one of {SCHEDULES}')


def geometric_mixture(log_pi, log_mu, weight):
  """log pi^mu ∝ (1 - weight) log pi + weight log mu (weight = eta tau for Nash-MD)."""
  return normalize((1.0 - weight) * log_pi + weight * log_mu)


def mirror_step(log_pi, log_mu, payoff, eta, tau):
  """log pi_{t+1} = normalize((1 - eta tau) log pi_t + eta tau log mu + eta payoff)."""
  return normalize((1.0 - eta * tau) * log_pi + eta * tau * log_mu + eta * payoff)


def _payoff(algorithm: str, game: Tables, log_pi, pibar, eta, tau, reward):
  if algorithm == 'nash_md':
    return action_preference(game.P, jnp.exp(geometric_mixture(log_pi, game.log_mu, eta * tau)))
  if algorithm in ('omd', 'self_play'):
    return action_preference(game.P, jnp.exp(log_pi))
  if algorithm == 'nash_ema':
    return action_preference(game.P, pibar)
  if algorithm == 'best_response':
    return action_preference(game.P, jnp.exp(game.log_mu))
  if algorithm == 'rlhf':
    return reward
  raise ValueError(f'unknown algorithm {algorithm!r}; use one of {ALGORITHMS}')


@functools.partial(jax.jit, static_argnames=('algorithm', 'num_steps', 'schedule', 'with_exploitability'))
def run(algorithm: str, game: Tables, tau, num_steps: int, target=None, *, schedule: str = 'theory', eta=0.1,
        beta=0.9, reward=None, log_pi0=None, with_exploitability: bool = True) -> Curves:
  """Runs `algorithm` for num_steps steps from pi_0 = mu (or exp(log_pi0)) and records its curves.

  tau: the regularisation of the game (used by the update, except by self_play, and by the exploitability).
  target: the policy whose KL_rho(target, pi_t) is recorded (pi*_tau, [C, n]); zeros are allowed. Without it the
  KL curve is KL_rho(mu, pi_t). reward: [C, n], required by 'rlhf'. beta: the Nash-EMA averaging weight.
  Pure and jittable; vmap it over games (and tau, target, reward) for batches.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f'unknown algorithm {algorithm!r}; use one of {ALGORITHMS}')
  if algorithm == 'rlhf' and reward is None:
    raise ValueError("'rlhf' needs reward=[C, n] (e.g. exact.bt_fit scores)")
  tau = jnp.asarray(tau, dtype=game.P.dtype)
  update_tau = jnp.zeros_like(tau) if algorithm == 'self_play' else tau
  if schedule == 'theory' and algorithm == 'self_play':
    raise ValueError("self_play has tau = 0 in its update: use schedule='constant' or 'inverse_sqrt'")
  log_pi = game.log_mu if log_pi0 is None else jnp.asarray(log_pi0, game.P.dtype)
  log_target = game.log_mu if target is None else jnp.log(jnp.asarray(target, game.P.dtype))

  def measure(log_pi):
    k = kl(log_target, log_pi, game.rho)
    e = exploitability(game, log_pi, tau) if with_exploitability else jnp.zeros_like(k)
    return k, e

  def body(carry, t):
    log_pi, pibar = carry
    eta_t = step_size(schedule, t, tau, eta)
    payoff = _payoff(algorithm, game, log_pi, pibar, eta_t, update_tau, reward)
    log_pi = mirror_step(log_pi, game.log_mu, payoff, eta_t, update_tau)
    pibar = beta * pibar + (1.0 - beta) * jnp.exp(log_pi)
    return (log_pi, pibar), measure(log_pi)

  k0, e0 = measure(log_pi)
  (log_pi, _), (ks, es) = jax.lax.scan(body, (log_pi, jnp.exp(log_pi)), jnp.arange(num_steps))
  return Curves(jnp.concatenate([k0[None], ks]), jnp.concatenate([e0[None], es]), log_pi)


def run_batch(algorithm: str, games: Tables, tau, num_steps: int, target=None, **kwargs) -> Curves:
  """`run` vmapped over a leading batch axis of games, tau [B] and target [B, C, n] (and reward if given)."""
  reward = kwargs.pop('reward', None)
  fn = lambda g, t, tg, r: run(algorithm, g, t, num_steps, tg, reward=r, **kwargs)
  axes = (0, 0, None if target is None else 0, None if reward is None else 0)
  return jax.vmap(fn, in_axes=axes)(games, tau, target, reward)


def stack(tables_list) -> Tables:
  """Stacks games of equal (padded) shape along a new leading axis (numpy)."""
  return Tables(*(np.stack([np.asarray(x) for x in xs]) for xs in zip(*tables_list)))


def rlhf_policy(log_mu, reward, tau):
  """The KL-regularised optimum of a reward: pi ∝ mu exp(r / tau) (log probabilities)."""
  return normalize(log_mu + reward / tau)
