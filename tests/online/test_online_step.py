"""The online train step: mesh independence of samples, loss and gradients; EMA bookkeeping; a tiny run that
raises the judge's win rate of the policy against the reference."""
import functools

import jax
import numpy as np
import pytest

from helpers import mesh
from experiments.configs import nash_md, nash_ema, online_ipo, rlhf
from nlhf_jax.config import from_config_dict
from nlhf_jax.data import pipelines
from nlhf_jax.online import make_judge
from nlhf_jax.online.evaluate import win_rate
from nlhf_jax.online.step import OnlineStep, repeat_prompts, sampling_config
from nlhf_jax.training import optim
from nlhf_jax.trainer import loop, tasks
from nlhf_jax.trainer.tasks import get_task

pytestmark = pytest.mark.slow


def random_reward_model(cfg, m):
  """A frozen Bradley-Terry judge with random (non-zero) parameters, sharded on mesh m by the rule table."""
  from flax import nnx

  from nlhf_jax.distributed import named, param_specs
  from nlhf_jax.models.judges import RewardModel
  from nlhf_jax.online.judges import model_judge
  graphdef, params = nnx.split(RewardModel(cfg.model, nnx.Rngs(7)))
  leaves, tree = jax.tree.flatten(nnx.to_pure_dict(params))
  keys = jax.random.split(jax.random.key(8), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  params['head'] = 0.01 * params['head']  # rewards of order 0.1: the loss stays where float32 resolves 1e-5
  params = jax.device_put(params, named(m, param_specs(nnx.split(nnx.eval_shape(
      lambda: RewardModel(cfg.model, nnx.Rngs(0))))[1])))
  return model_judge('reward_model', graphdef, params)


def setup(c, m):
  cfg = from_config_dict(c, m.size)
  task = get_task(cfg.train.objective)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  run = tasks.setup(cfg, task, tx, m)
  graphdef, init_fn, shardings = run.graphdef, run.init, run.shardings
  state = jax.jit(init_fn, out_shardings=shardings)(cfg.seed)
  if cfg.online.judge == 'reward_model':
    judge = random_reward_model(cfg, m)
  else:
    judge = make_judge('oracle', m, oracle=cfg.online.oracle)
  step = OnlineStep(cfg, graphdef, tx, optim.schedule(cfg.optim, 10), judge, (2,), m)
  frozen = {'reference': jax.jit(init_fn, out_shardings=shardings)(cfg.seed + 1).params, 'judge': judge.params}
  data = pipelines.make_iterator(cfg.data, 'prompts', cfg.seed, cfg.train.batch_size, slice(None))
  return cfg, graphdef, state, step, frozen, next(data), shardings


@pytest.mark.parametrize('config', [nash_md, rlhf])
def test_samples_loss_and_grads_match_across_meshes(config):
  """nash_md with a programmatic judge, rlhf with a (sharded) learned reward model: one device and
  (data=2, tensor=4) draw the same samples and give the same loss and gradients."""
  c = config.get_config('tiny')
  c.train.batch_size = 8
  c.online.judge_checkpoint = '-' if c.online.judge == 'reward_model' else ''  # built in memory instead
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
  np.testing.assert_allclose(o1['pref'], o2['pref'], atol=1e-5)
  if 'reward' in o1:
    assert np.std(o1['reward']) > 1e-4
    np.testing.assert_allclose(o1['reward'], o2['reward'], atol=1e-5)
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


def mixture_logprobs(graphdef, params, ref_params, batch, sample, beta):
  """log pi^beta(y_n | x, y_<n) of a sampled response, by full forward passes of policy and reference:
  log_softmax((1 - beta) logits_policy + beta logits_ref) at the sampled tokens (0 at padding)."""
  from flax import nnx

  def logits(p):
    tokens = np.concatenate([batch['prompt'], sample['tokens']], 1)
    mask = np.concatenate([batch['prompt_mask'], sample['mask']], 1)
    out, _ = nnx.merge(graphdef, p)(tokens[:, :-1], mask[:, :-1])
    return out[:, batch['prompt'].shape[1] - 1:]

  mixed = jax.nn.log_softmax((1 - beta) * logits(params) + beta * logits(ref_params), axis=-1)
  lp = np.take_along_axis(np.asarray(mixed), sample['tokens'][..., None], axis=-1)[..., 0]
  return np.where(sample['mask'], lp, 0.0)


def test_ipo_md_draws_both_samples_from_the_mixture():
  """Both responses of ipo_md come from pi^beta: the sampler's per-token log-probabilities equal the mixture's
  recomputed by full forward passes (and not the policy's), for y and y'."""
  c = online_ipo.get_config('tiny,md')
  c.mesh.update(data=8)
  c.online.beta = 0.5
  cfg, graphdef, state, step, frozen, batch, _ = setup(c, mesh(data=8))
  assert cfg.train.objective == 'ipo_md'
  loss, grads, out = jax.device_get(jax.jit(step.loss_and_grads)(state, frozen, batch))
  assert np.isfinite(float(loss)) and (out['y']['tokens'] != out['y2']['tokens']).any()
  params, ref = jax.device_get((state.params, frozen['reference']))
  for name in ('y', 'y2'):
    sample = out[name]
    np.testing.assert_allclose(sample['logprobs'], mixture_logprobs(graphdef, params, ref, batch, sample, 0.5),
                               atol=1e-4)
    policy_lp = mixture_logprobs(graphdef, params, ref, batch, sample, 0.0)
    assert np.abs(sample['logprobs'] - policy_lp).max() > 1e-2


def test_nash_ema_opponent_is_sampled_from_the_ema_parameters():
  """y' of nash_ema is a sample of the policy with the EMA parameters theta_bar (and y one of pi_theta): the
  sampler's per-token log-probabilities of y' equal theta_bar's recomputed by full forward passes, not theta's
  and not mu's. theta_bar is moved away from theta first, so that the three models differ."""
  c = nash_ema.get_config('tiny')
  c.mesh.update(data=8)
  cfg, graphdef, state, step, frozen, batch, _ = setup(c, mesh(data=8))
  leaves, tree = jax.tree.flatten(state.extras['ema'])
  keys = jax.random.split(jax.random.key(3), len(leaves))
  ema = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  state = state.replace(extras={'ema': ema})
  loss, grads, out = jax.device_get(jax.jit(step.loss_and_grads)(state, frozen, batch))
  assert np.isfinite(float(loss))
  params, ema, ref = jax.device_get((state.params, ema, frozen['reference']))
  y, y2 = out['y'], out['y2']
  np.testing.assert_allclose(y['logprobs'], mixture_logprobs(graphdef, params, ref, batch, y, 0.0), atol=1e-4)
  np.testing.assert_allclose(y2['logprobs'], mixture_logprobs(graphdef, ema, ref, batch, y2, 0.0), atol=1e-3)
  for other in (params, ref):
    assert np.abs(y2['logprobs'] - mixture_logprobs(graphdef, other, ref, batch, y2, 0.0)).max() > 1e-2


def test_step_logprobs_are_the_samplers_at_temperature_and_top_p():
  """At temperature 0.7 with top-p 0.9 the log-probabilities the step differentiates are those of the distribution
  sampled: the sampler's own (tempered, filtered, from the KV-cached decode) for every token of y, and far from the
  untempered, unfiltered log pi_theta."""
  from flax import nnx

  from nlhf_jax.models.logprobs import response_logprobs
  c = nash_md.get_config('tiny')
  c.mesh.update(data=8)
  c.online.sampling.update(temperature=0.7, top_p=0.9)
  cfg, graphdef, state, step, frozen, batch, _ = setup(c, mesh(data=8))
  _, _, out = jax.device_get(jax.jit(step.loss_and_grads)(state, frozen, batch))
  y = out['y']
  assert y['mask'].sum() > 8 * 4
  np.testing.assert_allclose(out['lp'], y['logprobs'], atol=1e-4)
  plain = response_logprobs(nnx.merge(graphdef, state.params), batch['prompt'], batch['prompt_mask'], y['tokens'],
                            y['mask'])
  assert np.abs(np.asarray(plain) - out['lp'])[y['mask']].mean() > 0.05


def test_several_samples_per_prompt():
  """samples_per_prompt=2: each prompt gets two different responses (own keys), and the step trains on all."""
  c = nash_md.get_config('tiny')
  c.mesh.update(data=8)
  c.train.batch_size = 8
  c.online.samples_per_prompt = 2
  cfg, _, state, step, frozen, batch, _ = setup(c, mesh(data=8))
  loss, grads, out = jax.device_get(jax.jit(step.loss_and_grads)(state, frozen, batch))
  y = out['y']['tokens']
  assert y.shape[0] == 16 and np.isfinite(float(loss))
  assert all((y[2 * i] != y[2 * i + 1]).any() for i in range(8))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


def test_nash_ema_resume_is_bitwise(tmp_path):
  """An online objective with sampling randomness and EMA extras: 6 straight steps (checkpoints at 3 and 6);
  a run restarted from the step-3 checkpoint alone ends bitwise where the straight run did."""
  import shutil
  c = nash_ema.get_config('tiny')
  c.mesh.update(data=1)
  c.online.sampling.max_new_tokens = 8
  c.train.update(batch_size=8, num_steps=6, log_every=3, checkpoint_every=3, async_checkpointing=False)
  cfg = from_config_dict(c, 1)
  full = jax.device_get(loop.train(cfg, str(tmp_path / 'full'), mesh(data=1)))
  shutil.copytree(tmp_path / 'full' / 'checkpoints' / '3', tmp_path / 'split' / 'checkpoints' / '3')
  resumed = jax.device_get(loop.train(cfg, str(tmp_path / 'split'), mesh(data=1)))
  import json
  logged = [json.loads(x)['step'] for x in (tmp_path / 'split' / 'metrics.jsonl').read_text().splitlines()]
  assert logged == [6]  # it continued from step 3 instead of starting over
  for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state, resumed.extras, resumed.rng)),
                  jax.tree.leaves((full.params, full.opt_state, full.extras, full.rng))):
    np.testing.assert_array_equal(a, b)


def test_tiny_nash_md_run_beats_the_reference(tmp_path):
  c = nash_md.get_config('tiny')
  c.optim.learning_rate = 3e-3
  c.train.update(num_steps=80, checkpoint_every=1000, log_every=40)
  c.mesh.update(data=8)
  cfg = from_config_dict(c, 8)
  state = loop.train(cfg, str(tmp_path / 'run'), mesh(data=8))
  task = get_task('nash_md')
  m = mesh(data=8)
  run = tasks.setup(cfg, task, optim.make_optimizer(cfg.optim, 1), m)
  graphdef, init_fn, shardings = run.graphdef, run.init, run.shardings
  reference = jax.jit(init_fn, out_shardings=shardings)(cfg.seed).params  # mu = the initial policy
  judge = make_judge('oracle', m, oracle=cfg.online.oracle)
  prompts = next(pipelines.make_eval_iterator(cfg.data, 'prompts', 64, slice(None)))
  prompts.pop('valid')
  rate = jax.jit(functools.partial(win_rate, graphdef, judge=judge, judge_params=None,
                                   cfg=sampling_config(cfg, (2,))))
  key = jax.random.key(123)
  assert abs(float(rate(reference, reference, batch=prompts, key=key)) - 0.5) < 0.1
  assert float(rate(state.params, reference, batch=prompts, key=key)) > 0.6
