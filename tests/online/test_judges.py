"""Preference model and reward model: antisymmetry by construction, sharded scoring equals single-device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import mesh, tiny_config
from nlhf_jax.distributed import named, param_specs
from nlhf_jax.models.judges import PreferenceModel, RewardModel, pair_scorer, reward_scorer
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


@pytest.mark.parametrize('batch', [7, 8, 3])
def test_preference_model_is_antisymmetric_for_random_parameters(batch):
  """Exactly, not to rounding, at any batch size: f(a, b) == -f(b, a) and f(a, a) == 0 bitwise, P(a, a) == 1/2,
  and P(a, b) + P(b, a) = 1 to one float32 rounding."""
  for seed in range(3):
    graphdef, params = randomised(PreferenceModel, seed)
    model = nnx.merge(graphdef, params)
    logit, score_pairs = jax.jit(model.logit), jax.jit(pair_scorer(graphdef))
    x, a, b = random_pairs(seed, batch=batch)
    f_ab, f_ba = np.asarray(logit(*x, *a, *b)), np.asarray(logit(*x, *b, *a))
    assert float(np.std(f_ab)) > 1e-3  # the test would be void if the model were constant
    np.testing.assert_array_equal(f_ba, -f_ab)
    np.testing.assert_array_equal(np.asarray(logit(*x, *a, *a)), 0.0)
    p_ab, p_ba = np.asarray(score_pairs(params, x, a, b)), np.asarray(score_pairs(params, x, b, a))
    np.testing.assert_array_less(np.abs(p_ab.astype(np.float64) + p_ba - 1.0), np.finfo(np.float32).eps)
    np.testing.assert_array_equal(score_pairs(params, x, a, a), 0.5)


def test_reward_model_pair_probability_is_bradley_terry():
  graphdef, params = randomised(RewardModel)
  x, a, b = random_pairs(1)
  score = reward_scorer(graphdef)
  r_a, r_b = score(params, x, a), score(params, x, b)
  assert float(jnp.std(r_a)) > 1e-3
  np.testing.assert_allclose(pair_scorer(graphdef)(params, x, a, b), jax.nn.sigmoid(r_a - r_b), atol=1e-6)


@pytest.mark.parametrize('model_cls', [PreferenceModel, RewardModel])
def test_a_shared_prompt_pass_equals_the_full_joint_sequences(model_cls):
  """Pairs are scored with the prompt read once (a KV cache the continuations extend): the scores equal those
  of the full joint sequences [x, a, b] / [x, b, a] (preference model) and [x, a] / [x, b] (reward model)."""
  from nlhf_jax.models.judges import concat_segments
  graphdef, params = randomised(model_cls, 3)
  model = nnx.merge(graphdef, params)
  x, a, b = random_pairs(5)
  joint = [concat_segments(x, a, b), concat_segments(x, b, a)] if model_cls is PreferenceModel else [
      concat_segments(x, a), concat_segments(x, b)]
  full = [model.read_out(*j) for j in joint]
  conts = [concat_segments(a, b), concat_segments(b, a)] if model_cls is PreferenceModel else [a, b]
  shared = model.read_out_continuations(x, conts)
  assert float(jnp.std(full[0])) > 1e-3
  for u, v in zip(shared, full):
    np.testing.assert_allclose(u, v, atol=2e-5)


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


@pytest.mark.parametrize('model_cls', [PreferenceModel, RewardModel])
def test_scores_sharded_equal_single_device(model_cls):
  """score_pairs (and the reward model's score) on mesh (data=2, tensor=4) equal the single-device values."""
  graphdef, params = randomised(model_cls)
  x, a, b = random_pairs(3)
  score_pairs = jax.jit(pair_scorer(graphdef))
  single = score_pairs(params, x, a, b)
  m = mesh(data=2, tensor=4)
  abstract = nnx.split(nnx.eval_shape(lambda: model_cls(tiny_config().model, nnx.Rngs(0))))[1]
  sharded_params = jax.device_put(params, named(m, param_specs(abstract)))
  batch_sharding = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp')))
  put = lambda seg: tuple(jax.device_put(t, batch_sharding) for t in seg)
  mlp = sharded_params['backbone']['layer_0']['mlp']['up']
  assert mlp.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')  # really split over 'tensor'
  assert mlp.addressable_shards[0].data.shape == (mlp.shape[0], mlp.shape[1] // 4)
  sharded = score_pairs(sharded_params, put(x), put(a), put(b))
  assert sharded.sharding.spec[0] in ('data', ('data', 'fsdp'))
  np.testing.assert_allclose(sharded, single, atol=1e-5)
  if model_cls is RewardModel:
    score = jax.jit(reward_scorer(graphdef))
    np.testing.assert_allclose(score(sharded_params, put(x), put(a)), score(params, x, a), atol=1e-5)


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
  # two bins: {0.1, 0.15} with labels {1, 0} (gap |0.25 - 1|), {0.9, 0.95} with labels {1, 1} (gap |1.85 - 2|)
  prob, label = jnp.array([0.1, 0.15, 0.9, 0.95]), jnp.array([1.0, 0.0, 1.0, 1.0])
  np.testing.assert_allclose(pairwise.calibration_error(prob, label), (0.75 + 0.15) / 4, rtol=1e-6)


def test_antisymmetry_error_is_zero_for_the_model_and_swap_complements_labels():
  graphdef, params = randomised(PreferenceModel)
  x, a, b = random_pairs(4)
  batch = dict(prompt=x[0], prompt_mask=x[1], response_a=a[0], response_a_mask=a[1], response_b=b[0],
               response_b_mask=b[1], preference=jnp.full((8,), 0.8))
  model = nnx.merge(graphdef, params)
  assert float(pairwise.antisymmetry_error(model, batch)) <= np.finfo(np.float32).eps  # one rounding of sigmoid
  swapped = pairwise.swap_pairs(batch)
  np.testing.assert_array_equal(swapped['response_a'], batch['response_b'])
  np.testing.assert_allclose(swapped['preference'], 0.2, rtol=1e-6)


def test_binary_judgements_are_bernoulli_draws_per_example():
  from nlhf_jax.online.judges import binary_judgement
  n = 20_000
  prob = jnp.where(jnp.arange(n) % 2 == 0, 0.2, 0.9)
  index = jnp.arange(n, dtype=jnp.int32)
  draws = np.asarray(binary_judgement(prob, jax.random.key(0), index))
  assert set(np.unique(draws)) == {0.0, 1.0}
  for p, rows in ((0.2, draws[0::2]), (0.9, draws[1::2])):
    assert abs(rows.mean() - p) < 4 * np.sqrt(p * (1 - p) / rows.size)
  perm = np.random.default_rng(0).permutation(n)  # the same examples in another order: the same draws
  np.testing.assert_array_equal(np.asarray(binary_judgement(prob[perm], jax.random.key(0), index[perm])),
                                draws[perm])
