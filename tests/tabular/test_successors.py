"""The successors of Nash-MD in the tabular laboratory: each update against its closed form, and what each paper
proves (docs/math.md section 8).

- one step of inpo, sppo, extragradient, comal and mpo equals its formula, reference resets included;
- INPO's squared loss on pairs from pi_t is minimised by INPO's update; SPPO's loss by Hedge's;
- extragradient: KL(pi*_tau, pi_t) <= (1 - eta tau)^t KL(pi*_tau, pi_0) with eta = 1 / (1 + tau), where online
  mirror descent with the same step does not converge;
- COMAL and MPO: the last iterate reaches the unregularised equilibrium (e_0 -> 0) where Nash-MD and INPO stop at
  the regularised one, KL to it is non-increasing across the resets, and without resets they stop too;
- SPPO: the average iterate meets Hedge's bound e_0(pibar_t) <= log(1 / min mu) / (eta t) + eta / 8 while the last
  iterate does not converge; INPO: the last iterate reaches pi*_tau and the average follows it.
"""
import jax
import numpy as np
import pytest
from scipy import special

from nlhf_jax.tabular import algorithms as A
from nlhf_jax.tabular import exact, games


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


DICE_MU = np.array([0.7, 0.2, 0.1])
RPS_MU = np.array([0.6, 0.3, 0.1])


def _normalize(logits):
  return special.softmax(logits)


def _omd(P, pi, ref, eta, tau, opponent=None):
  """pi ∝ pi^(1 - eta tau) ref^(eta tau) exp(eta P(. > opponent)), numpy."""
  opponent = pi if opponent is None else opponent
  return _normalize((1 - eta * tau) * np.log(pi) + eta * tau * np.log(ref) + eta * P @ opponent)


def _mmd(P, pi, magnet, eta, tau):
  """pi ∝ (pi magnet^(eta tau) exp(eta P(. > pi)))^(1 / (1 + eta tau)), numpy."""
  return _normalize((np.log(pi) + eta * tau * np.log(magnet) + eta * P @ pi) / (1 + eta * tau))


TAU = 0.3


@pytest.fixture(scope='module')
def small():
  rng = np.random.default_rng(11)
  P = games.random_game(rng, 3)
  mu = games.reference_policy(3, 'dirichlet', rng)
  pi = rng.dirichlet(np.ones(3))
  return P, mu, pi


def _run_from(name, P, mu, pi, num_steps, **kw):
  c = A.run(name, A.tables(P, mu), TAU, num_steps, log_pi0=np.log(pi)[None], schedule='constant',
            with_exploitability=False, **kw)
  return np.exp(np.asarray(c.log_pi[0]))


def test_one_step_of_each_successor_matches_its_formula(small):
  P, mu, pi = small
  eta = 0.7
  # INPO: online mirror descent on the regularised game
  np.testing.assert_allclose(_run_from('inpo', P, mu, pi, 1, eta=eta), _omd(P, pi, mu, eta, TAU), rtol=1e-12)
  # SPPO: Hedge, pi ∝ pi exp(eta P(. > pi)), no regularisation
  expected = pi * np.exp(eta * P @ pi)
  np.testing.assert_allclose(_run_from('sppo', P, mu, pi, 1, eta=eta), expected / expected.sum(), rtol=1e-12)
  # extragradient: the step from pi_t against the half step's policy
  half = _omd(P, pi, mu, eta, TAU)
  np.testing.assert_allclose(_run_from('extragradient', P, mu, pi, 1, eta=eta), _omd(P, pi, mu, eta, TAU, half),
                             rtol=1e-12)
  # MPO: magnetic mirror descent towards mu with prox_tau
  np.testing.assert_allclose(_run_from('mpo', P, mu, pi, 1, eta=eta, prox_tau=0.2),
                             _mmd(P, pi, mu, eta, 0.2), rtol=1e-12)
  # COMAL: INPO's step with prox_tau towards its reference (mu at first)
  np.testing.assert_allclose(_run_from('comal', P, mu, pi, 1, eta=eta, prox_tau=0.2),
                             _omd(P, pi, mu, eta, 0.2), rtol=1e-12)


@pytest.mark.parametrize('name, update', [('comal', _omd), ('mpo', _mmd)])
def test_comal_and_mpo_reset_their_reference_every_prox_steps(small, name, update):
  P, mu, pi0 = small
  eta, prox_tau, K, T = 0.9, 0.2, 3, 8
  pi, ref = pi0, mu
  for t in range(T):
    pi = update(P, pi, ref, eta, prox_tau)
    if (t + 1) % K == 0:
      ref = pi
  np.testing.assert_allclose(_run_from(name, P, mu, pi0, T, eta=eta, prox_tau=prox_tau, prox_steps=K), pi,
                             rtol=1e-11)


def test_inpo_loss_is_minimised_by_the_inpo_update(small):
  """INPO's loss on pairs y, y' ~ pi_t, the winner drawn with probability P(y > y'):
  E (h(y_w, y_l) - 1 / (2 eta'))^2 with h = Delta log pi - (tau / eta') Delta log mu - (1 - tau / eta') Delta log pi_t,
  eta' = 1 / eta; minimised over log pi it gives exactly the mirror-descent step (up to a constant)."""
  P, mu, pi_t = small
  eta = 0.7
  inv = 1.0 / eta
  n = len(pi_t)
  # h(y, y') = v(y) - v(y') with v = log pi - (tau / eta') log mu - (1 - tau / eta') log pi_t: least squares in v
  rows, targets, weights = [], [], []
  for y in range(n):
    for y2 in range(n):
      row = np.zeros(n)
      row[y] += 1.0
      row[y2] -= 1.0
      rows.append(row)
      targets.append(0.5 / inv)
      weights.append(pi_t[y] * pi_t[y2] * P[y, y2])  # y wins against y2
  sw = np.sqrt(np.asarray(weights))
  v = np.linalg.lstsq(sw[:, None] * np.asarray(rows), sw * np.asarray(targets), rcond=None)[0]
  log_pi = v + (TAU / inv) * np.log(mu) + (1 - TAU / inv) * np.log(pi_t)
  np.testing.assert_allclose(_normalize(log_pi), _run_from('inpo', P, mu, pi_t, 1, eta=eta), rtol=1e-10)


def test_sppo_loss_is_minimised_by_hedge(small):
  """SPPO's loss E_{y ~ pi_t} (log(pi(y) / pi_t(y)) - eta (P(y > pi_t) - 1/2))^2 is zero at
  log pi = log pi_t + eta (P(y > pi_t) - 1/2); normalised, that is the Hedge step sppo takes (the paper's loss
  approximates log Z by eta / 2)."""
  P, mu, pi_t = small
  eta = 0.7
  log_pi = np.log(pi_t) + eta * (P @ pi_t - 0.5)
  np.testing.assert_allclose(_normalize(log_pi), _run_from('sppo', P, mu, pi_t, 1, eta=eta), rtol=1e-12)


def _converge_games():
  rng = np.random.default_rng(3)
  out = [(games.cyclic(3), RPS_MU, 0.01), (games.dice(), DICE_MU, 0.01)]
  for _ in range(3):
    out.append((games.random_game(rng, 8), games.reference_policy(8, 'dirichlet', rng), 0.02))
  return out


def test_extragradient_converges_linearly_in_the_regularised_game():
  """EGPO's last-iterate rate: KL(pi*_tau, pi_t) <= (1 - eta tau)^t KL(pi*_tau, pi_0) for eta = 1 / (1 + tau)
  (P - 1/2 has entries in [-1/2, 1/2]), checked wherever the bound is above rounding; online mirror descent (INPO)
  with the same step size does not converge on rock-paper-scissors."""
  T = 3000
  for P, mu, tau in _converge_games():
    pistar, _ = exact.solve_regularized(P, mu, tau)
    eta = 1.0 / (1.0 + tau)
    c = A.run('extragradient', A.tables(P, mu), tau, T, pistar[None], schedule='constant', eta=eta)
    kl = np.asarray(c.kl)
    bound = (1.0 - eta * tau) ** np.arange(T + 1) * kl[0]
    above = bound > 1e-12
    assert np.all(kl[above] <= bound[above]), np.max(kl[above] / bound[above])
    assert kl[-1] < 1e-12
  P, mu, tau = _converge_games()[0]
  pistar, _ = exact.solve_regularized(P, mu, tau)
  c = A.run('inpo', A.tables(P, mu), tau, T, pistar[None], schedule='constant', eta=1.0 / (1.0 + tau))
  assert float(c.kl[-1]) > 0.1


@pytest.fixture(scope='module')
def dice_runs():
  """Nash-MD, INPO, COMAL and MPO on the dice (tau = 0.01), and COMAL and MPO without resets."""
  P, mu, tau = games.dice(), DICE_MU, 0.01
  pistar, _ = exact.solve_regularized(P, mu, tau)
  nash, _ = exact.solve_unregularized(P)
  t = A.tables(P, mu)
  kw = dict(target0=nash[None])
  with jax.enable_x64(True):  # module-scoped: set up before the autouse fixture
    return _dice_runs(t, tau, pistar, kw)


def _dice_runs(t, tau, pistar, kw):
  runs = {'nash_md': A.run('nash_md', t, tau, 3000, pistar[None], **kw),
          'inpo': A.run('inpo', t, tau, 3000, pistar[None], schedule='constant', eta=1.0, **kw)}
  for name in ('comal', 'mpo'):
    for K, label in ((50, name), (10 ** 6, name + '_no_reset')):
      runs[label] = A.run(name, t, tau, 3000, pistar[None], schedule='constant', eta=2.0, prox_tau=0.05,
                          prox_steps=K, **kw)
  return runs


def test_comal_and_mpo_reach_the_unregularised_equilibrium(dice_runs):
  """The dice's unique equilibrium is uniform. Nash-MD and INPO stop at pi*_tau (e_0 = 0.0102, the bias of
  tau = 0.01); the last iterates of COMAL and MPO reach the uniform policy. Without the resets of the reference
  they stop at the equilibrium of the game regularised towards mu with prox_tau."""
  for name in ('nash_md', 'inpo'):
    assert float(dice_runs[name].exploitability0[-1]) > 0.01
    assert float(dice_runs[name].exploitability[-1]) < 1e-6
  for name in ('comal', 'mpo'):
    c = dice_runs[name]
    assert float(c.exploitability0[-1]) < 1e-5, name
    assert float(c.kl0[-1]) < 1e-8, name
    assert float(dice_runs[name + '_no_reset'].exploitability0[-1]) > 0.02, name
    # the prox-point property: KL(pi*, .) does not increase from one reference to the next
    at_resets = np.asarray(c.kl0)[::50]
    assert np.all(np.diff(at_resets) <= 1e-15), name


def test_sppo_average_iterate_meets_hedges_bound_and_its_last_iterate_cycles():
  """Hedge's regret bound for gains in [0, 1], from the prior mu: for every t >= 1,
  e_0(pibar_t) = max_y (1/t) sum_{s<t} P(y > pi_s) - 1/2 <= max_y log(1 / mu(y)) / (eta t) + eta / 8.
  On rock-paper-scissors the last iterate moves away from the equilibrium while the average approaches it."""
  eta, T = 0.1, 2000
  t = np.arange(1, T + 1)
  for i, (P, mu, _) in enumerate(_converge_games()):
    nash, _ = exact.solve_unregularized(P)
    c = A.run('sppo', A.tables(P, mu), 0.1, T, schedule='constant', eta=eta, with_average=True, target0=nash[None])
    e = np.asarray(c.avg_exploitability0)[1:]
    bound = np.log(1.0 / mu.min()) / (eta * t) + eta / 8
    assert np.all(e <= bound + 1e-12), np.max(e / bound)
    if i == 0:
      assert float(c.kl0[-1]) > float(c.kl0[0])
      assert float(c.avg_exploitability0[-1]) < 0.02 < float(c.exploitability0[-1])


def test_inpo_last_and_average_iterates_reach_the_regularised_equilibrium():
  """INPO's last iterate converges to pi*_tau; the average of its iterates follows at rate about 1 / t in
  distance, so its duality gap e_tau(pibar_t) (quadratic near pi*_tau) falls faster than 1 / t."""
  rng = np.random.default_rng(8)
  P, mu, tau = games.random_game(rng, 6), games.reference_policy(6, 'dirichlet', rng), 0.1
  pistar, _ = exact.solve_regularized(P, mu, tau)
  c = A.run('inpo', A.tables(P, mu), tau, 2000, pistar[None], schedule='constant', eta=1.0, with_average=True)
  assert float(c.kl[-1]) < 1e-12 and float(c.exploitability[-1]) < 1e-12
  e = np.asarray(c.avg_exploitability)
  t = np.array([100, 200, 1000, 2000])
  assert np.all(np.diff(e[t] * t) < 0)
  assert e[2000] < 1e-5


def test_average_iterate_is_the_mean_of_the_policies_played(small):
  P, mu, pi0 = small
  pis, pi = [], pi0
  for _ in range(4):
    pis.append(pi)
    pi = _omd(P, pi, mu, 0.5, TAU)
  c = A.run('inpo', A.tables(P, mu), TAU, 4, log_pi0=np.log(pi0)[None], schedule='constant', eta=0.5,
            with_average=True)
  avg = np.mean(pis, axis=0)
  np.testing.assert_allclose(np.exp(np.asarray(c.log_avg[0])), avg, rtol=1e-12)
  assert float(c.avg_exploitability0[-1]) == pytest.approx(exact.exploitability(P, avg, mu, 0.0), abs=1e-12)
  assert float(c.avg_exploitability[-1]) == pytest.approx(exact.exploitability(P, avg, mu, TAU), abs=1e-12)


def test_schedules_and_arguments_are_checked():
  t = A.tables(games.dice(), DICE_MU)
  with pytest.raises(ValueError, match='sppo has tau = 0'):
    A.run('sppo', t, 0.1, 10)
  with pytest.raises(ValueError, match='prox_steps'):
    A.run('comal', t, 0.1, 10, schedule='constant', prox_steps=0)
  assert set(A.SUCCESSORS) <= set(A.ALGORITHMS) and set(A.CONSTANT_STEP) <= set(A.ALGORITHMS)
