"""Tabular dynamics: the update formulas, Theorem 1 on 100 random games, limits of the baselines, dice vs RLHF."""
import jax
import numpy as np
import pytest

from nlhf_jax.tabular import algorithms as A
from nlhf_jax.tabular import exact, games


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _game(seed, n=6):
  rng = np.random.default_rng(seed)
  return games.make_game(games.random_game(rng, n), games.reference_policy(n, 'dirichlet', rng))


def test_one_nash_md_step_matches_the_formula():
  g, tau, eta = _game(0), 0.3, 0.7
  pi = np.random.default_rng(1).dirichlet(np.ones(6))
  t = A.tables(g.P, g.mu)
  # one step from pi_0 = pi with a constant step size
  c = A.run('nash_md', t, tau, 1, schedule='constant', eta=eta, log_pi0=np.log(pi)[None])
  mix = pi ** (1 - eta * tau) * g.mu[0] ** (eta * tau)
  mix /= mix.sum()
  expected = mix * np.exp(eta * g.P[0] @ mix)
  np.testing.assert_allclose(np.exp(c.log_pi[0]), expected / expected.sum(), rtol=1e-12)
  # OMD uses P(y > pi_t) instead
  c = A.run('omd', t, tau, 1, schedule='constant', eta=eta, log_pi0=np.log(pi)[None])
  expected = pi ** (1 - eta * tau) * g.mu[0] ** (eta * tau) * np.exp(eta * g.P[0] @ pi)
  np.testing.assert_allclose(np.exp(c.log_pi[0]), expected / expected.sum(), rtol=1e-12)


def test_step_size_schedules():
  t = np.arange(4.0)
  np.testing.assert_allclose(A.step_size('theory', t, 0.5, None), 2 / (0.5 * (t + 2)))
  np.testing.assert_allclose(A.step_size('inverse_sqrt', t, 0.5, 0.2), 0.2 / np.sqrt(t + 1))
  np.testing.assert_allclose(A.step_size('constant', t, 0.5, 0.2), 0.2)
  with pytest.raises(ValueError):
    A.step_size('cosine', t, 0.5, 0.2)


def test_exploitability_and_kl_match_exact():
  g, tau = _game(3), 0.2
  pi = np.random.default_rng(4).dirichlet(np.ones(6))
  t = A.tables(g.P, g.mu)
  assert float(A.exploitability(t, np.log(pi)[None], tau)) == pytest.approx(
      exact.exploitability(g.P, pi, g.mu, tau, g.rho), abs=1e-12)
  assert float(A.exploitability0(t, np.log(pi)[None])) == pytest.approx(
      exact.exploitability(g.P, pi, g.mu, 0.0, g.rho), abs=1e-12)
  assert float(A.kl(np.log(pi)[None], t.log_mu, t.rho)) == pytest.approx(exact.kl(pi, g.mu[0]), abs=1e-12)


def _one_step_gap(kl, taus):
  """[games, T]: KL_{t+1} - ((1 - eta_t tau) KL_t + 2 eta_t^2), eta_t = 2 / (tau (t + 2)); <= 0 where Theorem 1's
  one-step inequality holds."""
  t = np.arange(kl.shape[1] - 1)[None]
  eta = 2.0 / (taus[:, None] * (t + 2.0))
  return kl[:, 1:] - ((1.0 - eta * taus[:, None]) * kl[:, :-1] + 2.0 * eta ** 2)


def test_theorem_1_bound_on_100_random_games():
  """KL(pi*_tau, pi_T) <= 8 / (tau^2 (T + 1)) for T = 0..10,000, eta_t = 2 / (tau (t + 2)); 3 to 50 actions; and
  the proof's one-step inequality at every step; and the rate's constant as measured, a check that fails against
  the solution of another tau and for Nash-EMA (0.058). OMD meets it too (0.0044): on the regularised game it
  converges at the same rate on these games; the theorem is proved for Nash-MD."""
  rng = np.random.default_rng(2024)
  N, T = 50, 10_000
  taus, tabs, targets, raw = [], [], [], []
  for i in range(100):
    n = int(rng.integers(3, N + 1))
    tau = float(10 ** rng.uniform(-2, 0))
    P = games.random_game(rng, n, ('uniform', 'logit')[i % 2])
    mu = games.reference_policy(n, 'dirichlet', rng, concentration=float(rng.choice([0.3, 1.0, 3.0])))
    pi, cert = exact.solve_regularized(P, mu, tau)
    assert cert.converged
    taus.append(tau)
    raw.append((P, mu))
    tabs.append(A.tables(P, mu, n=N))
    targets.append(A.pad_policy(pi, N))
  taus = np.asarray(taus)
  c = A.run_batch('nash_md', A.stack(tabs), taus, T, np.stack(targets), with_exploitability=False)
  kl = np.asarray(c.kl)
  assert kl.shape == (100, T + 1)
  bound = 8.0 / (taus[:, None] ** 2 * (np.arange(T + 1)[None] + 1.0))
  assert np.all(kl >= -1e-12)
  ratio = np.max(kl / bound)
  assert ratio <= 1.0, ratio
  print(f"max KL / bound over 100 games and T <= {T}: {ratio:.3g}")
  assert np.max(kl[:, -1]) < 1e-3  # and it converges in practice
  # The proof's inequality at every step: KL(pi*, pi_{t+1}) <= (1 - eta_t tau) KL(pi*, pi_t) + 2 eta_t^2.
  assert np.max(_one_step_gap(kl, taus)) <= 1e-12
  # The rate's constant as measured (max KL tau^2 (T + 1) / 8 = 0.0033 here; OMD 0.0044, Nash-EMA 0.058), pinned
  # with a margin; not vacuous: the same iterates measured against the solution of another tau (2 tau) break it.
  assert ratio <= 0.01, ratio
  big = np.argsort(taus)[-5:]  # the largest tau: a fixed KL c > 0 gives c tau^2 (T + 1) / 8, soon above 0.01
  wrong = [A.pad_policy(exact.solve_regularized(*raw[i], 2 * taus[i])[0], N) for i in big]
  c_wrong = A.run_batch('nash_md', A.stack([tabs[i] for i in big]), taus[big], T, np.stack(wrong),
                        with_exploitability=False)
  assert np.all(np.max(np.asarray(c_wrong.kl) / bound[big], axis=1) > 0.01)
  # padded actions stay at probability zero
  pis = np.exp(np.asarray(c.log_pi))
  for p, t in zip(pis, tabs):
    assert np.all(p[0][t.log_mu[0] <= A.NEG / 2] == 0.0)


def test_padding_does_not_change_the_dynamics():
  g, tau = _game(5, 4), 0.1
  pi, _ = exact.solve_regularized(g.P[0], g.mu[0], tau)
  a = A.run('nash_md', A.tables(g.P, g.mu), tau, 200, pi[None])
  b = A.run('nash_md', A.tables(g.P, g.mu, n=9), tau, 200, A.pad_policy(pi, 9))
  np.testing.assert_allclose(a.kl, b.kl, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(a.exploitability, b.exploitability, rtol=1e-10, atol=1e-14)


def test_limits_of_the_baselines():
  g, tau = _game(6), 0.2
  t = A.tables(g.P, g.mu)
  mu = g.mu[0]
  pistar, _ = exact.solve_regularized(g.P[0], mu, tau)
  # Nash-MD, OMD (small constant step), Nash-EMA converge to pi*_tau
  for name, kw in (('nash_md', {}), ('omd', dict(schedule='constant', eta=0.5)), ('nash_ema', {})):
    c = A.run(name, t, tau, 5000, pistar[None], **kw)
    assert float(c.kl[-1]) < 1e-6, name
    assert float(c.exploitability[-1]) < 1e-6, name
  # best response to mu: softmax(log mu + P mu / tau)
  br = exact.best_response(g.P[0], mu, mu, tau)
  c = A.run('best_response', t, tau, 3000)
  np.testing.assert_allclose(np.exp(c.log_pi[0]), br, atol=1e-8)
  # RLHF: pi ∝ mu exp(r / tau)
  r = exact.bt_fit(g.P[0], mu)
  c = A.run('rlhf', t, tau, 3000, reward=r[None])
  np.testing.assert_allclose(np.exp(c.log_pi[0]), exact.rlhf_policy(mu, r, tau), atol=1e-8)
  np.testing.assert_allclose(np.exp(A.rlhf_policy(np.log(mu), r, tau)), exact.rlhf_policy(mu, r, tau), atol=1e-12)


def test_self_play_is_multiplicative_weights_and_cycles_on_cyclic_games():
  P = games.cyclic(3)
  mu = np.array([0.5, 0.3, 0.2])
  t = A.tables(P, mu)
  c = A.run('self_play', t, 0.1, 1, schedule='constant', eta=0.5)
  expected = mu * np.exp(0.5 * P @ mu)
  np.testing.assert_allclose(np.exp(c.log_pi[0]), expected / expected.sum(), rtol=1e-12)
  # unregularised MWU does not converge in last iterate on rock-paper-scissors (it spirals outwards)
  c = A.run('self_play', t, 0.1, 3000, np.full((1, 3), 1 / 3), schedule='constant', eta=0.5)
  assert float(c.kl[-1]) > float(c.kl[0])
  with pytest.raises(ValueError):
    A.run('self_play', t, 0.1, 10)  # the theory schedule needs tau > 0 in the update


def test_contextual_game_runs_per_context():
  g = games.contextual([_game(7, 5), _game(8, 5)], rho=np.array([0.3, 0.7]))
  tau = 0.2
  pis, certs = exact.solve_regularized_game(g.P, g.mu, tau)
  c = A.run('nash_md', A.tables(g.P, g.mu, g.rho), tau, 2000, pis)
  assert float(c.kl[0]) == pytest.approx(exact.kl(pis, g.mu, g.rho))
  assert float(c.kl[-1]) < 1e-6
  assert float(c.exploitability[0]) == pytest.approx(exact.exploitability(g.P, g.mu, g.mu, tau, g.rho), abs=1e-12)


@pytest.mark.parametrize('tau', [0.005, 0.01])
def test_dice_rlhf_is_exploitable_and_nash_md_is_not(tau):
  P, mu = games.dice(), np.array([0.7, 0.2, 0.1])
  r = exact.bt_fit(P, mu)  # reward model fitted on pairs drawn from mu
  pi_rlhf = exact.rlhf_policy(mu, r, tau)
  assert exact.exploitability(P, pi_rlhf, mu, 0.0) >= 0.05
  assert exact.exploitability(P, pi_rlhf, mu, tau) >= 0.05
  # with uniformly sampled pairs the BT fit is flat and RLHF returns mu: the answer depends on the sampling
  np.testing.assert_allclose(exact.rlhf_policy(mu, exact.bt_fit(P), tau), mu, atol=1e-10)
  pistar, _ = exact.solve_regularized(P, mu, tau)
  c = A.run('nash_md', A.tables(P, mu), tau, 10_000, pistar[None])
  e = np.asarray(c.exploitability)
  assert e[-1] < 1e-8 and e[-1] < e[100] < e[0]
  assert exact.exploitability(P, np.exp(c.log_pi[0]), mu, 0.0) < 0.02  # close to the uniform Nash of the dice


def test_float32_path_runs():
  g, tau = _game(9), 0.5
  with jax.enable_x64(False):
    t = A.tables(g.P, g.mu)
    c = A.run('nash_md', t, tau, 500)
    assert c.log_pi.dtype == np.float32
  assert np.isfinite(np.asarray(c.kl)).all()
  assert abs(float(np.exp(c.log_pi).sum()) - 1.0) < 1e-5
