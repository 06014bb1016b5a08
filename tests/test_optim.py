"""Optimizers and learning-rate schedules from config: the rates step by step, clipping and both optimizers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.config import OptimConfig
from nlhf_jax.training import optim

PEAK = 1e-2


def _rates(cfg, num_steps, upto):
  lr = optim.schedule(cfg, num_steps)
  return np.array([float(lr(t)) for t in range(upto)])


def test_warmup_then_cosine_to_the_end_rate():
  cfg = OptimConfig(learning_rate=PEAK, schedule='cosine', warmup_steps=4, end_lr_factor=0.1)
  r = _rates(cfg, 20, 25)
  np.testing.assert_allclose(r[:5], PEAK * np.arange(5) / 4, rtol=1e-6)  # 0, 1/4, ..., peak at step 4
  t = np.arange(4, 21)
  expected = PEAK * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (t - 4) / 16)))
  np.testing.assert_allclose(r[4:21], expected, rtol=1e-5)
  np.testing.assert_allclose(r[20:], 0.1 * PEAK, rtol=1e-5)  # held at the end rate after the horizon


def test_linear_and_constant_decay():
  lin = _rates(OptimConfig(learning_rate=PEAK, schedule='linear', warmup_steps=0, end_lr_factor=0.0), 10, 12)
  np.testing.assert_allclose(lin[:11], PEAK * (1 - np.arange(11) / 10), atol=1e-9)
  const = _rates(OptimConfig(learning_rate=PEAK, schedule='constant', warmup_steps=2), 10, 12)
  np.testing.assert_allclose(const, [0, PEAK / 2] + [PEAK] * 10, rtol=1e-6)


def test_decay_steps_fix_the_horizon_whatever_the_run_length():
  cfg = OptimConfig(learning_rate=PEAK, schedule='cosine', warmup_steps=2, decay_steps=10)
  np.testing.assert_array_equal(_rates(cfg, 5, 10), _rates(cfg, 40, 10))
  plain = dataclasses.replace(cfg, decay_steps=0)
  np.testing.assert_array_equal(_rates(cfg, 40, 10), _rates(plain, 10, 10))
  assert not np.array_equal(_rates(plain, 5, 10), _rates(plain, 40, 10))


def _one_update(cfg, grads):
  tx = optim.make_optimizer(cfg, 10)
  params = {'w': jnp.zeros(4), 'm': jnp.zeros((3, 2))}
  state = tx.init(params)
  _, state = tx.update(grads, state, params)
  return state


def test_global_norm_clipping_scales_the_gradient_the_optimizer_sees():
  g = {'w': jnp.array([3.0, 0.0, 4.0, 0.0]), 'm': jnp.zeros((3, 2))}  # global norm 5
  cfg = OptimConfig(learning_rate=PEAK, schedule='constant', grad_clip_norm=1.0, b2=0.5)
  clipped = _one_update(cfg, g)
  unclipped = _one_update(dataclasses.replace(cfg, grad_clip_norm=0.0), g)
  nu = lambda s: jax.tree.leaves([x.nu for x in jax.tree.leaves(s, is_leaf=lambda x: hasattr(x, 'nu'))
                                  if hasattr(x, 'nu')])[1]  # the second moment of 'w'
  np.testing.assert_allclose(nu(unclipped), 0.5 * np.array([9.0, 0, 16.0, 0]), rtol=1e-6)
  np.testing.assert_allclose(nu(clipped), 0.5 * np.array([9.0, 0, 16.0, 0]) / 25, rtol=1e-6)


@pytest.mark.parametrize('name', ['adamw', 'adafactor'])
def test_both_optimizers_minimise_a_quadratic(name):
  cfg = OptimConfig(name=name, learning_rate=0.05, schedule='constant', grad_clip_norm=0.0)
  tx = optim.make_optimizer(cfg, 200)
  target = {'w': jnp.arange(4.0), 'm': jnp.ones((8, 4))}
  loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
  params = jax.tree.map(lambda t: 3.0 * t + 2.0, target)  # non-zero: Adafactor scales steps by parameter RMS
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return jax.tree.map(jnp.add, params, updates), state

  start = float(loss(params))
  for _ in range(200):
    params, state = step(params, state)
  assert float(loss(params)) < 0.05 * start


def test_a_warmup_longer_than_the_run_is_reported(caplog):
  cfg = OptimConfig(learning_rate=3e-3, warmup_steps=500)
  with caplog.at_level('WARNING', logger='nlhf_jax.training.optim'):
    optim.warn_if_unusual(cfg, 4)
    assert ('config.optim.warmup_steps=500 >= config.train.num_steps=4: the run ends during the warmup, so the '
            'learning rate only rises, to 1.8e-05 at the last of the 4 steps (1% of config.optim.learning_rate=0.003), '
            'and never decays; set warmup_steps below num_steps (e.g. 1)') in caplog.text
    caplog.clear()
    optim.warn_if_unusual(dataclasses.replace(cfg, warmup_steps=20), 20)  # the rate reached is schedule(19)
    assert 'to 0.00285 at the last of the 20 steps (95% of config.optim.learning_rate=0.003)' in caplog.text
    assert 'e.g. 2)' in caplog.text
    caplog.clear()
    optim.warn_if_unusual(cfg, 1000)
    assert not caplog.text
