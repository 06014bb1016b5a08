"""The successors of Nash-MD (inpo, comal, mpo, sppo, extragradient; docs/math.md section 8).

Their losses on an enumerated problem (vocabulary 3, two generated tokens: 9 responses, a policy is a table of
logits for the first token and, for each first token, for the second): each gradient estimate averages to the
exact gradient of the paper's objective, and the pair losses of inpo, comal and mpo are minimised exactly by the
tabular laboratory's step of the same algorithm. Then the online step: each objective trains on its tiny config,
pi_t is refreshed and the prox centre or magnet reset at the right steps, a killed comal run resumes bitwise, and
the configs and the pipeline accept them.
"""
import itertools
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.objectives import online, successors
from nlhf_jax.tabular import algorithms

V = 3
SEQS = np.array(list(itertools.product(range(V), repeat=2)))  # [9, 2]
N = len(SEQS)


def token_logprobs(theta, seqs=SEQS):
  """theta = (first [V], second [V, V]); per-token log-probabilities [n, 2] of seqs [n, 2]."""
  first, second = theta
  lp1 = jax.nn.log_softmax(first)[seqs[:, 0]]
  lp2 = jax.nn.log_softmax(second[seqs[:, 0]], axis=-1)[jnp.arange(seqs.shape[0]), seqs[:, 1]]
  return jnp.stack([lp1, lp2], axis=1)


def seq_logprobs(theta):
  return token_logprobs(theta).sum(1)


def as_tables(log_p):
  """The token tables of a distribution over the 9 responses (an autoregressive policy can hold any)."""
  log_p = jnp.asarray(log_p).reshape(V, V)
  first = jax.scipy.special.logsumexp(log_p, axis=1)
  return first, log_p - first[:, None]


def problem(seed):
  """(theta, theta_t, ref, P): the trained policy, pi_t, the KL reference and a random preference P [9, 9] with
  P + P^T = 1."""
  rng = np.random.default_rng(seed)
  tables = [(jnp.asarray(rng.normal(size=V)), jnp.asarray(rng.normal(size=(V, V)))) for _ in range(3)]
  upper = rng.uniform(size=(N, N))
  P = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(N)
  return (*tables, jnp.asarray(P))


def draw(theta, key, shape):
  return jax.random.choice(key, N, shape, p=jnp.exp(seq_logprobs(theta)))


def assert_unbiased(per_sample_grads, exact):
  for g_samples, g_exact in zip(jax.tree.leaves(per_sample_grads), jax.tree.leaves(exact)):
    estimate, stderr = g_samples.mean(0), g_samples.std(0) / np.sqrt(g_samples.shape[0])
    np.testing.assert_array_less(np.abs(estimate - g_exact), 4.5 * stderr + 1e-6)


STEPS = {'inpo': successors.inpo_step, 'comal': successors.inpo_step, 'mpo': successors.magnetic_step}


@pytest.mark.parametrize('name', ['inpo', 'mpo'])
def test_mirror_pair_gradient_matches_the_papers_objective(name):
  """y, y' ~ pi_t judged P(y > y'): the mean gradient of the pair loss equals the exact gradient of
  E_{y, y' ~ pi_t} E_{chosen, rejected} (h(chosen, rejected) - c/2)^2, the loss the papers write with the judge's
  choice first (comal's is inpo's with its prox centre as the reference)."""
  eta, tau, n = 1.5, 0.3, 100_000
  step = STEPS[name](eta, tau)
  theta, theta_t, ref, P = problem(1 if name == 'inpo' else 2)
  lp_t, lp_ref, pi_t = seq_logprobs(theta_t), seq_logprobs(ref), jnp.exp(seq_logprobs(theta_t))

  def objective(th):
    v = seq_logprobs(th) - step.anchor * lp_t - step.reference * lp_ref
    h = v[:, None] - v[None, :]  # response i chosen over response j
    chosen_first = pi_t[:, None] * pi_t[None, :] * P  # the pair drawn in either order, i chosen
    return 2.0 * jnp.sum(chosen_first * (h - step.scale / 2) ** 2)

  exact = jax.grad(objective)(theta)
  ka, kb = jax.random.split(jax.random.key(0))
  ia, ib = draw(theta_t, ka, (n,)), draw(theta_t, kb, (n,))
  seqs_a, seqs_b = jnp.asarray(SEQS)[ia], jnp.asarray(SEQS)[ib]
  anchor, reference, one = token_logprobs(theta_t), token_logprobs(ref), jnp.ones((1, 2))

  def per_pair(th, sa, sb, a, b, p):
    return successors.mirror_pair_loss(step, token_logprobs(th, sa[None]), anchor[a][None], reference[a][None], one,
                                       token_logprobs(th, sb[None]), anchor[b][None], reference[b][None], one,
                                       p[None])

  grads = jax.vmap(jax.grad(per_pair), in_axes=(None, 0, 0, 0, 0, 0))(theta, seqs_a, seqs_b, ia, ib, P[ia, ib])
  assert_unbiased(grads, exact)


@pytest.mark.parametrize('name', ['inpo', 'comal', 'mpo'])
def test_mirror_pair_loss_is_minimised_by_the_tabular_step(name):
  """The expected pair loss (every pair of pi_t enumerated) has zero gradient at the policy of the tabular
  laboratory's step of the same algorithm from pi_t (nlhf_jax/tabular/algorithms.py; comal's and mpo's reference
  is their prox centre and magnet), and a non-zero one a little away from it."""
  jax.config.update('jax_enable_x64', True)
  try:
    eta, tau = 1.5, 0.3
    step = STEPS[name](eta, tau)
    _, theta_t, ref, P = (jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t) for t in problem(3))
    lp_t, lp_ref = seq_logprobs(theta_t), seq_logprobs(ref)
    game = algorithms.Tables(P[None], lp_ref[None], jnp.ones(1))
    new = algorithms.step(name, game, lp_t[None], lp_ref[None], jnp.exp(lp_t)[None], eta, tau)[0]
    ia, ib = np.divmod(np.arange(N * N), N)
    weights = jnp.exp(lp_t[ia] + lp_t[ib])
    anchor, reference, one = token_logprobs(theta_t), token_logprobs(ref), jnp.ones((1, 2))

    def expected_loss(th):
      lp = token_logprobs(th)
      per = jax.vmap(lambda a, b, p: successors.mirror_pair_loss(
          step, lp[a][None], anchor[a][None], reference[a][None], one, lp[b][None], anchor[b][None],
          reference[b][None], one, p[None]))(ia, ib, P[ia, ib])
      return weights @ per

    at_step = jax.grad(expected_loss)(as_tables(new))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(at_step)) < 1e-10
    off = jax.grad(expected_loss)(as_tables(new + 0.2 * jnp.sin(jnp.arange(N))))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(off)) > 1e-3
  finally:
    jax.config.update('jax_enable_x64', False)


def test_sppo_gradient_matches_the_papers_objective():
  """K = 3 samples of pi_t a prompt, each one's win rate judged against the two others: the mean gradient of the
  SPPO loss equals the exact gradient of E_{y ~ pi_t} (log(pi(y) / pi_t(y)) - eta (P(y > pi_t) - 1/2))^2."""
  eta, k, n = 2.0, 3, 40_000
  theta, theta_t, _, P = problem(4)
  lp_t, pi_t = seq_logprobs(theta_t), jnp.exp(seq_logprobs(theta_t))
  win = P @ pi_t  # P(y > pi_t)

  def objective(th):
    return pi_t @ (seq_logprobs(th) - lp_t - eta * (win - 0.5)) ** 2

  exact = jax.grad(objective)(theta)
  groups = draw(theta_t, jax.random.key(1), (n, k))
  first, second = successors.pair_indices(k)
  rates = successors.win_rates(P[groups[:, first], groups[:, second]], k)  # [n, k]
  anchor, mask = token_logprobs(theta_t), jnp.ones((k, 2))

  def per_group(th, g, r):
    return successors.sppo_loss(token_logprobs(th, jnp.asarray(SEQS)[g]), anchor[g], mask, r, eta)

  grads = jax.vmap(jax.grad(per_group), in_axes=(None, 0, 0))(theta, groups, rates)
  assert_unbiased(grads, exact)


def test_win_rates_of_three_samples():
  pairs = jnp.array([[0.9, 0.2, 0.6]])  # P(y0 > y1), P(y0 > y2), P(y1 > y2)
  np.testing.assert_allclose(successors.win_rates(pairs, 3), [[(0.9 + 0.2) / 2, (0.1 + 0.6) / 2, (0.8 + 0.4) / 2]],
                             rtol=1e-6)


def online_ipo_objective(theta, mu, P, tau):
  """The online IPO loss in expectation over y, y' ~ pi_theta held fixed: sum_{y, y'} pi(y) pi(y')
  [P(y > y') (h - 1/(2 tau))^2 + P(y' > y) (-h - 1/(2 tau))^2], h = log(pi(y) / mu(y)) - log(pi(y') / mu(y'))."""
  lp = seq_logprobs(theta)
  pi = jax.lax.stop_gradient(jnp.exp(lp))
  r = lp - seq_logprobs(mu)
  h = r[:, None] - r[None, :]
  c = 1.0 / (2.0 * tau)
  return jnp.sum(pi[:, None] * pi[None, :] * (P * (h - c) ** 2 + P.T * (-h - c) ** 2))


def test_extragradient_gradient_at_the_half_step_matches_the_online_ipo_objective():
  """The gradient each half step of extragradient uses: pairs y, y' ~ pi at the point where it is taken (here the
  half step theta_{t+1/2}), the online IPO loss; its mean equals the exact gradient there."""
  tau, n = 0.5, 100_000
  theta, _, mu, P = problem(5)
  half = jax.tree.map(lambda t, g: t - 0.3 * g, theta, jax.grad(online_ipo_objective)(theta, mu, P, tau))
  exact = jax.grad(online_ipo_objective)(half, mu, P, tau)
  ka, kb = jax.random.split(jax.random.key(2))
  ia, ib = draw(half, ka, (n,)), draw(half, kb, (n,))
  ref, one = token_logprobs(mu), jnp.ones((1, 2))

  def per_pair(th, a, b, p):
    lp = token_logprobs(th, jnp.asarray(SEQS)[jnp.stack([a, b])])
    return online.ipo_loss(lp[:1], ref[a][None], one, lp[1:], ref[b][None], one, p[None], tau)

  grads = jax.vmap(jax.grad(per_pair), in_axes=(None, 0, 0, 0))(half, ia, ib, P[ia, ib])
  assert_unbiased(grads, exact)


def test_extragradient_applies_the_half_steps_gradient_from_theta_t():
  """With AdamW and the exact online IPO gradient: theta_{t+1} = theta_t + update(g(theta_{t+1/2}), s_t), where
  theta_{t+1/2} = theta_t + update(g(theta_t), s_t) and the optimizer state moves once, by g(theta_{t+1/2}); a
  plain step, a step from the half step, or a second update of the half step's state all differ."""
  tau = 0.5
  theta, _, mu, P = problem(6)
  grad = jax.jit(jax.grad(online_ipo_objective), static_argnums=3)
  tx = optax.adamw(0.05, weight_decay=0.1)
  state = tx.init(theta)
  state = tx.update(jax.tree.map(jnp.ones_like, theta), state, theta)[1]  # moments away from zero
  calls = []

  def grad_at(params, i):
    calls.append(i)
    g = grad(params, mu, P, tau)
    return g, g

  new, new_state, aux = successors.extragradient_update(tx, theta, state, grad_at)
  assert calls == [0, 1]
  g0 = grad(theta, mu, P, tau)
  half = optax.apply_updates(theta, tx.update(g0, state, theta)[0])
  g_half = grad(half, mu, P, tau)
  updates, expected_state = tx.update(g_half, state, theta)
  expected = optax.apply_updates(theta, updates)
  close = lambda a, b: all(np.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(jax.tree.leaves(a),
                                                                                  jax.tree.leaves(b)))
  assert close(new, expected) and close(new_state, expected_state) and close(aux, g_half)
  plain = optax.apply_updates(theta, tx.update(g0, state, theta)[0])
  from_half = optax.apply_updates(half, tx.update(g_half, state, half)[0])
  twice = optax.apply_updates(theta, tx.update(g_half, tx.update(g0, state, theta)[1], theta)[0])
  assert not any(close(new, other) for other in (plain, from_half, twice))


# ------------------------------------------------------------------------------------------------- the online step

SUCCESSORS = ('inpo', 'comal', 'mpo', 'sppo', 'extragradient')


SMALL_MODEL = dict(num_layers=1, d_model=32, num_heads=2, head_dim=16, mlp_dim=64)


def tiny_config(name: str, **online):
  """The tiny config of `name` on one device with a one-layer model, small enough to compile quickly: 4 prompts
  (sppo: 2 x K = 4 samples), 6 new tokens, iterations of 2 steps, the moving reference reset every 2 iterations."""
  from nlhf_jax.config.defaults import sibling
  c = sibling(os.path.join(os.path.dirname(__file__), '..', '..', 'experiments', 'configs', 'x.py'), name).get_config(
      'tiny')
  c.mesh.update(data=1)
  c.model.update(SMALL_MODEL)
  c.online.update(iteration_steps=2, prox_iterations=2, **online)
  c.online.sampling.max_new_tokens = 6
  c.train.update(batch_size=2 if name == 'sppo' else 4, num_steps=5)
  return c


def run_steps(cfg, steps: int):
  """[state after step s for s = 0..steps], the metrics of each step: the online step jitted once, mu and the
  judge as in training (mu the policy's initial parameters of another seed, the config's oracle)."""
  from helpers import mesh
  from nlhf_jax.data import pipelines
  from nlhf_jax.online import make_judge
  from nlhf_jax.online.step import OnlineStep
  from nlhf_jax.trainer import tasks
  from nlhf_jax.training import optim
  m = mesh(data=1)
  task = tasks.get_task(cfg.train.objective)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  run = tasks.setup(cfg, task, tx, m)
  init = jax.jit(run.init, out_shardings=run.shardings)
  state = init(cfg.seed)
  judge = make_judge('oracle', m, oracle=cfg.online.oracle)
  frozen = {'reference': init(cfg.seed + 1).params, 'judge': judge.params}
  step = jax.jit(OnlineStep(cfg, run.graphdef, tx, optim.schedule(cfg.optim, 10), judge, (2,), m))
  data = pipelines.make_iterator(cfg.data, 'prompts', cfg.seed, cfg.train.batch_size, slice(None))
  states, metrics = [jax.device_get(state)], []
  for _ in range(steps):
    state, out = step(state, frozen, next(data))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(out))
  return states, metrics


def same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('name', [n for n in SUCCESSORS if n != 'comal'])  # comal: the resume test below
def test_trains_and_keeps_its_iteration_state(name):
  """Five steps of the tiny config: finite losses, the parameters move; pi_t becomes the parameters after steps 2
  and 4 only (iterations of 2 steps), mpo's magnet (like comal's prox centre, the same code) after step 4 only
  (every 2 iterations), and both start at the initial parameters."""
  cfg = from_config_dict(tiny_config(name), 1)
  states, metrics = run_steps(cfg, 5)
  assert all(np.isfinite(m['loss']) for m in metrics)
  # A step's loss and gradient are exactly 0 where every sampled pair ties and the policy is pi_t (sppo's target
  # eta (P - 1/2) and log pi/pi_t both 0); every other step has a gradient. Where the policy has moved from pi_t
  # (the second of each iteration's two steps), sppo's squared loss is positive whatever the samples.
  assert all(m['grad_norm'] > 0 or (name == 'sppo' and m['loss'] == 0) for m in metrics), metrics
  if name == 'sppo':
    assert all(metrics[s]['loss'] > 0 for s in range(1, len(metrics), 2)), metrics
  assert not same(states[-1].params, states[0].params)
  keys = {'extragradient': [], 'inpo': ['pi_t'], 'sppo': ['pi_t'], 'mpo': ['magnet', 'pi_t']}[name]
  assert sorted(states[0].extras or {}) == keys
  for key in keys:
    every = 2 if key == 'pi_t' else 4
    assert same(states[0].extras[key], states[0].params)
    for s in range(1, 6):
      kept = states[s].extras[key]
      assert same(kept, states[s].params if s % every == 0 else states[s - 1].extras[key]), (key, s)
  if 'pi_t' in keys:  # log(pi / pi_t) of the samples, measured before each update: 0 where pi_t is the policy
    ratios = [abs(float(m['iterate_logratio'])) for m in metrics]
    assert all((r < 1e-5) if s % 2 == 0 else (r > 1e-4) for s, r in enumerate(ratios)), ratios


@pytest.mark.slow
def test_comal_killed_then_resumed_is_bitwise(tmp_path):
  """comal (pi_t and the prox centre in its state), iterations of 2 steps and a reset every 2 iterations, killed
  (SIGKILL) after its checkpoint of step 3 (inside an iteration, with pi_t refreshed at 2 and the prox centre
  still the initial policy) and restarted: it ends with the parameters, optimizer state and extras of an
  uninterrupted run, bitwise; the checkpoints of steps 1 to 3 hold pi_t and the prox centre of the schedule."""
  from helpers import mesh
  from multihost import launch
  from nlhf_jax.trainer import tasks
  from nlhf_jax.training import checkpointing, init, optim
  steps = 7  # the last refresh of pi_t at 6, of the prox centre at 4
  flags = (*(f'--config.model.{k}={v}' for k, v in SMALL_MODEL.items()),
           '--config.mesh.data=1', '--config.train.batch_size=4', '--config.online.sampling.max_new_tokens=6',
           '--config.online.iteration_steps=2', '--config.online.prox_iterations=2',
           f'--config.train.num_steps={steps}', '--config.train.checkpoint_every=1', '--config.train.log_every=1',
           '--config.train.keep_checkpoints=20', '--config.train.async_checkpointing=false')
  config = 'experiments/configs/comal.py:tiny'

  def start(workdir, log):
    return subprocess.Popen(launch.train_cmd(config, workdir, *flags), cwd=launch.REPO, env=launch.env(1),
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)

  launch.finish(start(tmp_path / 'full', tmp_path / 'full.log'), tmp_path / 'full.log')
  killed, log = tmp_path / 'killed', tmp_path / 'killed.log'
  proc = start(killed, log)
  t0 = time.time()
  while max(launch.checkpoint_steps(killed), default=0) < 3:
    assert proc.poll() is None and time.time() - t0 < 240, log.read_text()[-3000:]
    time.sleep(0.02)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)
  assert max(launch.checkpoint_steps(killed)) < steps  # it was killed before the end
  text = launch.finish(start(killed, tmp_path / 'final.log'), tmp_path / 'final.log')
  assert 'resumed from step' in text
  cfg = from_config_dict(tiny_config('comal'), 1)
  task = tasks.get_task('comal')
  run = tasks.setup(cfg, task, optim.make_optimizer(cfg.optim, cfg.train.num_steps), mesh(data=1))
  target = init.abstract_state(run.shardings, jax.eval_shape(run.init, 0))
  a, b = (jax.device_get(checkpointing.Checkpointer(str(w / 'checkpoints')).restore(target, steps)[0])
          for w in (tmp_path / 'full', killed))
  assert sorted(a.extras) == ['pi_t', 'prox'] and not same(a.extras['pi_t'], a.extras['prox'])
  assert same(a, b)
  early = [jax.device_get(checkpointing.Checkpointer(str(killed / 'checkpoints')).restore(target, s)[0])
           for s in (1, 2, 3)]
  assert same(early[0].extras['pi_t'], early[0].extras['prox'])  # both still the initial parameters
  assert same(early[1].extras['pi_t'], early[1].params) and same(early[2].extras['pi_t'], early[1].params)
  assert same(early[2].extras['prox'], early[0].extras['prox'])


# ------------------------------------------------------------------------------------ configs, checks and pipeline

@pytest.mark.parametrize('name', SUCCESSORS)
def test_every_variant_validates(name):
  from nlhf_jax.config.defaults import sibling
  module = sibling(os.path.join(os.path.dirname(__file__), '..', '..', 'experiments', 'configs', 'x.py'), name)
  for variant in ('tiny', 'small'):  # the others read their runs (125m, hf, laptop: judge and reference)
    cfg = from_config_dict(module.get_config(variant))
    assert cfg.train.objective == name and cfg.online.iteration_steps <= cfg.train.num_steps


@pytest.mark.parametrize('name,values,message', [
    ('sppo', {'online.samples_per_prompt': 1}, r"config.online.samples_per_prompt=1: config.train.objective='sppo' "
     r'needs K >= 2 samples per prompt'),
    ('inpo', {'online.eta': 0.0}, r'config.online.eta=0.0: must be a positive number'),
    ('mpo', {'online.eta': -1.0}, r'config.online.eta=-1.0: must be a positive number'),
    ('inpo', {'online.eta': 5.0, 'online.tau': 0.5}, r'config.online.eta=5.0 x config.online.tau=0.5 = 2.5 exceeds 1'),
    ('sppo', {'online.iteration_steps': 0}, r'config.online.iteration_steps=0: must be >= 1'),
    ('comal', {'online.prox_iterations': 0}, r'config.online.prox_iterations=0: must be >= 1 .* prox of '),
    ('mpo', {'online.tau': 0.0}, r"config.online.tau=0.0: config.train.objective='mpo' needs tau > 0"),
    ('extragradient', {'online.tau': 0.0}, r'needs tau > 0 \(the IPO target is 1 / \(2 tau\)\)'),
])
def test_bad_values_are_refused(name, values, message):
  c = tiny_config(name)
  for key, value in values.items():
    section, field = key.split('.')
    c[section][field] = value
  with pytest.raises(ConfigError, match=message):
    from_config_dict(c)


def test_magnetic_steps_take_any_eta_tau():
  """MPO's step weighs log pi_t by 1 / (1 + eta tau) > 0 whatever eta tau: no bound on their product."""
  c = tiny_config('mpo')
  c.online.update(eta=5.0, tau=0.5)
  assert from_config_dict(c).online.eta == 5.0


def test_pipeline_trains_and_evaluates_the_successors_by_name(tmp_path):
  """config.policies names them: each becomes a policy stage of its objective (sppo with its K samples, the
  iterating ones with config.policy's eta and iteration length), validated before any stage runs, and the
  evaluation (the matrix and its Nash averaging) lists them."""
  from pipeline.mini import mini_config
  from nlhf_jax.pipeline import stages
  p = mini_config()
  p.policies = ','.join(SUCCESSORS)
  configs = stages.stage_configs(p, str(tmp_path))
  stages.check_training_configs(configs, 8)
  for name in SUCCESSORS:
    assert configs[name].train.objective == name and configs[name].online.judge == 'preference_model'
  assert configs['sppo'].online.samples_per_prompt == p.policy.group_samples
  assert configs['comal'].online.iteration_steps == p.policy.iteration_steps
  assert list(configs['eval'].policy_names) == ['sft', *SUCCESSORS]
  p.policy.group_samples = 1
  with pytest.raises(ConfigError, match=r"pipeline stage 'sppo': config.online.samples_per_prompt=1"):
    stages.stage_configs(p, str(tmp_path))


def test_with_lora_the_iteration_state_holds_the_adapters_only():
  """Under LoRA the train state's pi_t and prox centre are copies of the adapters (the base stays frozen, shared
  with mu), not of the whole model."""
  from helpers import mesh
  from nlhf_jax.trainer import tasks
  from nlhf_jax.training import optim
  c = tiny_config('comal')
  c.model.lora.rank = 4
  c.online.reference_checkpoint = '/runs/sft'
  cfg = from_config_dict(c)
  run = tasks.setup(cfg, tasks.get_task('comal'), optim.make_optimizer(cfg.optim, 5), mesh(data=1))
  shapes = jax.eval_shape(run.init, 0)
  adapters = jax.tree.structure(shapes.params)
  assert run.lora and all(jax.tree.structure(shapes.extras[k]) == adapters for k in ('pi_t', 'prox'))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(shapes.extras['pi_t']) < count(run.base_target) / 4
