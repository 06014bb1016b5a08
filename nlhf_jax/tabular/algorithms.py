"""Tabular learning dynamics as pure JAX functions: Nash-MD, its baselines and its successors (docs/math.md
sections 3 and 8).

Most algorithms are one mirror-descent step on the regularised objective against some opponent payoff a_t:

    log pi_{t+1} = (1 - eta_t tau) log pi_t + eta_t tau log mu + eta_t a_t + const,

and differ only in a_t (a vector over actions, per context):

- nash_md:       a_t = P(. > pi^mu_t), pi^mu_t ∝ pi_t^(1 - eta_t tau) mu^(eta_t tau)  (the geometric mixture);
- omd:           a_t = P(. > pi_t)  (online mirror descent: the opponent is the current policy);
- nash_ema:      a_t = P(. > pibar_t), pibar_t = beta pibar_{t-1} + (1 - beta) pi_t, pibar_0 = pi_0  (choice: the
                 arithmetic moving average, the first-order approximation of a geometric EMA mixture);
- self_play:     a_t = P(. > pi_t) with tau = 0 in the update (multiplicative weights on the unregularised game);
- best_response: a_t = P(. > mu)  (converges to argmax_pi P_tau(pi > mu) = softmax(log mu + P mu / tau));
- rlhf:          a_t = r, a fixed reward (a Bradley-Terry fit), converging to pi ∝ mu exp(r / tau).

The successors of Nash-MD (docs/math.md section 8; each update is the exact, full-information one of its paper):

- inpo:          INPO (Zhang et al., arXiv 2407.00617): online mirror descent on the regularised game,
                 a_t = P(. > pi_t) with a constant step (INPO's 1/eta is eta here); its squared loss on pairs from
                 pi_t is minimised by this update. The same update as omd, under its paper's name and step size.
- sppo:          SPPO (Wu et al., arXiv 2405.00675): pi_{t+1} ∝ pi_t exp(eta P(. > pi_t)) (Hedge, tau = 0); its
                 guarantee is for the average iterate. The same update as self_play.
- extragradient: EGPO (Zhou et al., arXiv 2503.08942): a half step pi_{t+1/2} = the omd step from pi_t, then the
                 step from pi_t with a_t = P(. > pi_{t+1/2}); linear last-iterate convergence to pi*_tau.
- comal:         COMAL (Liu et al., arXiv 2410.23223): INPO's step towards a reference pi_ref (prox_tau in place of
                 tau) that starts at mu and is reset to the current policy every prox_steps steps (a prox-point
                 outer loop); its last iterate converges to an equilibrium of the unregularised game.
- mpo:           MPO (Wang et al., arXiv 2410.16714): magnetic mirror descent,
                 log pi_{t+1} = (log pi_t + eta prox_tau log magnet + eta P(. > pi_t)) / (1 + eta prox_tau) + const,
                 the magnet starting at mu and reset to the current policy every prox_steps steps; last-iterate
                 convergence to an equilibrium of the unregularised game.

Sources of these five updates: the papers' abstracts and the update rules they state (INPO's online mirror descent
and pair loss, SPPO's Hedge step, COMAL's prox-point loop over INPO, MPO's magnetic mirror descent with a moving
magnet), and EGPO's public tabular code for its two steps; their full texts were not at hand, so the constants of
their theorems are not restated here. What the tests check is derived independently: the closed forms, INPO's loss
minimiser, Hedge's regret bound, the extragradient rate of Cen, Wei and Chi for entropy-regularised games, and
the last iterates of COMAL and MPO at the unregularised equilibrium (docs/math.md section 8).

A game here is `Tables(P [C, n, n], log_mu [C, n], rho [C])`. Unused (padding) actions have mu = 0, stored as the
finite log value NEG so that games of different sizes can be stacked and vmapped: padded actions keep probability 0.
The step loop is a lax.scan; the curves KL_rho(target, pi_t), the exploitability e_tau(pi_t), KL_rho(pi*, pi_t)
and e_0(pi_t) are recorded for t = 0..T, and with `with_average` the same four for the average iterate.
Precision follows the inputs: pass float64 arrays under `jax.enable_x64(True)` for exact checks.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e30  # log of a zero probability (finite, so that 0 * NEG = 0 and padded actions stay at probability 0)

BASELINES = ('nash_md', 'omd', 'nash_ema', 'self_play', 'best_response', 'rlhf')
SUCCESSORS = ('inpo', 'comal', 'sppo', 'extragradient', 'mpo')
ALGORITHMS = BASELINES + SUCCESSORS
UNREGULARISED = ('self_play', 'sppo')  # tau = 0 in the update
PROXIMAL = ('comal', 'mpo')  # a KL term towards a moving reference, of weight prox_tau
CONSTANT_STEP = ('self_play', 'inpo', 'comal', 'sppo', 'extragradient', 'mpo')  # analysed with a constant step
SCHEDULES = ('theory', 'constant', 'inverse_sqrt')


class Tables(NamedTuple):
  """A contextual game as arrays: P [C, n, n], log mu [C, n] (NEG where mu = 0), rho [C]."""
  P: jax.Array
  log_mu: jax.Array
  rho: jax.Array


class Curves(NamedTuple):
  """The curves of one run, for t = 0..T.

  kl[t] = KL_rho(target, pi_t), exploitability[t] = e_tau(pi_t), kl0[t] = KL_rho(pi*, pi_t) (zeros without
  target0), exploitability0[t] = e_0(pi_t); log_pi: log pi_T [C, n]. With `with_average`, avg_kl, avg_exploitability,
  avg_kl0, avg_exploitability0 are the same for the average iterate pibar_t, and log_avg = log pibar_T (else None).
  """
  kl: jax.Array
  exploitability: jax.Array
  log_pi: jax.Array
  kl0: jax.Array | None = None
  exploitability0: jax.Array | None = None
  avg_kl: jax.Array | None = None
  avg_exploitability: jax.Array | None = None
  avg_kl0: jax.Array | None = None
  avg_exploitability0: jax.Array | None = None
  log_avg: jax.Array | None = None


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


def magnetic_step(log_pi, log_magnet, payoff, eta, tau):
  """Magnetic mirror descent: argmax_pi eta <pi, payoff> - eta tau KL(pi, magnet) - KL(pi, pi_t), i.e.
  log pi_{t+1} = normalize((log pi_t + eta tau log magnet + eta payoff) / (1 + eta tau))."""
  return normalize((log_pi + eta * tau * log_magnet + eta * payoff) / (1.0 + eta * tau))


def _payoff(algorithm: str, game: Tables, log_pi, pibar, eta, tau, reward):
  if algorithm == 'nash_md':
    return action_preference(game.P, jnp.exp(geometric_mixture(log_pi, game.log_mu, eta * tau)))
  if algorithm in ('omd', 'self_play', 'inpo', 'sppo'):
    return action_preference(game.P, jnp.exp(log_pi))
  if algorithm == 'nash_ema':
    return action_preference(game.P, pibar)
  if algorithm == 'best_response':
    return action_preference(game.P, jnp.exp(game.log_mu))
  if algorithm == 'rlhf':
    return reward
  raise ValueError(f'unknown algorithm {algorithm!r}; use one of {ALGORITHMS}')


def step(algorithm: str, game: Tables, log_pi, log_ref, pibar, eta, tau, reward=None):
  """One step of `algorithm` from log pi_t: returns log pi_{t+1}.

  log_ref: the reference of the KL term: log mu, except for comal and mpo, whose reference (the prox centre, the
  magnet) moves. tau: the weight of that KL term in the update (0 for self_play and sppo; prox_tau for comal and
  mpo). pibar: the Nash-EMA average. The reference resets of comal and mpo happen in `run`, not here.
  """
  if algorithm == 'extragradient':
    half = mirror_step(log_pi, log_ref, action_preference(game.P, jnp.exp(log_pi)), eta, tau)
    return mirror_step(log_pi, log_ref, action_preference(game.P, jnp.exp(half)), eta, tau)
  if algorithm == 'comal':
    return mirror_step(log_pi, log_ref, action_preference(game.P, jnp.exp(log_pi)), eta, tau)
  if algorithm == 'mpo':
    return magnetic_step(log_pi, log_ref, action_preference(game.P, jnp.exp(log_pi)), eta, tau)
  return mirror_step(log_pi, log_ref, _payoff(algorithm, game, log_pi, pibar, eta, tau, reward), eta, tau)


def log_prob(p):
  """log p with log 0 = NEG (JAX): zero probabilities stay exactly zero through exp."""
  return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), NEG)


def run(algorithm: str, game: Tables, tau, num_steps: int, target=None, *, schedule: str = 'theory', eta=0.1,
        beta=0.9, reward=None, log_pi0=None, with_exploitability: bool = True, target0=None,
        with_average: bool = False, prox_tau=0.1, prox_steps: int = 100) -> Curves:
  """Runs `algorithm` for num_steps steps from pi_0 = mu (or exp(log_pi0)) and records its curves.

  tau: the regularisation of the game (used by the update, except by self_play, sppo, comal and mpo, and by the
  exploitability e_tau). target: the policy whose KL_rho(target, pi_t) is recorded (pi*_tau, [C, n]); zeros are
  allowed. Without it the KL curve is KL_rho(mu, pi_t). target0: an unregularised equilibrium pi* [C, n], recorded
  as kl0 = KL_rho(pi*, pi_t) (zeros without it); exploitability0 = e_0(pi_t) is recorded with the exploitability.
  with_average: also records the four curves of the average iterate pibar_t = (1/t) sum_{s<t} pi_s (pibar_0 = pi_0),
  the mean of the policies played in the first t rounds. reward: [C, n], required by 'rlhf'. beta: the Nash-EMA
  averaging weight. prox_tau, prox_steps: comal's and mpo's KL weight towards their reference and the number of
  steps K between two resets of the reference to the current policy (the reference starts at mu).
  Pure and jittable (the arguments are checked here, the loop is compiled once per algorithm, num_steps, schedule
  and flags); vmap it over games (and tau, target, reward, target0) for batches.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f'unknown algorithm {algorithm!r}; use one of {ALGORITHMS}')
  if algorithm == 'rlhf' and reward is None:
    raise ValueError("'rlhf' needs reward=[C, n] (e.g. exact.bt_fit scores)")
  if schedule == 'theory' and algorithm in UNREGULARISED:
    raise ValueError(f"{algorithm} has tau = 0 in its update: use schedule='constant' or 'inverse_sqrt'")
  if isinstance(prox_steps, (int, np.integer)) and prox_steps < 1:
    raise ValueError(f'prox_steps={prox_steps}: the reference of comal and mpo resets every prox_steps >= 1 steps')
  return _run(algorithm, game, tau, num_steps, target, schedule=schedule, eta=eta, beta=beta, reward=reward,
              log_pi0=log_pi0, with_exploitability=with_exploitability, target0=target0, with_average=with_average,
              prox_tau=prox_tau, prox_steps=prox_steps)


@functools.partial(jax.jit, static_argnames=('algorithm', 'num_steps', 'schedule', 'with_exploitability',
                                             'with_average'))
def _run(algorithm, game, tau, num_steps, target, *, schedule, eta, beta, reward, log_pi0, with_exploitability,
         target0, with_average, prox_tau, prox_steps) -> Curves:
  tau = jnp.asarray(tau, dtype=game.P.dtype)
  if algorithm in UNREGULARISED:
    update_tau = jnp.zeros_like(tau)
  elif algorithm in PROXIMAL:
    update_tau = jnp.asarray(prox_tau, dtype=game.P.dtype) * jnp.ones_like(tau)
  else:
    update_tau = tau
  log_pi = game.log_mu if log_pi0 is None else jnp.asarray(log_pi0, game.P.dtype)
  log_target = game.log_mu if target is None else jnp.log(jnp.asarray(target, game.P.dtype))
  log_target0 = None if target0 is None else jnp.log(jnp.asarray(target0, game.P.dtype))

  def measure(log_pi):
    k = kl(log_target, log_pi, game.rho)
    zero = jnp.zeros_like(k)
    k0 = zero if log_target0 is None else kl(log_target0, log_pi, game.rho)
    if not with_exploitability:
      return k, zero, k0, zero
    return k, exploitability(game, log_pi, tau), k0, exploitability0(game, log_pi)

  def body(carry, t):
    log_pi, log_ref, pibar, total = carry
    eta_t = step_size(schedule, t, update_tau, eta)
    total = total + jnp.exp(log_pi)  # the sum of pi_0..pi_t, the policies played so far
    new = step(algorithm, game, log_pi, log_ref, pibar, eta_t, update_tau, reward)
    if algorithm in PROXIMAL:
      log_ref = jnp.where((t + 1) % prox_steps == 0, new, log_ref)
    pibar = beta * pibar + (1.0 - beta) * jnp.exp(new)
    out = measure(new)
    if with_average:
      out = out + measure(log_prob(total / (t + 1.0)))
    return (new, log_ref, pibar, total), out

  first = measure(log_pi)
  if with_average:
    first = first + first
  carry0 = (log_pi, game.log_mu, jnp.exp(log_pi), jnp.zeros_like(log_pi))
  (log_pi, _, _, total), rest = jax.lax.scan(body, carry0, jnp.arange(num_steps))
  curves = [jnp.concatenate([a[None], b]) for a, b in zip(first, rest)]
  k, e, k0, e0 = curves[:4]
  if not with_average:
    return Curves(k, e, log_pi, k0, e0)
  return Curves(k, e, log_pi, k0, e0, *curves[4:], log_prob(total / num_steps))


def run_batch(algorithm: str, games: Tables, tau, num_steps: int, target=None, **kwargs) -> Curves:
  """`run` vmapped over a leading batch axis of games, tau [B] and target [B, C, n] (and reward, target0 if given)."""
  reward = kwargs.pop('reward', None)
  target0 = kwargs.pop('target0', None)
  fn = lambda g, t, tg, r, t0: run(algorithm, g, t, num_steps, tg, reward=r, target0=t0, **kwargs)
  axes = (0, 0) + tuple(None if x is None else 0 for x in (target, reward, target0))
  return jax.vmap(fn, in_axes=axes)(games, tau, target, reward, target0)


def stack(tables_list) -> Tables:
  """Stacks games of equal (padded) shape along a new leading axis (numpy)."""
  return Tables(*(np.stack([np.asarray(x) for x in xs]) for xs in zip(*tables_list)))


def rlhf_policy(log_mu, reward, tau):
  """The KL-regularised optimum of a reward: pi ∝ mu exp(r / tau) (log probabilities)."""
  return normalize(log_mu + reward / tau)
