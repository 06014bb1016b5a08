"""Offline IPO and DPO on small bandits: the two-action and three-action examples of the IPO paper.

A tabular policy pi = softmax(z) over n actions is fitted to a dataset of (winner, loser) pairs with counts
(docs/math.md section 5):

    h(y_w, y_l) = log(pi(y_w) / pi_ref(y_w)) - log(pi(y_l) / pi_ref(y_l)),
    DPO: L = -E log sigmoid(tau h),        IPO: L = E (h - 1 / (2 tau))^2.

With u = z - log pi_ref, h = u_w - u_l, so the IPO optimum is a least-squares problem on the comparison graph
(`ipo_optimum`, exact). Two actions with D = {(y1, y2)}: pi(y1) = sigmoid(0.5 / tau) under a uniform pi_ref.
Three actions with the total order D = {(y1, y2), (y2, y3), (y1, y3)}: u = (4c/3, 2c/3, 0) with c = 1/(2 tau).
DPO's loss has no minimiser when some action never loses (h -> infinity lowers it): gradient descent drives
pi to a deterministic policy whatever tau is; `fit` shows it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TWO_ACTIONS = ((0, 1),)  # y1 preferred to y2: p*(y1 > y2) = 1
THREE_ACTIONS = ((0, 1), (1, 2), (0, 2))  # a total order y1 > y2 > y3, each pair observed once
THREE_ACTIONS_PARTIAL = ((0, 1), (1, 2))  # y1 > y2 > y3 with the pair (y1, y3) never observed


class Dataset(NamedTuple):
  """Preference pairs: winners [m], losers [m], weights [m] (summing to 1)."""
  winners: np.ndarray
  losers: np.ndarray
  weights: np.ndarray


def dataset(pairs, counts=None) -> Dataset:
  """A Dataset from (winner, loser) index pairs and optional counts."""
  pairs = np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
  w = np.ones(len(pairs)) if counts is None else np.asarray(counts, dtype=np.float64)
  return Dataset(pairs[:, 0], pairs[:, 1], w / w.sum())


def margins(z, log_ref, data: Dataset):
  """h(y_w, y_l) for every pair, from policy logits z."""
  u = jax.nn.log_softmax(z) - log_ref
  return u[data.winners] - u[data.losers]


def dpo_loss(z, log_ref, data: Dataset, tau):
  """-E log sigmoid(tau h)."""
  return -jnp.sum(data.weights * jax.nn.log_sigmoid(tau * margins(z, log_ref, data)))


def ipo_loss(z, log_ref, data: Dataset, tau):
  """E (h - 1 / (2 tau))^2."""
  return jnp.sum(data.weights * (margins(z, log_ref, data) - 0.5 / tau) ** 2)


LOSSES = {'dpo': dpo_loss, 'ipo': ipo_loss}


def num_actions(data: Dataset) -> int:
  return int(max(np.max(data.winners), np.max(data.losers))) + 1


def fit(loss: str, data: Dataset, tau, num_steps: int, learning_rate=0.1, ref=None):
  """Gradient descent on the logits z from z = log pi_ref (ref defaults to uniform).

  Returns (pi_T [n], pi_t for t = 1..T [T, n])."""
  if loss not in LOSSES:
    raise ValueError(f'unknown loss {loss!r}; use one of {tuple(LOSSES)}')
  n = num_actions(data) if ref is None else len(ref)
  ref = np.full(n, 1.0 / n) if ref is None else np.asarray(ref, dtype=np.float64)
  return _fit(loss, data, tau, num_steps, learning_rate, np.log(ref))


@functools.partial(jax.jit, static_argnames=('loss', 'num_steps'))
def _fit(loss, data, tau, num_steps, learning_rate, log_ref):
  grad = jax.grad(LOSSES[loss])

  def body(z, _):
    z = z - learning_rate * grad(z, log_ref, data, tau)
    return z, jax.nn.softmax(z)

  z, path = jax.lax.scan(body, log_ref, None, length=num_steps)
  return jax.nn.softmax(z), path


def ipo_optimum(data: Dataset, tau: float, ref=None) -> np.ndarray:
  """The exact IPO optimum: argmin_u sum_k w_k (u_wk - u_lk - 1/(2 tau))^2 (least squares, minimum norm on a
  disconnected graph), pi ∝ pi_ref exp(u). Float64 numpy."""
  n = num_actions(data) if ref is None else len(ref)
  ref = np.full(n, 1.0 / n) if ref is None else np.asarray(ref, dtype=np.float64)
  A = np.zeros((len(data.winners), n))
  A[np.arange(len(A)), data.winners] += 1.0
  A[np.arange(len(A)), data.losers] -= 1.0
  sw = np.sqrt(data.weights)
  u = np.linalg.lstsq(sw[:, None] * A, sw * np.full(len(A), 0.5 / tau), rcond=None)[0]
  logits = np.log(ref) + u
  p = np.exp(logits - logits.max())
  return p / p.sum()
