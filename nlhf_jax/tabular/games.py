"""Preference games: matrices P with P + P^T = 1, contexts x ~ rho, and a reference policy mu.

Notation (docs/math.md section 1): P[x, y, y'] = P(y > y' | x); antisymmetry P(y > y') = 1 - P(y' > y), hence
P(y > y) = 1/2. A game with C contexts and n actions stores P [C, n, n], mu [C, n] and rho [C]; a single-context game
has C = 1. All builders return float64 numpy arrays (the exact solvers need the precision).
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np

log = logging.getLogger(__name__)

DICE = ((2, 4, 9), (1, 6, 8), (3, 5, 7))  # non-transitive dice: each beats the next with probability 5/9


class Game(NamedTuple):
  """A contextual preference game: P [C, n, n], reference policy mu [C, n], context weights rho [C]."""
  P: np.ndarray
  mu: np.ndarray
  rho: np.ndarray

  @property
  def num_actions(self) -> int:
    return self.P.shape[-1]

  @property
  def num_contexts(self) -> int:
    return self.P.shape[0]


def validate(P: np.ndarray, atol: float = 1e-12) -> np.ndarray:
  """Checks 0 <= P <= 1 and P + P^T = 1 (per context, last two axes); returns P as float64."""
  P = np.asarray(P, dtype=np.float64)
  if P.ndim < 2 or P.shape[-1] != P.shape[-2]:
    raise ValueError(f'a preference matrix is square, got shape {P.shape}')
  if np.any(P < -atol) or np.any(P > 1 + atol) or not np.all(np.isfinite(P)):
    raise ValueError('preference probabilities must lie in [0, 1]')
  err = np.max(np.abs(P + np.swapaxes(P, -1, -2) - 1.0))
  if err > atol:
    raise ValueError(f'P + P^T = 1 violated by {err:.3g} (tolerance {atol:g})')
  return P


def validate_policy(pi: np.ndarray, atol: float = 1e-12) -> np.ndarray:
  """Checks pi >= 0 and sum_y pi(y) = 1 along the last axis; returns pi as float64."""
  pi = np.asarray(pi, dtype=np.float64)
  if np.any(pi < 0) or np.max(np.abs(pi.sum(-1) - 1.0)) > atol:
    raise ValueError('a policy is a probability vector (non-negative, sums to 1)')
  return pi


def antisymmetrize(M: np.ndarray) -> np.ndarray:
  """The nearest matrix with P + P^T = 1: (M + 1 - M^T) / 2; the diagonal becomes 1/2."""
  M = np.asarray(M, dtype=np.float64)
  return 0.5 * (M + 1.0 - np.swapaxes(M, -1, -2))


def make_game(P: np.ndarray, mu: np.ndarray | None = None, rho: np.ndarray | None = None) -> Game:
  """A validated game; P [n, n] or [C, n, n]; mu defaults to uniform, rho to uniform over contexts."""
  P = validate(P)
  if P.ndim == 2:
    P = P[None]
  C, n = P.shape[0], P.shape[-1]
  mu = np.full((C, n), 1.0 / n) if mu is None else np.broadcast_to(np.asarray(mu, np.float64), (C, n)).copy()
  mu = validate_policy(mu)
  if np.any(mu <= 0):
    raise ValueError('the reference policy mu must have full support (log mu is used)')
  rho = np.full((C,), 1.0 / C) if rho is None else validate_policy(np.asarray(rho, np.float64))
  if rho.shape != (C,):
    raise ValueError(f'rho has shape {rho.shape}, expected ({C},)')
  return Game(P, mu, rho)


def contextual(games: Sequence[Game], rho: np.ndarray | None = None) -> Game:
  """Stacks single-context games of equal size into one contextual game with context weights rho."""
  P = np.concatenate([g.P for g in games])
  mu = np.concatenate([g.mu for g in games])
  return make_game(P, mu, rho)


def bradley_terry(scores: np.ndarray) -> np.ndarray:
  """P(y > y') = sigmoid(r(y) - r(y')) for scores r [..., n] (transitive by construction)."""
  r = np.asarray(scores, dtype=np.float64)
  d = r[..., :, None] - r[..., None, :]
  return 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid, exactly antisymmetric in floating point


def dice(faces: Sequence[Sequence[float]] = DICE) -> np.ndarray:
  """P(die i > die j) for fair dice given by their faces; ties count 1/2."""
  faces = [np.asarray(f, dtype=np.float64) for f in faces]
  n = len(faces)
  P = np.empty((n, n))
  for i in range(n):
    for j in range(n):
      a, b = faces[i][:, None], faces[j][None, :]
      P[i, j] = np.mean((a > b) + 0.5 * (a == b))
  return validate(P)


def cyclic(n: int) -> np.ndarray:
  """Rock-paper-scissors on n actions: P(i > j) = 1/2 + sin(2 pi (i - j) / n) / 2 (circulant, zero BT signal)."""
  d = np.arange(n)[:, None] - np.arange(n)[None, :]
  return antisymmetrize(0.5 + 0.5 * np.sin(2.0 * np.pi * d / n))


def random_game(rng: np.random.Generator, n: int, kind: str = 'uniform', scale: float = 2.0) -> np.ndarray:
  """A random preference matrix. kind='uniform': P(i > j) ~ U[0, 1] for i < j; 'logit': sigmoid of a Gaussian
  antisymmetric matrix with standard deviation `scale`."""
  if kind == 'uniform':
    U = rng.uniform(size=(n, n))
  elif kind == 'logit':
    G = rng.normal(size=(n, n)) * scale
    U = 0.5 * (1.0 + np.tanh(0.5 * (G - G.T) / np.sqrt(2.0)))
  else:
    raise ValueError(f'unknown random game kind {kind!r}')
  upper = np.triu(U, 1)
  return validate(upper + np.tril(1.0 - upper.T, -1) + 0.5 * np.eye(n))


def transitive_cyclic(rng: np.random.Generator, n: int, weight: float, score_scale: float = 2.0) -> np.ndarray:
  """(1 - w) * BT(r) + w * cyclic(n) with r ~ N(0, score_scale^2): w = 0 transitive, w = 1 purely cyclic."""
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f'mixture weight must lie in [0, 1], got {weight}')
  r = rng.normal(size=n) * score_scale
  return validate((1.0 - weight) * bradley_terry(r) + weight * cyclic(n))


def reference_policy(n: int, kind: str = 'uniform', rng: np.random.Generator | None = None,
                     concentration: float = 1.0, probs: Sequence[float] | None = None) -> np.ndarray:
  """mu over n actions: 'uniform', 'dirichlet' (Dirichlet(concentration) draw, floored at 1e-12 and renormalised)
  or 'given' (probs)."""
  if kind == 'uniform':
    return np.full(n, 1.0 / n)
  if kind == 'dirichlet':
    rng = rng if rng is not None else np.random.default_rng(0)
    mu = np.maximum(rng.dirichlet(np.full(n, concentration)), 1e-12)
    return mu / mu.sum()
  if kind == 'given':
    mu = np.asarray(probs, dtype=np.float64)
    if mu.shape != (n,):
      raise ValueError(f'mu has shape {mu.shape}, expected ({n},)')
    return validate_policy(mu / mu.sum())
  raise ValueError(f'unknown reference policy kind {kind!r}')


FAMILIES = ('dice', 'random', 'bt', 'mixture', 'cyclic')


def build(family: str, rng: np.random.Generator, n: int, random_kind: str = 'uniform', score_scale: float = 2.0,
          mixture_weight: float = 0.5) -> np.ndarray:
  """One preference matrix of a family: 'dice' (the three non-transitive dice; n is ignored), 'random'
  (random_game), 'bt' (Bradley-Terry with scores N(0, score_scale^2)), 'mixture' (transitive_cyclic) or 'cyclic'."""
  if family == 'dice':
    return dice()
  if family == 'random':
    return random_game(rng, n, random_kind, score_scale)
  if family == 'bt':
    return validate(bradley_terry(rng.normal(size=n) * score_scale))
  if family == 'mixture':
    return transitive_cyclic(rng, n, mixture_weight, score_scale)
  if family == 'cyclic':
    return cyclic(n)
  raise ValueError(f'unknown game family {family!r}; use one of {FAMILIES}')
