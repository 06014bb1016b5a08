"""Exact quantities of a tabular preference game, in float64 numpy (docs/math.md sections 1-2).

- P(pi > pi') = E_x pi(.|x)^T P_x pi'(.|x);  P(y > pi) = (P pi)(y).
- KL_rho(pi, mu) = E_x KL(pi(.|x) || mu(.|x)).
- Exploitability (duality gap) of pi in the tau-regularised game, closed form:
    e_tau(pi) = max_pi' P_tau(pi' > pi) - 1/2 = E_x [tau log sum_y mu(y) exp(P(y > pi) / tau) + tau KL(pi, mu)] - 1/2,
  and for tau = 0: E_x max_y P(y > pi) - 1/2.
- The regularised Nash equilibrium pi*_tau, the unique fixed point pi = softmax(log mu + P pi / tau), solved by damped
  Newton steps to e_tau < 1e-10 with a certificate (below).
- The unregularised equilibrium pi* = argmax_pi min_pi' P(pi > pi') by a linear program (value 1/2).
- The Bradley-Terry fit of P under a sampling distribution over pairs (the reward model of RLHF).

Functions take one context (P [n, n], policies [n]) or several (P [C, n, n], policies [C, n]) with weights rho [C].
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import optimize, special

log = logging.getLogger(__name__)


def _f64(a) -> np.ndarray:
  return np.asarray(a, dtype=np.float64)


def _expect(values: np.ndarray, rho: np.ndarray | None) -> np.ndarray | float:
  """E_x values[x] under rho; per-context values are returned unchanged when rho is None."""
  if rho is None:
    return values
  return float(np.sum(_f64(rho) * values))


def _log(p: np.ndarray) -> np.ndarray:
  with np.errstate(divide='ignore'):
    return np.log(p)


def action_preference(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
  """P(y > pi) = sum_y' P(y > y') pi(y'), shape [..., n]."""
  return np.einsum('...ij,...j->...i', _f64(P), _f64(pi))


def policy_preference(P: np.ndarray, pi: np.ndarray, pi2: np.ndarray, rho: np.ndarray | None = None):
  """P(pi > pi') = E_x sum_{y, y'} pi(y) P(y > y') pi'(y')."""
  return _expect(np.einsum('...i,...ij,...j->...', _f64(pi), _f64(P), _f64(pi2)), rho)


def kl(p: np.ndarray, q: np.ndarray, rho: np.ndarray | None = None):
  """KL(p || q) = sum_y p(y) log(p(y) / q(y)) with 0 log 0 = 0 (per context, or E_x under rho)."""
  return _expect(special.rel_entr(_f64(p), _f64(q)).sum(-1), rho)


def regularized_preference(P, pi, pi2, mu, tau: float, rho=None):
  """P_tau(pi > pi') = P(pi > pi') - tau KL_rho(pi, mu) + tau KL_rho(pi', mu)."""
  return _expect(policy_preference(P, pi, pi2) - tau * kl(pi, mu) + tau * kl(pi2, mu), rho)


def best_response(P: np.ndarray, pi: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
  """argmax_pi' P_tau(pi' > pi) = softmax(log mu + P(. > pi) / tau) (tau > 0)."""
  return special.softmax(_log(_f64(mu)) + action_preference(P, pi) / tau, axis=-1)


def exploitability(P: np.ndarray, pi: np.ndarray, mu: np.ndarray, tau: float, rho: np.ndarray | None = None):
  """e_tau(pi) = tau log sum_y mu(y) exp(P(y > pi) / tau) + tau KL(pi, mu) - 1/2; max_y P(y > pi) - 1/2 at tau = 0."""
  a = action_preference(P, pi)
  if tau == 0:
    return _expect(a.max(-1) - 0.5, rho)
  lse = special.logsumexp(_log(_f64(mu)) + a / tau, axis=-1)
  return _expect(tau * lse + tau * kl(pi, mu) - 0.5, rho)


def fixed_point_map(P: np.ndarray, pi: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
  """T(pi) = softmax(log mu + P pi / tau); pi*_tau is its unique fixed point."""
  return best_response(P, pi, mu, tau)


@dataclasses.dataclass(frozen=True)
class Certificate:
  """Evidence that pi is the regularised equilibrium.

  exploitability: e_tau(pi) >= 0, zero only at pi*_tau.
  residual: max_y |pi(y) - T(pi)(y)|, the fixed-point residual.
  kl_to_pi_bound: KL(pi, pi*) <= e_tau(pi) / tau, since P_tau(pi* > pi) - 1/2 = tau KL(pi, pi*).
  kl_from_pi_bound: KL(pi*, pi) <= chi^2(pi*, pi) <= ||pi* - pi||_1^2 / min pi <= 2 e_tau(pi) / (tau min_y pi(y)).
  """
  exploitability: float
  residual: float
  kl_to_pi_bound: float
  kl_from_pi_bound: float
  iterations: int
  converged: bool


def _newton_fixed_point(P: np.ndarray, log_mu: np.ndarray, tau: float, tol: float, max_iter: int):
  """Damped Newton on G(z) = z - log mu - P softmax(z) / tau = 0, whose root is z* = log mu + P pi* / tau.

  J = I - P S / tau with S = diag(pi) - pi pi^T. Since S 1 = 0, P S = (P - 1/2) S and the eigenvalues of
  (P - 1/2) S are purely imaginary (antisymmetric times PSD), so J is never singular; the Newton direction is a
  descent direction for ||G||^2 and backtracking keeps the merit decreasing.
  """
  n = P.shape[0]
  z = log_mu.copy()
  def residual(z):
    return z - log_mu - P @ special.softmax(z) / tau
  G = residual(z)
  it = 0
  for it in range(1, max_iter + 1):
    pi = special.softmax(z)
    S = np.diag(pi) - np.outer(pi, pi)
    J = np.eye(n) - P @ S / tau
    d = -np.linalg.solve(J, G)
    merit, step = G @ G, 1.0
    while step > 1e-12:
      z_new = z + step * d
      G_new = residual(z_new)
      if G_new @ G_new < (1.0 - 1e-4 * step) * merit:
        break
      step *= 0.5
    z, G = z_new, G_new
    pi = special.softmax(z)
    if exploitability(P, pi, np.exp(log_mu), tau) < tol and np.max(np.abs(G)) < 1e-12 / max(tau, 1e-3):
      break
  return special.softmax(z), it


def certify(P: np.ndarray, pi: np.ndarray, mu: np.ndarray, tau: float, iterations: int = 0,
            tol: float = 1e-10) -> Certificate:
  """The certificate of a candidate pi for one context."""
  e = max(float(exploitability(P, pi, mu, tau)), 0.0)
  res = float(np.max(np.abs(pi - fixed_point_map(P, pi, mu, tau))))
  return Certificate(exploitability=e, residual=res, kl_to_pi_bound=e / tau,
                     kl_from_pi_bound=2.0 * e / (tau * float(np.min(pi))), iterations=iterations,
                     converged=e < tol)


def solve_regularized(P: np.ndarray, mu: np.ndarray, tau: float, tol: float = 1e-10,
                      max_iter: int = 200) -> tuple[np.ndarray, Certificate]:
  """pi*_tau of one context: pi*(y) ∝ mu(y) exp(P(y > pi*) / tau), with e_tau(pi*) < tol certified."""
  if tau <= 0:
    raise ValueError('the regularised solver needs tau > 0; use solve_unregularized for tau = 0')
  P, mu = _f64(P), _f64(mu)
  pi, it = _newton_fixed_point(P, _log(mu), float(tau), tol, max_iter)
  cert = certify(P, pi, mu, tau, it, tol)
  if not cert.converged:
    log.warning('regularised solver stopped at exploitability %.3g after %d Newton steps', cert.exploitability, it)
  return pi, cert


def solve_regularized_game(P: np.ndarray, mu: np.ndarray, tau: float, tol: float = 1e-10):
  """Per-context pi*_tau of a contextual game (P [C, n, n], mu [C, n]): the game decouples over contexts."""
  out = [solve_regularized(P[c], mu[c], tau, tol) for c in range(P.shape[0])]
  return np.stack([o[0] for o in out]), [o[1] for o in out]


def solve_unregularized(P: np.ndarray) -> tuple[np.ndarray, float]:
  """pi* = argmax_pi min_y' P(pi > y') by linear programming: max v s.t. (P^T pi)(y') >= v, pi in the simplex.

  Returns (pi*, v); for a symmetric constant-sum game v = 1/2."""
  P = _f64(P)
  n = P.shape[0]
  c = np.zeros(n + 1)
  c[-1] = -1.0
  A_ub = np.hstack([-P.T, np.ones((n, 1))])
  A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
  res = optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0],
                         bounds=[(0, None)] * n + [(None, None)], method='highs')
  if not res.success:
    raise RuntimeError(f'linear program failed: {res.message}')
  pi = np.maximum(res.x[:n], 0.0)
  return pi / pi.sum(), float(res.x[-1])


def bt_loss(r: np.ndarray, P: np.ndarray, W: np.ndarray) -> float:
  """Negative log-likelihood of BT scores r: -sum_{y,y'} W(y,y') [P(y>y') log s(r_y - r_y') + P(y'>y) log s(r_y' - r_y)]."""
  d = r[:, None] - r[None, :]
  return float(-np.sum(W * (P * special.log_expit(d) + P.T * special.log_expit(-d))))


def bt_fit(P: np.ndarray, sampling: np.ndarray | None = None, iters: int = 100, tol: float = 1e-13) -> np.ndarray:
  """Maximum-likelihood Bradley-Terry scores r (mean zero) of P under a sampling distribution over pairs.

  sampling: W [n, n] (a distribution over ordered pairs), or nu [n] meaning W = nu nu^T; default uniform.
  Newton's method: gradient g_k = -sum_j (W + W^T)_kj (P_kj - s(r_k - r_j)), Hessian the weighted Laplacian with
  edge weights (W + W^T)_kj s (1 - s). If P is itself Bradley-Terry, the fit recovers its scores under any W with a
  connected support; otherwise the fit, and so the RLHF policy, depends on W.
  """
  P = _f64(P)
  n = P.shape[0]
  if sampling is None:
    W = np.full((n, n), 1.0 / n**2)
  else:
    W = _f64(sampling)
    W = np.outer(W, W) if W.ndim == 1 else W
  Ws = W + W.T
  r = np.zeros(n)
  for _ in range(iters):
    S = special.expit(r[:, None] - r[None, :])
    g = -np.sum(Ws * (P - S), axis=1)
    E = Ws * S * (1.0 - S)
    H = np.diag(E.sum(1)) - E + np.ones((n, n)) / n  # the last term fixes the gauge sum(r) = 0
    dr = -np.linalg.solve(H, g)
    step, f0 = 1.0, bt_loss(r, P, W)
    while step > 1e-10 and bt_loss(r + step * dr, P, W) > f0 + 1e-4 * step * (g @ dr):
      step *= 0.5
    r = r + step * dr
    r -= r.mean()
    if np.max(np.abs(g)) < tol:
      break
  return r


def rlhf_policy(mu: np.ndarray, reward: np.ndarray, tau: float) -> np.ndarray:
  """The RLHF solution: argmax_pi E_pi r - tau KL(pi, mu) = softmax(log mu + r / tau) (per context)."""
  return special.softmax(_log(_f64(mu)) + _f64(reward) / tau, axis=-1)
