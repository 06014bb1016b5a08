"""Nash averaging: the maximum-entropy Nash equilibrium of a symmetric zero-sum meta-game (docs/math.md section 6).

D. Balduzzi, K. Tuyls, J. Perolat, T. Graepel, *Re-evaluating evaluation* (NeurIPS 2018, arXiv 1806.02643).

Input: a preference matrix P [n, n] between n agents, P[i, j] = P(i > j), with P + P^T = 1 (checked to `atol`, then
made exact by games.antisymmetrize). The meta-game has the antisymmetric payoff A = P - 1/2; its value is 0 and its
Nash equilibria form the convex polytope
    Q = {p in the simplex : A p <= 0} = {p : P(i > p) <= 1/2 for every agent i},
where P(i > p) = (P p)_i (exact.action_preference). The Nash average of agent i is (A p)_i = P(i > p) - 1/2: <= 0
everywhere and = 0 on the support of every equilibrium. Among the equilibria, Nash averaging takes the one of maximal
entropy, which is unique (the entropy is strictly concave) and invariant to duplicated agents: copies share the
weight of one agent equally, so adding copies changes no Nash average.

Method (exact up to the tolerances below):
1. One linear program (scipy HiGHS, as exact.solve_unregularized): maximise t over p in Q with
   p_i + s_i >= t for every i, s = -A p. Tucker's theorem on skew-symmetric matrices gives an equilibrium with
   p + s > 0, so the optimum t* (`margin`) is positive. Equilibria are exchangeable (q^T A p = 0 for any two), so
   s_i = 0 on S, the union of the supports of all equilibria, and p_i = 0 off it: S = {i : p_i > s_i}.
2. The maximum-entropy equilibrium is supported on all of S and lies on the face
   {p : p = 0 off S, A_SS p_S = 0, sum p = 1, A_jS p_S <= 0 for j not in S}. Damped Newton steps maximise the entropy
   in an orthonormal basis of the face's affine hull (null space to relative singular-value tolerance `rank_tol`),
   from the linear program's point projected onto that hull, with a log barrier on the inequalities (slack at the
   start by t*) whose weight falls to 1e-14.
The result's `exploitability` = max_i P(i > p) - 1/2 (exact.exploitability at tau = 0) certifies the equilibrium.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

from nlhf_jax.tabular import exact, games

BARRIER_WEIGHTS = tuple(10.0 ** -k for k in range(2, 15, 2))  # the log-barrier weights, in order


@dataclasses.dataclass(frozen=True)
class NashAverage:
  """The maximum-entropy equilibrium p of the meta-game of P and what it says about each agent.

  weights: p [n], in the simplex, p_i > 0 exactly on `support`.
  support: the indices of S (increasing), the union of the supports of all equilibria.
  win_rates: P(i > p) = (P p)_i [n]: 1/2 on the support, <= 1/2 off it.
  nash_averages: (A p)_i = win_rates - 1/2 [n].
  entropy: -sum_i p_i log p_i.
  exploitability: max_i P(i > p) - 1/2 (0 at an equilibrium, up to rounding).
  margin: t* of the linear program, min_i p_i - (A p)_i at its solution (> 0; tiny: a near-degenerate game).
  face_dimension: the dimension of the equilibrium face the entropy was maximised on (0: a unique equilibrium).
  """
  weights: np.ndarray
  support: tuple[int, ...]
  win_rates: np.ndarray
  nash_averages: np.ndarray
  entropy: float
  exploitability: float
  margin: float
  face_dimension: int


def _strictly_complementary(A: np.ndarray) -> tuple[np.ndarray, float]:
  """An equilibrium p with min_i (p_i - (A p)_i) = t* maximal (step 1 of the module doc); returns (p, t*)."""
  n = A.shape[0]
  c = np.zeros(n + 1)
  c[-1] = -1.0
  A_ub = np.vstack([np.hstack([A, np.zeros((n, 1))]),  # A p <= 0
                    np.hstack([A - np.eye(n), np.ones((n, 1))])])  # t - p_i + (A p)_i <= 0
  A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
  res = optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(2 * n), A_eq=A_eq, b_eq=[1.0],
                         bounds=[(0, None)] * n + [(None, None)], method='highs',
                         options={'primal_feasibility_tolerance': 1e-10, 'dual_feasibility_tolerance': 1e-10})
  if not res.success:
    raise RuntimeError(f'Nash averaging: the linear program failed: {res.message}')
  p = np.maximum(res.x[:n], 0.0)
  return p / p.sum(), float(res.x[-1])


def _null_space(M: np.ndarray, rank_tol: float) -> np.ndarray:
  """An orthonormal basis [k, d] of {z : M z = 0}, singular values below rank_tol * max(1, sigma_max) counted as 0."""
  _, sv, vt = np.linalg.svd(M)
  rank = int(np.sum(sv > rank_tol * max(1.0, sv[0] if sv.size else 0.0)))
  return vt[rank:].T


def _max_entropy_on_face(x0: np.ndarray, N: np.ndarray, D: np.ndarray, max_iter: int) -> np.ndarray:
  """argmax H(x) over {x = x0 + N z : x > 0, D x < 0} (x0 strictly feasible), by barrier Newton steps."""
  z = np.zeros(N.shape[1])
  DN = D @ N  # [m, k]: the slacks are s = -(D x0) - DN z

  def parts(z, w):
    x = x0 + N @ z
    s = -(D @ x)
    if np.any(x <= 0) or np.any(s <= 0):
      return np.inf, x, s
    return float(np.sum(x * np.log(x)) - w * np.sum(np.log(s))), x, s

  if not np.isfinite(parts(z, BARRIER_WEIGHTS[0])[0]):
    return x0  # the projection left the interior (a margin near rounding): keep the linear program's point
  for w in (BARRIER_WEIGHTS if D.shape[0] else (0.0,)):
    f, x, s = parts(z, w)
    for _ in range(max_iter):
      g = N.T @ (np.log(x) + 1.0) + w * DN.T @ (1.0 / s)
      H = (N.T * (1.0 / x)) @ N + w * (DN.T * (1.0 / s**2)) @ DN
      step = -np.linalg.solve(H, g)
      decrement = -float(g @ step)
      if decrement < 1e-28:
        break
      dx, ds = N @ step, -(DN @ step)
      frac = 1.0  # stay strictly inside: at most 99% of the way to the nearest boundary
      for v, dv in ((x, dx), (s, ds)):
        shrinking = dv < 0
        if np.any(shrinking):
          frac = min(frac, 0.99 * float(np.min(-v[shrinking] / dv[shrinking])))
      while frac > 1e-16:
        f_new, x_new, s_new = parts(z + frac * step, w)
        if f_new <= f - 1e-4 * frac * decrement:
          break
        frac *= 0.5
      else:
        break  # no decrease left at float64 resolution
      z, f, x, s = z + frac * step, f_new, x_new, s_new
  return x0 + N @ z


def nash_average(P: np.ndarray, atol: float = 1e-9, rank_tol: float = 1e-9, max_iter: int = 100) -> NashAverage:
  """The maximum-entropy Nash equilibrium of the meta-game with payoff P - 1/2, P [n, n] with P[i, j] = P(i > j)."""
  P = games.antisymmetrize(games.validate(P, atol=atol))
  if P.ndim != 2:
    raise ValueError(f'Nash averaging takes one preference matrix [n, n], got shape {P.shape}')
  n = P.shape[0]
  A = P - 0.5
  p_lp, margin = _strictly_complementary(A)
  slack = -(A @ p_lp)
  S = np.flatnonzero(p_lp > slack)
  out = np.setdiff1d(np.arange(n), S)
  # the face's affine hull: A_SS x = 0, sum x = 1; x0 = the LP point's least-squares projection onto it
  E = np.vstack([A[np.ix_(S, S)], np.ones((1, S.size))])
  b = np.concatenate([np.zeros(S.size), [1.0]])
  x_lp = p_lp[S]
  x0 = x_lp - np.linalg.lstsq(E, E @ x_lp - b, rcond=None)[0]
  N = _null_space(E, rank_tol)
  x = x0 if N.shape[1] == 0 else _max_entropy_on_face(x0, N, A[np.ix_(out, S)], max_iter)
  x = np.maximum(x, 0.0)
  p = np.zeros(n)
  p[S] = x / x.sum()
  win = exact.action_preference(P, p)
  return NashAverage(weights=p, support=tuple(int(i) for i in np.flatnonzero(p > 0)), win_rates=win,
                     nash_averages=win - 0.5,
                     entropy=max(0.0, float(-np.sum(p[S] * np.log(p[S])))),
                     exploitability=float(exact.exploitability(P, p, np.full(n, 1.0 / n), 0.0)), margin=margin,
                     face_dimension=int(N.shape[1]))
