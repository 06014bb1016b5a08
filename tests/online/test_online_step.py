"""The online train step: mesh independence of samples, loss and gradients; EMA bookkeeping; a tiny run that
raises the judge's win rate of the policy against the reference."""
import functools

import jax
import numpy as np
import pytest

from helpers import mesh
from experiments.configs import nash_md, nash_ema, online_ipo
from nlhf_jax.config import from_config_dict
from nlhf_jax.data import pipelines
from nlhf_jax.online import make_judge
from nlhf_jax.online.evaluate import win_rate
from nlhf_jax.online.step import OnlineStep, repeat_prompts, sampling_config
from nlhf_jax.training import loop, optim
from nlhf_jax.training.tasks import get_task

pytestmark = pytest.mark.slow


def setup(c, m):
  cfg = from_config_dict(c, m.size)
  task = get_task(cfg.train.objective)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  graphdef, init_fn, shardings = loop._initializer(task, task.make_model(cfg), tx, m)
  state = jax.jit(init_fn, out_shardings=shardings)(cfg.seed)
  judge = make_judge('oracle', m, oracle=cfg.online.oracle)
  step = OnlineStep(cfg, graphdef, tx, optim.schedule(cfg.optim, 10), judge, 2, m)
  frozen = {'reference': jax.jit(init_fn, out_shardings=shardings)(cfg.seed + 1).params, 'judge': None}
  data = pipelines.make_iterator(cfg.data, 'prompts', cfg.seed, cfg.train.batch_size, slice(None))
  return cfg, graphdef, state, step, frozen, next(data), shardings


def test_samples_loss_and_grads_match_across_meshes():
  c = nash_md.get_config('tiny')
  c.train.batch_size = 8
  results = []
  for m in (mesh(data=1), mesh(data=2, tensor=4)):
    c.mesh.update(data=m.shape['data'], fsdp=1, tensor=m.shape['tensor'])
    _, _, state, step, frozen, batch, _ = setup(c, m)
    batch = jax.device_put(batch, jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp'))))
    loss, grads, out = jax.jit(step.loss_and_grads)(state, frozen, batch)
    results.append(jax.device_get((loss, grads, out)))
  (l1, g1, o1), (l2, g2, o2) = results
  np.testing.assert_array_equal(o1['y']['tokens'], o2['y']['tokens'])
  np.testing.assert_array_equal(o1['y2']['tokens'], o2['y2']['tokens'])
  assert o1['y2']['mask'].sum() > 0 and (o1['y']['tokens'] != o1['y2']['tokens']).any()
  np.testing.assert_allclose(l1, l2, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_repeat_prompts_gives_distinct_example_indices():
  batch = {'prompt': np.arange(6).reshape(3, 2), 'example_index': np.array([4, 7, 9], np.int32)}
  out = repeat_prompts(batch, 2)
  np.testing.assert_array_equal(out['example_index'], [8, 9, 14, 15, 18, 19])
  np.testing.assert_array_equal(out['prompt'][::2], batch['prompt'])


def test_nash_ema_updates_the_ema_parameters():
  c = nash_ema.get_config('tiny')
  c.mesh.update(data=8)
  cfg, _, state, step, frozen, batch, shardings = setup(c, mesh(data=8))
  before = jax.device_get(state.extras['ema'])
  new, metrics = jax.jit(step)(state, frozen, batch)
  expected = jax.tree.map(lambda e, p: cfg.online.ema_rate * e + (1 - cfg.online.ema_rate) * p, before,
                          jax.device_get(new.params))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(jax.device_get(new.extras['ema']))):
    np.testing.assert_allclose(a, b, atol=1e-7)
  assert np.isfinite(float(metrics['loss']))


def test_ipo_md_draws_both_samples_from_the_mixture():
  c = online_ipo.get_config('tiny,md')
  c.mesh.update(data=8)
  cfg, _, state, step, frozen, batch, _ = setup(c, mesh(data=8))
  assert cfg.train.objective == 'ipo_md'
  loss, grads, out = jax.jit(step.loss_and_grads)(state, frozen, batch)
  assert np.isfinite(float(loss)) and (np.asarray(out['y']['tokens']) != np.asarray(out['y2']['tokens'])).any()


def test_tiny_nash_md_run_beats_the_reference(tmp_path):
  c = nash_md.get_config('tiny')
  c.optim.learning_rate = 3e-3
  c.train.update(num_steps=80, checkpoint_every=1000, log_every=40)
  c.mesh.update(data=8)
  cfg = from_config_dict(c, 8)
  state = loop.train(cfg, str(tmp_path / 'run'), mesh(data=8))
  task = get_task('nash_md')
  m = mesh(data=8)
  graphdef, init_fn, shardings = loop._initializer(task, task.make_model(cfg), optim.make_optimizer(cfg.optim, 1), m)
  reference = jax.jit(init_fn, out_shardings=shardings)(cfg.seed).params  # mu = the initial policy
  judge = make_judge('oracle', m, oracle=cfg.online.oracle)
  prompts = next(pipelines.make_eval_iterator(cfg.data, 'prompts', 64, slice(None)))
  prompts.pop('valid')
  rate = jax.jit(functools.partial(win_rate, graphdef, judge=judge, judge_params=None,
                                   cfg=sampling_config(cfg, 2)))
  key = jax.random.key(123)
  assert abs(float(rate(reference, reference, batch=prompts, key=key)) - 0.5) < 0.1
  assert float(rate(state.params, reference, batch=prompts, key=key)) > 0.6
