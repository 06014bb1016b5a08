"""The online surrogate losses against exact gradients on a problem small enough to enumerate.

Vocabulary 3, two generated tokens: a policy is a table of logits for the first token and, for each first token,
for the second. The opponent is the token-level mixture pi^beta of the (frozen) policy and mu.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.objectives import online

V = 3
SEQS = np.array(list(itertools.product(range(V), repeat=2)))  # [9, 2]


def token_logprobs(theta, seqs):
  """theta = (first [V], second [V, V]); per-token log-probabilities [N, 2] of seqs [N, 2]."""
  first, second = theta
  lp1 = jax.nn.log_softmax(first)[seqs[:, 0]]
  lp2 = jax.nn.log_softmax(second[seqs[:, 0]], axis=-1)[jnp.arange(seqs.shape[0]), seqs[:, 1]]
  return jnp.stack([lp1, lp2], axis=1)


def mixture(theta, mu, beta):
  return jax.tree.map(lambda a, b: (1 - beta) * a + beta * b, theta, mu)


def random_problem(seed):
  rng = np.random.default_rng(seed)
  theta = (jnp.asarray(rng.normal(size=V)), jnp.asarray(rng.normal(size=(V, V))))
  mu = (jnp.asarray(rng.normal(size=V)), jnp.asarray(rng.normal(size=(V, V))))
  upper = rng.uniform(size=(9, 9))
  P = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(9)
  return theta, mu, jnp.asarray(P)


def exact_objective(theta, opponent_theta, mu, P, tau):
  """P(pi_theta > pi') - tau KL(pi_theta || mu), pi' held fixed."""
  pi = jnp.exp(token_logprobs(theta, SEQS).sum(1))
  pi_opp = jnp.exp(token_logprobs(jax.lax.stop_gradient(opponent_theta), SEQS).sum(1))
  log_mu = token_logprobs(mu, SEQS).sum(1)
  return pi @ P @ pi_opp - tau * jnp.sum(pi * (jnp.log(pi) - log_mu))


def sample(theta, key, n):
  probs = jnp.exp(token_logprobs(theta, SEQS).sum(1))
  return jax.random.choice(key, 9, (n,), p=probs)


@pytest.mark.parametrize('reward_to_go', [True, False])
@pytest.mark.parametrize('beta', [0.0, 0.25, 1.0])
def test_nash_md_pg_gradient_matches_exact(beta, reward_to_go):
  tau, n = 0.3, 100_000
  theta, mu, P = random_problem(int(beta * 8) + reward_to_go)
  opp = mixture(theta, mu, beta)
  exact = jax.grad(exact_objective)(theta, opp, mu, P, tau)

  ky, ky2 = jax.random.split(jax.random.key(0))
  iy, iy2 = sample(theta, ky, n), sample(opp, ky2, n)
  seqs, pref = jnp.asarray(SEQS)[iy], P[iy, iy2]
  mask = jnp.ones((n, 2))
  ref_lp = token_logprobs(mu, seqs)

  def per_sample_loss(th, s, r, p):
    return online.nash_md_pg_loss(token_logprobs(th, s[None]), r[None], mask[:1], p[None], tau, reward_to_go)

  grads = jax.vmap(jax.grad(per_sample_loss), in_axes=(None, 0, 0, 0))(theta, seqs, ref_lp, pref)
  for g_exact, g_samples in zip(jax.tree.leaves(exact), jax.tree.leaves(grads)):
    estimate = -g_samples.mean(0)  # the loss is the negated objective
    stderr = g_samples.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(estimate - g_exact), 4.5 * stderr + 1e-6)
  # the batched loss is the mean of the per-example losses
  batched = jax.grad(lambda th: online.nash_md_pg_loss(token_logprobs(th, seqs), ref_lp, mask, pref, tau,
                                                       reward_to_go))(theta)
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b.mean(0), rtol=1e-3, atol=1e-5)  # float32 sums of 1e5 terms


def test_reward_to_go_weights_only_later_log_ratios():
  lp = jnp.array([[-1.0, -2.0, -3.0]])
  ref = jnp.array([[-1.5, -1.0, -3.5]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  terms = online.kl_penalty_terms(lp, ref, mask, reward_to_go=True)
  np.testing.assert_allclose(terms, [[0.5 - 1.0, -1.0, 0.0]])
  full = online.kl_penalty_terms(lp, ref, mask, reward_to_go=False)
  np.testing.assert_allclose(full, [[-0.5, -0.5, -0.5]])


def test_loss_value_on_hand_example():
  lp = jnp.array([[-1.0, -2.0]])
  ref = jnp.array([[-1.0, -1.0]])
  mask = jnp.ones((1, 2))
  # advantage per token with reward to go: P - 1/2 - tau * [-1, -1] = 0.3 + 0.1 = 0.4 at tau = 0.1, P = 0.8
  loss = online.nash_md_pg_loss(lp, ref, mask, jnp.array([0.8]), 0.1)
  np.testing.assert_allclose(loss, -(-1.0 * 0.4 + -2.0 * 0.4), rtol=1e-6)


def test_ipo_loss_minimiser_two_actions():
  """Two single-token actions, uniform mu, a always preferred: the IPO optimum has h = 1/(2 tau), i.e.
  pi(a) = sigmoid(1/(2 tau)) (docs/math.md section 7)."""
  tau = 0.4
  ref = jnp.log(jnp.array([[0.5]]))

  def loss(logit):
    lp = jax.nn.log_softmax(jnp.array([logit, 0.0]))
    return online.ipo_loss(lp[None, :1], ref, jnp.ones((1, 1)), lp[None, 1:], ref, jnp.ones((1, 1)),
                           jnp.array([1.0]), tau)

  logit = jax.jit(lambda x0: jax.lax.fori_loop(0, 2000, lambda _, x: x - 0.5 * jax.grad(loss)(x), x0))(0.0)
  np.testing.assert_allclose(jax.nn.sigmoid(logit), jax.nn.sigmoid(0.5 / tau), atol=1e-4)


def _expected_rlhf_gradient(theta, mu, reward, baseline_fn, tau):
  """E_{y, y'' ~ pi_theta} of the RLHF estimate's gradient, every pair enumerated with weight pi(y) pi(y'')."""
  pi = jax.lax.stop_gradient(jnp.exp(token_logprobs(theta, SEQS).sum(1)))
  iy, ib = np.divmod(np.arange(81), 9)
  seqs = jnp.asarray(SEQS)
  ref = token_logprobs(mu, seqs)

  def loss(th):
    lp = token_logprobs(th, seqs[iy])
    per = jax.vmap(lambda l, r, y, b: online.rlhf_pg_loss(l[None], r[None], jnp.ones((1, 2)), reward[y][None],
                                                          b[None], tau))(lp, ref[iy], jnp.asarray(iy),
                                                                         baseline_fn(iy, ib))
    return (pi[iy] * pi[ib]) @ per
  return jax.grad(loss)(theta)


def test_rlhf_baseline_does_not_bias_gradient():
  """The expected gradient (exact, by enumeration) is the same with the baseline r(y'') of an independent y'' as
  with none, and equals the exact gradient of E r - tau KL; a baseline that depends on y itself (r(y) / 2) changes
  it, so the check can tell a biased baseline from an unbiased one."""
  tau = 0.3
  theta, mu, _ = random_problem(21)
  reward = jnp.asarray(np.random.default_rng(6).normal(size=9))
  exact = jax.grad(exact_rlhf_objective)(theta, mu, reward, tau)
  cases = {'none': lambda iy, ib: jnp.zeros(iy.shape), 'independent': lambda iy, ib: reward[ib],
           'biased': lambda iy, ib: 0.5 * reward[iy]}
  grads = {k: _expected_rlhf_gradient(theta, mu, reward, f, tau) for k, f in cases.items()}
  gap = lambda g: max(float(jnp.abs(-a - b).max()) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)))
  assert gap(grads['none']) < 1e-5 and gap(grads['independent']) < 1e-5
  assert gap(grads['biased']) > 1e-2


def exact_rlhf_objective(theta, mu, reward, tau):
  """E_{y ~ pi_theta} r(y) - tau KL(pi_theta || mu)."""
  pi = jnp.exp(token_logprobs(theta, SEQS).sum(1))
  log_mu = token_logprobs(mu, SEQS).sum(1)
  return pi @ reward - tau * jnp.sum(pi * (jnp.log(pi) - log_mu))


@pytest.mark.parametrize('reward_to_go', [True, False])
def test_rlhf_pg_with_a_second_sample_baseline_matches_exact(reward_to_go):
  """The RLHF estimate with baseline r(y'') of an independent y'' ~ pi_theta is unbiased for the gradient of
  E r - tau KL (docs/math.md section 4)."""
  tau, n = 0.3, 100_000
  theta, mu, _ = random_problem(11 + reward_to_go)
  reward = jnp.asarray(np.random.default_rng(5).normal(size=9))
  exact = jax.grad(exact_rlhf_objective)(theta, mu, reward, tau)
  ky, kb = jax.random.split(jax.random.key(1))
  iy, ib = sample(theta, ky, n), sample(theta, kb, n)
  seqs, r, base = jnp.asarray(SEQS)[iy], reward[iy], reward[ib]
  ref_lp = token_logprobs(mu, seqs)
  mask = jnp.ones((1, 2))

  def per_sample_loss(th, s, ref, r_y, b):
    return online.rlhf_pg_loss(token_logprobs(th, s[None]), ref[None], mask, r_y[None], b[None], tau,
                               reward_to_go)

  grads = jax.vmap(jax.grad(per_sample_loss), in_axes=(None, 0, 0, 0, 0))(theta, seqs, ref_lp, r, base)
  for g_exact, g_samples in zip(jax.tree.leaves(exact), jax.tree.leaves(grads)):
    estimate, stderr = -g_samples.mean(0), g_samples.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(estimate - g_exact), 4.5 * stderr + 1e-6)


def _expected_online_ipo_gradient(logits, log_mu, P, tau):
  """The exact gradient of E_{y, y' ~ sg(pi)} [online IPO loss] for a tabular softmax policy (one token): every
  pair (y, y') enumerated with weight pi(y) pi(y'), each pair's loss the project's `ipo_loss` on a batch of one."""
  n = logits.shape[0]
  ys, y2s = np.divmod(np.arange(n * n), n)
  weights = jax.lax.stop_gradient(jnp.exp(jax.nn.log_softmax(logits)))
  w = weights[ys] * weights[y2s]

  def pair_loss(lg, y, y2, p):
    lp = jax.nn.log_softmax(lg)
    one = jnp.ones((1, 1))
    return online.ipo_loss(lp[y][None, None], log_mu[y][None, None], one, lp[y2][None, None],
                           log_mu[y2][None, None], one, p[None], tau)

  grads = jax.vmap(jax.grad(pair_loss), in_axes=(None, 0, 0, 0))(logits, ys, y2s, P[ys, y2s])
  return (w[:, None] * grads).sum(0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_online_ipo_fixed_point_is_the_regularised_nash_equilibrium(seed):
  """At pi*_tau (solved exactly by the tabular laboratory) the expected online IPO gradient vanishes; at a
  perturbed policy it does not (IPO paper section 5, docs/math.md section 5)."""
  from nlhf_jax.tabular import exact, games
  jax.config.update('jax_enable_x64', True)
  try:
    rng = np.random.default_rng(seed)
    n, tau = 5, [0.1, 0.3, 1.0][seed]
    P = games.random_game(rng, n)
    mu = rng.dirichlet(np.ones(n))
    pi_star, cert = exact.solve_regularized(P, mu, tau)
    assert cert.converged
    log_mu, Pj = jnp.asarray(np.log(mu)), jnp.asarray(P)
    at_star = _expected_online_ipo_gradient(jnp.asarray(np.log(pi_star)), log_mu, Pj, tau)
    np.testing.assert_allclose(at_star, 0.0, atol=1e-9)
    off = _expected_online_ipo_gradient(jnp.asarray(np.log(pi_star) + rng.normal(0, 0.3, n)), log_mu, Pj, tau)
    assert np.abs(off).max() > 1e-3
  finally:
    jax.config.update('jax_enable_x64', False)


def test_ipo_loss_with_a_soft_preference_on_hand_example():
  """P (h - c)^2 + (1 - P) (-h - c)^2 with h = (lp_a - ref_a) - (lp_b - ref_b), c = 1 / (2 tau)."""
  lp_a, ref_a = jnp.array([[-1.0, -0.5]]), jnp.array([[-1.2, -0.4]])
  lp_b, ref_b = jnp.array([[-2.0, -9.0]]), jnp.array([[-1.0, 0.0]])
  mask_b = jnp.array([[1.0, 0.0]])  # the second token of b is padding
  h = (-1.5 + 1.6) - (-2.0 + 1.0)
  c, p = 1 / (2 * 0.25), 0.7
  loss = online.ipo_loss(lp_a, ref_a, jnp.ones((1, 2)), lp_b, ref_b, mask_b, jnp.array([p]), 0.25)
  np.testing.assert_allclose(loss, p * (h - c) ** 2 + (1 - p) * (-h - c) ** 2, rtol=1e-6)


@pytest.mark.parametrize('temperature,top_k', [(0.7, 0), (0.7, 5)])
def test_tempered_filtered_sampling_gradient_is_exact_for_the_sampled_policy(temperature, top_k):
  """y drawn at temperature 0.7 (and through top-k 5): the expected Nash-MD-PG gradient of the online step's
  log-probabilities (`sampled_logprobs`) equals the exact gradient of P(pi_T > pi') - tau KL(pi_T || mu) for the
  distribution sampled, pi_T. A Transformer with vocabulary 8 and two generated tokens: the 64 responses are
  enumerated, each weighted by its probability under pi_T (no Monte Carlo). The untempered log pi_theta of the
  same loss (what the step used before) misses it by far more than the tolerance."""
  import dataclasses
  from flax import nnx
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.models import Transformer, preset
  from nlhf_jax.models.logprobs import response_logprobs
  from nlhf_jax.online.step import sampled_logprobs
  from nlhf_jax.sampling import SamplingConfig, filter_logits
  jax.config.update('jax_enable_x64', True)
  try:
    cfg = dataclasses.replace(ModelConfig(**preset('tiny')), vocab_size=8, d_model=32, num_layers=1, mlp_dim=64)
    graphdef, theta = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    _, mu = nnx.split(Transformer(cfg, nnx.Rngs(1)))
    theta, mu = (jax.tree.map(lambda x: 3.0 * jnp.asarray(x, jnp.float64), p) for p in (theta, mu))
    scfg = SamplingConfig(temperature=temperature, top_k=top_k, stop_ids=())
    seqs = jnp.asarray(list(itertools.product(range(8), repeat=2)), jnp.int32)
    n = seqs.shape[0]
    prompt, prompt_mask = jnp.tile(jnp.array([[5, 3, 6]], jnp.int32), (n, 1)), jnp.ones((n, 3), bool)
    mask = jnp.ones((n, 2), bool)
    pref = jnp.asarray(np.random.default_rng(0).uniform(size=n))  # P(y > pi'), the opponent held fixed
    tau = 0.3

    def exact_logprobs(params):  # log pi_T(y) from full forward logits, tempered and filtered
      logits, _ = nnx.merge(graphdef, params)(jnp.concatenate([prompt, seqs], 1)[:, :-1], jnp.ones((n, 4), bool))
      logp = jax.nn.log_softmax(filter_logits(logits[:, 2:], temperature, top_k), axis=-1)
      return jnp.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0].sum(1)

    support = np.isfinite(np.asarray(exact_logprobs(theta)))
    assert 0 < support.sum() < n if top_k else support.all()
    keep = jnp.asarray(np.flatnonzero(support))
    log_mu = response_logprobs(nnx.merge(graphdef, mu), prompt, prompt_mask, seqs, mask)

    def objective(params):
      lp = exact_logprobs(params)[keep]
      pi = jnp.exp(lp)
      return pi @ pref[keep] - tau * jnp.sum(pi * (lp - log_mu.sum(1)[keep]))

    exact = jax.grad(objective)(theta)
    weights = jax.lax.stop_gradient(jnp.exp(exact_logprobs(theta)[keep]))

    def expected_estimate(logprobs_fn):
      def loss(params):
        lp = logprobs_fn(nnx.merge(graphdef, params), prompt[keep], prompt_mask[keep], seqs[keep], mask[keep])
        per_example = jax.vmap(lambda l, r, p: online.nash_md_pg_loss(l[None], r[None], mask[:1], p[None], tau))(
            lp, log_mu[keep], pref[keep])
        return -(weights @ per_example)  # E_{y ~ pi_T} of the estimate (the loss is the negated objective)
      return jax.grad(loss)(theta)

    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(exact))
    error = lambda g: max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(exact)))
    assert error(expected_estimate(lambda *a: sampled_logprobs(*a, scfg))) < 1e-6 * scale
    assert error(expected_estimate(response_logprobs)) > 0.05 * scale  # the untempered log pi is biased
  finally:
    jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('reward_to_go', [True, False])
def test_nash_md_pg_gradient_with_eos_and_padding(reward_to_go):
  """Responses of one or two tokens: token 0 is EOS, so [0, pad] ends after one token (its second position is
  padding, masked out, whatever the policy says of it) and the 6 others [a, b] with a != 0 run to the length
  limit. The expected gradient (exact, by enumeration of the 7 responses) equals the exact gradient of
  P(pi > pi') - tau KL(pi || mu) over variable-length responses."""
  tau, pad = 0.3, 2  # the padding token is a real id: only the mask can hide it
  theta, mu, _ = random_problem(31 + reward_to_go)
  seqs = jnp.asarray([[0, pad]] + [[a, b] for a in (1, 2) for b in range(V)], jnp.int32)
  mask = jnp.asarray([[1, 0]] + [[1, 1]] * 6, jnp.float32)
  pref = jnp.asarray(np.random.default_rng(3).uniform(size=7))  # P(y > pi'), the opponent held fixed
  seq_lp = lambda th: jnp.sum(token_logprobs(th, seqs) * mask, axis=1)
  log_mu = seq_lp(mu)

  def objective(th):
    pi = jnp.exp(seq_lp(th))
    return pi @ pref - tau * jnp.sum(pi * (jnp.log(pi) - log_mu))

  np.testing.assert_allclose(jnp.exp(seq_lp(theta)).sum(), 1.0, rtol=1e-6)  # the 7 responses are all there are
  exact = jax.grad(objective)(theta)
  weights = jax.lax.stop_gradient(jnp.exp(seq_lp(theta)))
  ref_lp = token_logprobs(mu, seqs)

  def expected_loss(th):
    per = jax.vmap(lambda l, r, m, p: online.nash_md_pg_loss(l[None], r[None], m[None], p[None], tau,
                                                             reward_to_go))(token_logprobs(th, seqs), ref_lp, mask,
                                                                            pref)
    return weights @ per

  for g, e in zip(jax.tree.leaves(jax.grad(expected_loss)(theta)), jax.tree.leaves(exact)):
    np.testing.assert_allclose(-g, e, atol=1e-5)
