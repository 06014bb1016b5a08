"""Offline DPO and IPO (nlhf_jax/objectives/offline.py) through the step that nlhf-train runs (tasks.build_step):
on a problem small enough to enumerate (three tokens, one-token responses after a one-token prompt) the deep
trainers reach the optima of the tabular bandits (nlhf_jax/tabular/bandits.py) and their closed forms."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.config import ConfigError, ExperimentConfig, ModelConfig, OfflineConfig, OptimConfig, TrainConfig
from nlhf_jax.config.schema import MeshConfig
from nlhf_jax.distributed import make_mesh
from nlhf_jax.objectives import offline
from nlhf_jax.tabular import bandits
from nlhf_jax.training import optim
from nlhf_jax.trainer import tasks
from tests.helpers import subprocess_env

REPO = pathlib.Path(__file__).parents[1]
MODEL = ModelConfig(vocab_size=3, d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32, max_len=8)
COPIES = 8  # each pair repeated: the batch splits over the 8 fake devices


def _batch(pairs, preference):
  """One-token prompt (token 0), one-token responses a, b (the actions), P(a > b) per pair."""
  a, b = (np.repeat(np.array([p[i] for p in pairs], np.int32), COPIES)[:, None] for i in (0, 1))
  n = len(a)
  ones = np.ones((n, 1), bool)
  return {'prompt': np.zeros((n, 1), np.int32), 'prompt_mask': ones, 'response_a': a, 'response_a_mask': ones,
          'response_b': b, 'response_b_mask': ones,
          'preference': np.repeat(np.asarray(preference, np.float32), COPIES)}


def _train(objective, batch, num_steps=400, **offline_fields):
  """Trains from the initial policy (also mu) with the task's step; returns (u = log pi - log mu over the three
  actions after the prompt, the first and last metrics)."""
  cfg = ExperimentConfig(model=MODEL, mesh=MeshConfig(data=-1),
                         train=TrainConfig(objective=objective, batch_size=len(batch['preference'])),
                         optim=OptimConfig(learning_rate=0.03, schedule='cosine', end_lr_factor=0.01,
                                           grad_clip_norm=0.0, b2=0.999),
                         offline=OfflineConfig(**offline_fields))
  mesh = make_mesh(cfg.mesh)
  task = tasks.get_task(objective)
  tx = optim.make_optimizer(cfg.optim, num_steps)
  run = tasks.setup(cfg, task, tx, mesh)
  state = jax.jit(run.init, out_shardings=run.shardings)(0)
  initial = lambda: jax.jit(run.init, out_shardings=run.shardings)(0).params
  step, frozen = tasks.build_step(cfg, task, run, tx, optim.schedule(cfg.optim, num_steps), mesh, initial)
  step = jax.jit(step)
  first = None
  for _ in range(num_steps):
    state, metrics = step(state, frozen, batch)
    first = first or jax.device_get(metrics)
  from flax import nnx
  probe = {'prompt': np.zeros((3, 1), np.int32), 'prompt_mask': np.ones((3, 1), bool),
           'response_a': np.arange(3, dtype=np.int32)[:, None], 'response_a_mask': np.ones((3, 1), bool),
           'response_b': np.arange(3, dtype=np.int32)[:, None], 'response_b_mask': np.ones((3, 1), bool)}
  lp, _ = offline.pair_logprobs(nnx.merge(run.graphdef, state.params), probe)
  ref, _ = offline.pair_logprobs(nnx.merge(run.graphdef, frozen['reference']), probe)
  return np.asarray(lp - ref, np.float64), first, jax.device_get(metrics)


def test_ipo_reaches_the_tabular_optimum_of_three_ordered_actions(devices):
  """IPO on the total order y1 > y2 > y3 (each pair once): u = (4c/3, 2c/3, 0) + const, c = 1/(2 tau), as the
  bandit's exact least-squares optimum."""
  tau = 0.5
  u, first, last = _train('ipo', _batch(bandits.THREE_ACTIONS, [1.0, 1.0, 1.0]), tau=tau)
  expected = np.log(bandits.ipo_optimum(bandits.dataset(bandits.THREE_ACTIONS), tau))
  np.testing.assert_allclose(u - u[2], expected - expected[2], atol=2e-3)
  assert last['loss'] < first['loss'] and last['implicit_accuracy'] == 1.0
  c = 0.5 / tau
  np.testing.assert_allclose(last['implicit_reward_margin'], tau * c * 8 / 9, atol=2e-3)  # mean of tau h


def test_ipo_two_actions_and_soft_preferences_hit_the_closed_form(devices):
  """Two actions, y1 > y2: pi(y1) / pi(y2) = mu(y1) / mu(y2) exp(1/(2 tau)) (sigmoid(1/(2 tau)) under a uniform
  mu); a soft preference p: h = (2p - 1) / (2 tau), the minimiser of IPO's expected loss."""
  tau = 0.25
  u, _, _ = _train('ipo', _batch([(0, 1), (2, 1)], [1.0, 0.75]), tau=tau)
  np.testing.assert_allclose(u[0] - u[1], 0.5 / tau, atol=2e-3)
  np.testing.assert_allclose(u[2] - u[1], 0.5 / (2 * tau), atol=2e-3)
  two = bandits.ipo_optimum(bandits.dataset(bandits.TWO_ACTIONS), tau)
  np.testing.assert_allclose(two[0], 1 / (1 + np.exp(-0.5 / tau)))  # the bandit's closed form, same c


def test_dpo_goes_deterministic_and_label_smoothing_has_its_minimiser(devices):
  """Deterministic preferences: DPO's loss has no minimiser, h keeps growing (pi(y2) -> 0 relative to mu), as
  the bandit's gradient descent does. With label smoothing eps the minimiser is sigmoid(tau h) = 1 - eps."""
  tau = 1.0
  batch = _batch(bandits.TWO_ACTIONS, [1.0])
  u_short, _, _ = _train('dpo', batch, num_steps=100, tau=tau)
  u_long, _, last = _train('dpo', batch, num_steps=400, tau=tau)
  assert u_long[0] - u_long[1] > u_short[0] - u_short[1] > 3.0 and last['loss'] < 0.01
  pi, _ = bandits.fit('dpo', bandits.dataset(bandits.TWO_ACTIONS), tau, 400, learning_rate=1.0)
  assert pi[0] > 0.99  # the tabular run goes the same way
  eps = 0.2
  u, _, _ = _train('dpo', batch, tau=tau, label_smoothing=eps)
  np.testing.assert_allclose(u[0] - u[1], np.log((1 - eps) / eps) / tau, atol=2e-3)


def test_length_normalised_ipo_divides_the_log_ratios_by_the_lengths(monkeypatch):
  """The loss's margin with length_normalized: r(y) is the mean of the token log-ratios."""
  lp = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4)), jnp.float32)
  mask_a = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  mask_b = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)
  batch = {'response_a_mask': mask_a, 'response_b_mask': mask_b,
           'reference_logprob_a': jnp.zeros(2), 'reference_logprob_b': jnp.zeros(2)}
  # The policy's sequence log-probabilities as pair_logprobs gives them: sums over each response's tokens.
  sums = (jnp.where(mask_a, lp, 0).sum(-1), jnp.where(mask_b, lp, 0).sum(-1))
  monkeypatch.setattr(offline, 'pair_logprobs', lambda model, b: sums)
  h, r_a, r_b = offline.margins(None, batch, length_normalized=True)
  np.testing.assert_allclose(r_a, [lp[0, :2].mean(), lp[1].mean()], rtol=1e-6)
  np.testing.assert_allclose(r_b, [lp[0, 0], lp[1, :3].mean()], rtol=1e-6)
  np.testing.assert_allclose(h, r_a - r_b, rtol=1e-6)


@pytest.mark.parametrize('field, value, message', [
    ('tau', 0.0, r'config.offline.tau=0.0: must be > 0'),
    ('label_smoothing', 0.5, r'config.offline.label_smoothing=0.5: must be in \[0, 0.5\)'),
    ('length_normalized', True, r'only ipo has a length-normalised variant'),
])
def test_offline_config_errors(field, value, message):
  from experiments.configs import dpo
  from nlhf_jax.config import from_config_dict
  c = dpo.get_config('tiny')
  c.offline[field] = value
  with pytest.raises(ConfigError, match=message):
    from_config_dict(c)


@pytest.mark.slow
def test_nlhf_train_runs_and_resumes_dpo_and_ipo(tmp_path):
  """dpo.py:tiny and ipo.py:tiny from nlhf-train, stopped and continued: the second run resumes."""
  script = pathlib.Path(sys.executable).parent / 'nlhf-train'
  for name in ('dpo', 'ipo'):
    workdir = tmp_path / name
    for steps in (4, 8):
      out = subprocess.run([str(script), f'--config=experiments/configs/{name}.py:tiny', f'--workdir={workdir}',
                            f'--config.train.num_steps={steps}', '--config.train.log_every=2',
                            '--config.train.checkpoint_every=4', '--config.optim.warmup_steps=0'],
                           capture_output=True, text=True, timeout=300, cwd=REPO, env=subprocess_env(8))
      assert out.returncode == 0, out.stderr[-3000:]
    assert 'resumed from step 4' in out.stderr
    rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [2, 4, 6, 8]
    for key in ('loss', 'implicit_reward_margin', 'implicit_accuracy', 'logratio_preferred', 'logratio_other'):
      assert all(np.isfinite(r[key]) for r in rows), key


def test_cached_reference_logprobs_train_as_mu_on_the_fly(tmp_path, devices):
  """offline.reference_logprobs='cached': mu's log-probabilities computed once per split, written beside the data
  (here reference_cache_dir), give the losses and validation metrics of mu run in every step; a second run reads
  the file, a damaged file is computed again."""
  from experiments.configs import dpo
  from nlhf_jax.config import from_config_dict
  from nlhf_jax.trainer import loop, reference_cache
  cache = tmp_path / 'cache'

  def cfg(mode):
    c = dpo.get_config('tiny')
    c.data.num_examples = 48
    c.train.update(num_steps=3, log_every=1, checkpoint_every=3, eval_every=3, eval_batches=2,
                   async_checkpointing=False)
    c.offline.update(reference_logprobs=mode, reference_cache_dir=str(cache))
    return from_config_dict(c, num_devices=jax.device_count())

  rows = {}
  for mode in ('on_the_fly', 'cached'):
    loop.train(cfg(mode), str(tmp_path / mode))
    rows[mode] = [json.loads(line) for line in (tmp_path / mode / 'metrics.jsonl').read_text().splitlines()]
  files = sorted(cache.iterdir())
  assert [f.name.split('-')[1] for f in files] == sorted(['train', 'validation']), files
  for a, b in zip(rows['on_the_fly'], rows['cached']):
    for key in ('loss', 'implicit_reward_margin', 'logratio_preferred', 'logratio_other', 'val/loss'):
      if key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
  assert 'val/loss' in rows['cached'][-1]

  c = cfg('cached')
  mesh = make_mesh(c.mesh)
  task = tasks.get_task('dpo')
  run = tasks.setup(c, task, optim.make_optimizer(c.optim, 3), mesh)
  mu = jax.jit(run.init, out_shardings=run.shardings)(c.seed).params
  path = [f for f in files if '-train-' in f.name][0]
  before = path.stat().st_mtime_ns
  table = reference_cache.load_or_compute(c, '', run.graphdef, mu, mesh, 'train')
  assert path.stat().st_mtime_ns == before  # read, not computed again
  assert table.shape == (48, 2) and np.all(table < 0)
  path.write_bytes(b'damaged')
  again = reference_cache.load_or_compute(c, '', run.graphdef, mu, mesh, 'train')
  np.testing.assert_array_equal(again, table)
  assert np.load(path)['logprobs'].shape == (48, 2)  # written again whole
  with pytest.raises(ConfigError, match=r"reference_logprobs='sometimes': use one of on_the_fly, cached"):
    c2 = dpo.get_config('tiny')
    c2.offline.reference_logprobs = 'sometimes'
    from_config_dict(c2)
