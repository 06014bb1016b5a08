"""Preference model and reward model: antisymmetry by construction, sharded scoring equals single-device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from helpers import mesh, tiny_config
from nlhf_jax.distributed import named, param_specs
from nlhf_jax.models.judges import PreferenceModel, RewardModel, score_pairs
from nlhf_jax.objectives import pairwise


def random_pairs(seed, batch=8, lp=6, lr=5, vocab=64):
  rng = np.random.default_rng(seed)

  def segment(length, left):
    n = rng.integers(1, length + 1, size=batch)
    pos = np.arange(length)[None]
    mask = pos >= (length - n[:, None]) if left else pos < n[:, None]
    return jnp.asarray(np.where(mask, rng.integers(4, vocab, (batch, length)), 0), jnp.int32), jnp.asarray(mask)

  return segment(lp, True), segment(lr, False), segment(lr, False)


def randomised(model_cls, seed=0):
  """A model whose every parameter (the zero-initialised head included) is random."""
  cfg = tiny_config().model
  graphdef, params = nnx.split(model_cls(cfg, nnx.Rngs(seed)))
  params = nnx.to_pure_dict(params)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return graphdef, jax.tree.unflatten(tree, leaves)


def test_preference_model_is_antisymmetric_for_random_parameters():
  for seed in range(3):
    graphdef, params = randomised(PreferenceModel, seed)
    x, a, b = random_pairs(seed)
    p_ab = score_pairs(graphdef, params, x, a, b)
    p_ba = score_pairs(graphdef, params, x, b, a)
    assert float(jnp.std(p_ab)) > 1e-3  # the test would be void if the model were constant
    np.testing.assert_array_less(jnp.abs(p_ab + p_ba - 1.0), 1e-6)
    np.testing.assert_array_equal(score_pairs(graphdef, params, x, a, a), 0.5)


def test_reward_model_pair_probability_is_bradley_terry():
  graphdef, params = randomised(RewardModel)
  x, a, b = random_pairs(1)
  model = nnx.merge(graphdef, params)
  r_a, r_b = model.reward(*x, *a), model.reward(*x, *b)
  np.testing.assert_allclose(score_pairs(graphdef, params, x, a, b), jax.nn.sigmoid(r_a - r_b), atol=1e-6)


def test_padding_inside_the_joint_sequence_is_invisible():
  """Moving padding between segments (as the layout does) gives the score of the packed sequence."""
  graphdef, params = randomised(PreferenceModel)
  model = nnx.merge(graphdef, params)
  x, a, b = random_pairs(2, batch=4)
  tokens, mask = jnp.concatenate([x[0], a[0], b[0]], 1), jnp.concatenate([x[1], a[1], b[1]], 1)
  packed = [np.asarray(t)[np.asarray(m)] for t, m in zip(tokens, mask)]
  width = tokens.shape[1]
  p_tokens = jnp.asarray([np.pad(t, (0, width - len(t))) for t in packed])
  p_mask = jnp.asarray([np.arange(width) < len(t) for t in packed])
  np.testing.assert_allclose(model.read_out(tokens, mask), model.read_out(p_tokens, p_mask), atol=1e-5)


def test_score_pairs_sharded_equals_single_device():
  graphdef, params = randomised(PreferenceModel)
  x, a, b = random_pairs(3)
  fn = jax.jit(functools.partial(score_pairs, graphdef))
  single = fn(params, x, a, b)
  m = mesh(data=2, tensor=4)
  abstract = nnx.split(nnx.eval_shape(lambda: PreferenceModel(tiny_config().model, nnx.Rngs(0))))[1]
  sharded_params = jax.device_put(params, named(m, param_specs(abstract)))
  batch_sharding = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp')))
  put = lambda seg: tuple(jax.device_put(t, batch_sharding) for t in seg)
  sharded = fn(sharded_params, put(x), put(a), put(b))
  assert len(sharded_params['head'].sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_pair_metrics_on_hand_example():
  logit = jnp.array([2.0, -1.0, 0.5, 3.0])
  label = jnp.array([1.0, 0.0, 0.0, 0.5])
  m = pairwise.pair_metrics(logit, label)
  np.testing.assert_allclose(m['accuracy'], 2 / 3, rtol=1e-6)  # the tie is not counted
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(0.5)),
                      0.5 * np.log1p(np.exp(-3.0)) + 0.5 * np.log1p(np.exp(3.0))])
  np.testing.assert_allclose(m['log_loss'], expected, rtol=1e-5)
  # perfectly calibrated predictions have zero calibration error
  np.testing.assert_allclose(pairwise.calibration_error(jnp.array([0.25] * 4), jnp.array([1.0, 0, 0, 0])), 0.0,
                             atol=1e-7)


def test_antisymmetry_error_is_zero_for_the_model_and_swap_complements_labels():
  graphdef, params = randomised(PreferenceModel)
  x, a, b = random_pairs(4)
  batch = dict(prompt=x[0], prompt_mask=x[1], response_a=a[0], response_a_mask=a[1], response_b=b[0],
               response_b_mask=b[1], preference=jnp.full((8,), 0.8))
  model = nnx.merge(graphdef, params)
  assert float(pairwise.antisymmetry_error(model, batch)) <= 1e-6
  swapped = pairwise.swap_pairs(batch)
  np.testing.assert_array_equal(swapped['response_a'], batch['response_b'])
  np.testing.assert_allclose(swapped['preference'], 0.2, rtol=1e-6)
