"""Games and exact quantities: antisymmetry, closed forms, solvers and their certificates (docs/math.md 1-2, 7)."""
import numpy as np
import pytest
from scipy import special

from nlhf_jax.tabular import exact, games


def test_dice_matrix_is_non_transitive_five_ninths():
  P = games.dice()
  np.testing.assert_allclose(P + P.T, 1.0, atol=0)
  np.testing.assert_allclose(np.diag(P), 0.5)
  for i in range(3):  # each die beats the next with probability 5/9
    assert P[i, (i + 1) % 3] == pytest.approx(5 / 9)


@pytest.mark.parametrize('build', [
    lambda rng: games.random_game(rng, 7),
    lambda rng: games.random_game(rng, 7, 'logit'),
    lambda rng: games.bradley_terry(rng.normal(size=6)),
    lambda rng: games.transitive_cyclic(rng, 8, 0.3),
    lambda rng: games.cyclic(5),
])
def test_builders_are_valid_preference_matrices(build):
  P = build(np.random.default_rng(1))
  games.validate(P)
  np.testing.assert_allclose(P + P.T, 1.0, atol=1e-15)


def test_validation_rejects_bad_inputs():
  with pytest.raises(ValueError, match='P \\+ P\\^T'):
    games.make_game(np.array([[0.5, 0.7], [0.7, 0.5]]))
  with pytest.raises(ValueError):
    games.make_game(np.array([[0.5, 1.2], [-0.2, 0.5]]))
  with pytest.raises(ValueError):
    games.make_game(games.dice(), mu=np.array([0.5, 0.5, 0.0]))
  with pytest.raises(ValueError):
    games.transitive_cyclic(np.random.default_rng(0), 4, 1.5)


def test_contextual_game_and_expectations():
  g = games.contextual([games.make_game(games.dice()), games.make_game(games.cyclic(3))], rho=np.array([0.25, 0.75]))
  assert (g.num_contexts, g.num_actions) == (2, 3)
  pi = np.array([[1.0, 0, 0], [0, 1.0, 0]])
  pi2 = np.array([[0, 1.0, 0], [0, 0, 1.0]])
  expected = 0.25 * g.P[0, 0, 1] + 0.75 * g.P[1, 1, 2]
  assert exact.policy_preference(g.P, pi, pi2, g.rho) == pytest.approx(expected)
  assert exact.policy_preference(g.P, pi, pi, g.rho) == pytest.approx(0.5)  # P(pi > pi) = 1/2


def test_kl_and_regularized_preference_identities():
  rng = np.random.default_rng(0)
  P = games.random_game(rng, 5)
  p, q, mu = (rng.dirichlet(np.ones(5)) for _ in range(3))
  assert exact.kl(p, q) == pytest.approx(np.sum(p * np.log(p / q)))
  assert exact.kl(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
  tau = 0.3
  a = exact.regularized_preference(P, p, q, mu, tau)
  b = exact.regularized_preference(P, q, p, mu, tau)
  assert a + b == pytest.approx(1.0)  # the regularised game is still constant-sum


def test_exploitability_closed_form_equals_best_response_value():
  rng = np.random.default_rng(2)
  P = games.random_game(rng, 6)
  mu, pi = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
  for tau in (0.05, 0.5, 2.0):
    br = exact.best_response(P, pi, mu, tau)
    direct = exact.regularized_preference(P, br, pi, mu, tau) - 0.5
    assert exact.exploitability(P, pi, mu, tau) == pytest.approx(direct, abs=1e-12)
    # no other policy does better against pi
    for _ in range(20):
      other = rng.dirichlet(np.ones(6))
      assert exact.regularized_preference(P, other, pi, mu, tau) - 0.5 <= direct + 1e-12
  assert exact.exploitability(P, pi, mu, 0.0) == pytest.approx(np.max(P @ pi) - 0.5)


@pytest.mark.parametrize('seed', range(6))
def test_regularized_solver_fixed_point_and_certificate(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(3, 51))
  tau = float(10 ** rng.uniform(-2, 0))
  P = games.random_game(rng, n, 'uniform' if seed % 2 else 'logit')
  mu = games.reference_policy(n, 'dirichlet', rng)
  pi, cert = exact.solve_regularized(P, mu, tau)
  fixed = special.softmax(np.log(mu) + P @ pi / tau)
  assert np.max(np.abs(pi - fixed)) < 1e-9
  assert cert.converged and cert.exploitability < 1e-8 and cert.residual < 1e-9
  assert exact.exploitability(P, pi, mu, tau) < 1e-8
  # P_tau(pi* > pi') >= 1/2 for any pi', with the gap tau KL(pi', pi*)
  other = rng.dirichlet(np.ones(n))
  gap = exact.regularized_preference(P, pi, other, mu, tau) - 0.5
  assert gap == pytest.approx(tau * exact.kl(other, pi), abs=1e-9)


def test_regularized_equilibrium_of_symmetric_games_with_uniform_mu_is_uniform():
  for P in (games.dice(), games.cyclic(7)):
    n = P.shape[0]
    pi, _ = exact.solve_regularized(P, np.full(n, 1 / n), 0.05)
    np.testing.assert_allclose(pi, 1 / n, atol=1e-12)


def test_unregularized_equilibrium_dice_uniform_value_half():
  pi, v = exact.solve_unregularized(games.dice())
  np.testing.assert_allclose(pi, 1 / 3, atol=1e-9)
  assert v == pytest.approx(0.5, abs=1e-12)
  assert exact.exploitability(games.dice(), pi, np.full(3, 1 / 3), 0.0) == pytest.approx(0.0, abs=1e-9)


def test_unregularized_equilibrium_random_game_value_half():
  rng = np.random.default_rng(3)
  P = games.random_game(rng, 12)
  pi, v = exact.solve_unregularized(P)
  assert v == pytest.approx(0.5, abs=1e-9)
  assert np.min(pi @ P) >= 0.5 - 1e-9  # P(pi* > y') >= 1/2 for every y'


def test_bt_fit_recovers_bt_scores_under_any_sampling():
  r = np.array([0.3, -1.0, 2.0, -1.3])
  P = games.bradley_terry(r)
  for nu in (None, np.array([0.1, 0.2, 0.3, 0.4])):
    np.testing.assert_allclose(exact.bt_fit(P, nu), r - r.mean(), atol=1e-8)


def test_bt_fit_of_dice_depends_on_sampling():
  P = games.dice()
  np.testing.assert_allclose(exact.bt_fit(P), 0.0, atol=1e-12)  # uniform pairs: no signal
  r = exact.bt_fit(P, np.array([0.7, 0.2, 0.1]))
  assert np.argmax(r) == 2 and np.ptp(r) > 0.2
  # first-order optimality of the weighted likelihood
  nu = np.array([0.7, 0.2, 0.1])
  W = np.outer(nu, nu)
  S = special.expit(r[:, None] - r[None, :])
  np.testing.assert_allclose(np.sum((W + W.T) * (P - S), axis=1), 0.0, atol=1e-10)
