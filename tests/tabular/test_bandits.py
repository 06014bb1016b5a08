"""IPO and DPO on the bandit examples of the IPO paper (docs/math.md sections 5 and 7)."""
import jax
import numpy as np
import pytest
from scipy import special

from nlhf_jax.tabular import bandits as B


@pytest.mark.parametrize('tau', [0.1, 0.5, 1.0])
def test_ipo_two_actions_optimum_is_sigmoid_half_over_tau(tau):
  d = B.dataset(B.TWO_ACTIONS)
  np.testing.assert_allclose(B.ipo_optimum(d, tau)[0], special.expit(0.5 / tau), rtol=1e-12)
  with jax.enable_x64(True):
    pi, _ = B.fit('ipo', d, tau, 2000, 0.1)
  assert float(pi[0]) == pytest.approx(special.expit(0.5 / tau), abs=1e-9)


def test_dpo_two_actions_goes_deterministic_for_every_tau():
  d = B.dataset(B.TWO_ACTIONS)
  with jax.enable_x64(True):
    for tau in (0.1, 1.0):
      _, path = B.fit('dpo', d, tau, 20_000, 1.0)
      p = np.asarray(path[:, 0])
      assert np.all(np.diff(p) >= 0)  # monotone towards y1
      assert p[-1] > 0.99 and p[-1] > special.expit(0.5 / tau)
      # the loss has no minimiser: it keeps falling as the margin grows
      losses = [float(B.dpo_loss(np.array([k, 0.0]), np.log([0.5, 0.5]), d, tau)) for k in (1, 10, 100)]
      assert losses[0] > losses[1] > losses[2] > 0


def test_ipo_three_actions_total_order_closed_form():
  tau = 0.25
  c = 0.5 / tau
  u = np.array([4 * c / 3, 2 * c / 3, 0.0])
  expected = np.exp(u) / np.exp(u).sum()
  d = B.dataset(B.THREE_ACTIONS)
  np.testing.assert_allclose(B.ipo_optimum(d, tau), expected, rtol=1e-12)
  with jax.enable_x64(True):
    pi, _ = B.fit('ipo', d, tau, 3000, 0.1)
    pd, _ = B.fit('dpo', d, tau, 3000, 1.0)
  np.testing.assert_allclose(np.asarray(pi), expected, atol=1e-9)
  assert float(pd[0]) > 0.99  # DPO: deterministic on the action that never loses


def test_ipo_partial_data_and_reference_policy():
  tau = 0.5
  d = B.dataset(B.THREE_ACTIONS_PARTIAL)
  ref = np.array([0.2, 0.3, 0.5])
  pi = B.ipo_optimum(d, tau, ref)
  h = np.log(pi / ref)
  assert h[0] - h[1] == pytest.approx(1 / (2 * tau)) and h[1] - h[2] == pytest.approx(1 / (2 * tau))
  with jax.enable_x64(True):
    pg, _ = B.fit('ipo', d, tau, 4000, 0.1, ref=ref)
  np.testing.assert_allclose(np.asarray(pg), pi, atol=1e-8)
  with pytest.raises(ValueError):
    B.fit('kto', d, tau, 10)
