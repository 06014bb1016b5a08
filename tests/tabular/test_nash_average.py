"""Nash averaging: the maximum-entropy equilibrium of the meta-game P - 1/2 (docs/math.md section 6)."""
import numpy as np
import pytest
from scipy import optimize

from nlhf_jax.tabular import games
from nlhf_jax.tabular.nash_average import nash_average

TOL = 1e-9


def duplicate(P, idx):
  return P[np.ix_(idx, idx)]


def assert_equilibrium(P, res):
  """No agent beats the mixture; every agent of the support ties it; the weights are a distribution."""
  p = res.weights
  assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-12)
  assert tuple(np.flatnonzero(p > 0)) == res.support
  np.testing.assert_allclose(res.win_rates, P @ p, atol=1e-12)
  assert np.all(res.win_rates <= 0.5 + TOL)
  np.testing.assert_allclose(res.win_rates[list(res.support)], 0.5, atol=TOL)
  np.testing.assert_allclose(res.nash_averages, res.win_rates - 0.5, atol=1e-15)
  assert 0.0 <= res.exploitability <= TOL and res.margin > 0


@pytest.mark.parametrize('P, face', [(games.cyclic(3), 0), (games.dice(), 0), (games.cyclic(5), 2)],
                         ids=['rps', 'dice', 'cyclic5'])
def test_cyclic_games_give_uniform_weights(P, face):
  """cyclic(5) - 1/2 has rank 2: a face of equilibria of dimension 2, on which the uniform one has most entropy."""
  res = nash_average(P)
  assert_equilibrium(P, res)
  np.testing.assert_allclose(res.weights, 1.0 / len(P), atol=TOL)
  assert res.entropy == pytest.approx(np.log(len(P)))
  assert res.face_dimension == face


def test_dominant_policy_gets_weight_one():
  P = games.bradley_terry(np.array([0.0, 2.0, 1.0, -1.0]))
  res = nash_average(P)
  assert_equilibrium(P, res)
  np.testing.assert_allclose(res.weights, [0, 1, 0, 0], atol=0)
  assert res.support == (1,) and res.entropy == 0.0
  np.testing.assert_allclose(res.win_rates, P[:, 1], atol=1e-15)


def test_duplicated_policy_splits_its_weight_evenly():
  """Copies share one agent's weight equally (the maximum-entropy choice among the equilibria) and leave every
  Nash average unchanged: the property Nash averaging exists for."""
  rps = games.cyclic(3)
  res = nash_average(duplicate(rps, [0, 0, 1, 2]))
  assert_equilibrium(duplicate(rps, [0, 0, 1, 2]), res)
  np.testing.assert_allclose(res.weights, [1 / 6, 1 / 6, 1 / 3, 1 / 3], atol=TOL)
  assert res.face_dimension == 1
  res = nash_average(duplicate(rps, [2, 0, 1, 2, 2]))  # three copies of scissors
  np.testing.assert_allclose(res.weights, [1 / 9, 1 / 3, 1 / 3, 1 / 9, 1 / 9], atol=TOL)
  bt = games.bradley_terry(np.array([0.0, 2.0, 1.0]))  # a dominant agent and its copy
  res = nash_average(duplicate(bt, [0, 1, 2, 1]))
  np.testing.assert_allclose(res.weights, [0, 0.5, 0, 0.5], atol=TOL)
  assert res.support == (1, 3)


@pytest.mark.parametrize('seed', range(4))
def test_copies_of_random_games_change_no_nash_average(seed):
  rng = np.random.default_rng(seed)
  P = games.random_game(rng, 7)
  base = nash_average(P)
  assert_equilibrium(P, base)
  idx = np.concatenate([np.arange(7), rng.integers(0, 7, size=4)])
  res = nash_average(duplicate(P, idx))
  assert_equilibrium(duplicate(P, idx), res)
  np.testing.assert_allclose(res.win_rates, base.win_rates[idx], atol=TOL)
  for i in range(7):  # the weight of agent i, split evenly over its copies
    copies = np.flatnonzero(idx == i)
    np.testing.assert_allclose(res.weights[copies], base.weights[i] / len(copies), atol=1e-8)


def test_entropy_is_maximal_over_the_equilibria():
  """Against a general-purpose solver of max H(p) s.t. p in the simplex, (P - 1/2) p <= 0; here the constraint of
  an agent outside the support is active at the maximum (1/12 on the first rock, not 1/6)."""
  P = np.full((5, 5), 0.5)
  P[:4, :4] = duplicate(games.cyclic(3), [0, 0, 1, 2])
  P[4, :4] = 0.5 + np.array([0.3, -0.1, 0.0, 0.0])
  P[:4, 4] = 1.0 - P[4, :4]
  res = nash_average(P)
  assert_equilibrium(P, res)
  np.testing.assert_allclose(res.weights, [1 / 12, 1 / 4, 1 / 3, 1 / 3, 0], atol=1e-8)
  ref = optimize.minimize(lambda p: np.sum(p * np.log(np.maximum(p, 1e-300))), np.full(5, 0.2), method='SLSQP',
                          bounds=[(0, 1)] * 5, options={'ftol': 1e-14, 'maxiter': 1000},
                          constraints=[{'type': 'ineq', 'fun': lambda p: -(P - 0.5) @ p},
                                       {'type': 'eq', 'fun': lambda p: p.sum() - 1.0}])
  np.testing.assert_allclose(res.weights, ref.x, atol=1e-6)
  assert res.entropy >= -np.sum(ref.x[ref.x > 0] * np.log(ref.x[ref.x > 0])) - 1e-9


def test_a_neutral_agent_joins_the_mixture_by_entropy():
  """RPS plus an agent that ties everyone: the equilibria are a * uniform + (1 - a) * agent; the entropy
  H(a) + a log 3 is maximal at a = 3/4, so all four agents get 1/4."""
  P = np.full((4, 4), 0.5)
  P[:3, :3] = games.cyclic(3)
  res = nash_average(P)
  assert_equilibrium(P, res)
  np.testing.assert_allclose(res.weights, 0.25, atol=TOL)


def test_permuting_the_agents_permutes_the_result():
  rng = np.random.default_rng(7)
  P = games.random_game(rng, 6)
  perm = rng.permutation(6)
  a, b = nash_average(P), nash_average(duplicate(P, perm))
  np.testing.assert_allclose(b.weights, a.weights[perm], atol=1e-8)
  np.testing.assert_allclose(b.win_rates, a.win_rates[perm], atol=1e-8)


def test_rounded_matrices_and_bad_inputs():
  """A win-rate matrix as the evaluation stores it (6 decimals, mirrored cells summing to 1 to rounding) is
  accepted; a matrix that is not a preference matrix is not."""
  P = np.round(games.random_game(np.random.default_rng(3), 5), 6)
  assert_equilibrium(games.antisymmetrize(P), nash_average(P, atol=1e-6))
  with pytest.raises(ValueError, match='P \\+ P\\^T'):
    nash_average(np.array([[0.5, 0.7], [0.7, 0.5]]))
  with pytest.raises(ValueError, match='one preference matrix'):
    nash_average(np.stack([games.dice()] * 2))
  single = nash_average(np.array([[0.5]]))
  assert single.weights.tolist() == [1.0] and single.support == (0,)
