"""The sampler: cached decoding, mixture exactness, log-probabilities, per-example randomness, EOS handling."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from nlhf_jax.config import ConfigError, ModelConfig
from nlhf_jax.distributed import named, param_specs
from nlhf_jax.models import Transformer, preset
from nlhf_jax.sampling import SamplingConfig, filter_logits, jit_sample, jit_sample_pair, sample_pair
from nlhf_jax.sampling import decode_step, prefill
from tests.helpers import mesh

CFG = ModelConfig(**preset('tiny'))
SMALL_VOCAB = dataclasses.replace(CFG, vocab_size=8, d_model=32, num_layers=1, mlp_dim=64)
LENGTHS = (6, 3, 1, 4)


def _models(cfg, scale=4.0):
  graphdef, policy = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  _, ref = nnx.split(Transformer(cfg, nnx.Rngs(1)))
  # Larger weights give peaked distributions, so that the policy and the reference differ clearly.
  return graphdef, jax.tree.map(lambda x: scale * x, policy), jax.tree.map(lambda x: scale * x, ref)


@pytest.fixture(scope='module')
def models():
  return _models(CFG)


def _batch(lengths=LENGTHS, width=6, indices=None, vocab=CFG.vocab_size, seed=0):
  b = len(lengths)
  mask = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
  tokens = np.asarray(jax.random.randint(jax.random.key(seed), (b, width), 4, vocab))
  idx = np.arange(b) if indices is None else np.asarray(indices)
  return {'prompt': jnp.asarray(np.where(mask, tokens, 0), jnp.int32), 'prompt_mask': jnp.asarray(mask),
          'example_index': jnp.asarray(idx, jnp.int32)}


def _full_logits(graphdef, params, batch, response, response_mask):
  """Logits predicting each response token, from one full forward pass over prompt + response."""
  tokens = jnp.concatenate([batch['prompt'], response], axis=1)
  mask = jnp.concatenate([batch['prompt_mask'], response_mask], axis=1)
  logits, _ = nnx.merge(graphdef, params)(tokens, mask)
  lp = batch['prompt'].shape[1]
  return logits[:, lp - 1:-1]


def test_cached_decoding_matches_full_forward():
  graphdef, params, _ = _models(CFG, scale=1.0)
  batch = _batch()
  t_new = 5
  response = jax.random.randint(jax.random.key(3), (4, t_new), 4, CFG.vocab_size)
  full = _full_logits(graphdef, params, batch, response, jnp.ones_like(response, bool))
  model = nnx.merge(graphdef, params)
  width = batch['prompt'].shape[1]
  logits, cache = prefill(model, batch['prompt'], batch['prompt_mask'], width + t_new)
  steps = [logits]
  for t in range(1, t_new):
    position = jnp.asarray(LENGTHS) + t - 1
    logits, cache = decode_step(model, cache, response[:, t - 1], position, jnp.int32(width + t - 1))
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, axis=1), full[:, :t_new], atol=1e-5, rtol=0)


def test_kv_cache_dtype_is_float32_on_cpu_unless_named():
  """'' (auto) is the compute dtype, except float32 on CPU; a named dtype is used as it is; bad names fail."""
  bf16 = jnp.dtype(jnp.bfloat16)
  assert SamplingConfig().cache_dtype(bf16) == (jnp.float32 if jax.default_backend() == 'cpu' else bf16)
  assert SamplingConfig(kv_cache_dtype='bfloat16').cache_dtype(jnp.float32) == bf16
  with pytest.raises(ValueError, match="kv_cache_dtype='float16': use '' \\(auto\\), 'float32' or 'bfloat16'"):
    SamplingConfig(kv_cache_dtype='float16')


def test_bfloat16_compute_samples_alike_with_float32_and_bfloat16_caches():
  """bfloat16 compute over a float32 or a bfloat16 KV cache: the same draws, log-probabilities within bfloat16's
  rounding of the cached keys and values; the caches are made in the dtype asked for."""
  graphdef, policy, ref = _models(dataclasses.replace(CFG, compute_dtype='bfloat16'), scale=1.0)
  batch, key, outs = _batch(), jax.random.key(2), {}
  for dtype in ('float32', 'bfloat16'):
    cfg = SamplingConfig(max_new_tokens=6, stop_ids=(), kv_cache_dtype=dtype)
    _, cache = prefill(nnx.merge(graphdef, policy), batch['prompt'], batch['prompt_mask'], 12, None,
                       cfg.cache_dtype(jnp.bfloat16))
    assert cache['layer_0']['k'].dtype == jnp.dtype(dtype)
    outs[dtype] = jit_sample_pair(graphdef, graphdef, cfg, 0.3)(policy, ref, batch, key)
  for name in ('policy', 'mixture'):
    np.testing.assert_array_equal(outs['float32'][name]['tokens'], outs['bfloat16'][name]['tokens'])
    np.testing.assert_allclose(outs['float32'][name]['logprobs'], outs['bfloat16'][name]['logprobs'], atol=0.05)


def _recomputed_logprobs(models, batch, out, cfg, beta):
  graphdef, policy, ref = models
  lp = _full_logits(graphdef, policy, batch, out['tokens'], out['mask'])
  lr = _full_logits(graphdef, ref, batch, out['tokens'], out['mask'])
  filtered = filter_logits((1 - beta) * lp + beta * lr, cfg.temperature, cfg.top_k, cfg.top_p)
  logp = jax.nn.log_softmax(filtered, axis=-1)
  return jnp.take_along_axis(logp, out['tokens'][..., None], axis=-1)[..., 0]


def test_logprobs_are_those_of_the_mixed_tempered_filtered_distribution(models):
  graphdef, policy, ref = models
  batch = _batch()
  cfg = SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9, stop_ids=())
  out = jit_sample_pair(graphdef, graphdef, cfg, 0.3)(policy, ref, batch, jax.random.key(1))
  for name, beta in (('policy', 0.0), ('mixture', 0.3)):
    expect = _recomputed_logprobs(models, batch, out[name], cfg, beta)
    assert out[name]['logprobs'].dtype == jnp.float32 and bool(out[name]['mask'].all())
    np.testing.assert_allclose(out[name]['logprobs'], expect, atol=1e-4, rtol=0)
    assert np.isfinite(np.asarray(expect)).all()  # only kept tokens are ever drawn


@pytest.mark.parametrize('beta', [0.0, 1.0])
def test_mixture_reduces_to_policy_and_reference(models, beta):
  graphdef, policy, ref = models
  batch = _batch()
  cfg = SamplingConfig(max_new_tokens=6, stop_ids=())
  key = jax.random.key(7)
  pair = jit_sample_pair(graphdef, graphdef, cfg, beta)(policy, ref, batch, key)
  single = jit_sample(graphdef, cfg)
  y = single(policy, batch, jax.random.fold_in(key, 0))
  y_mix = single(ref if beta == 1.0 else policy, batch, jax.random.fold_in(key, 1))
  np.testing.assert_array_equal(pair['policy']['tokens'], y['tokens'])
  np.testing.assert_array_equal(pair['mixture']['tokens'], y_mix['tokens'])
  np.testing.assert_allclose(pair['mixture']['logprobs'], y_mix['logprobs'], atol=1e-5)
  assert not np.array_equal(pair['policy']['tokens'], pair['mixture']['tokens'])  # distinct streams


def test_mixture_frequencies_match_the_exact_mixture():
  """Chi-square over many draws of the first token, and of the second token given the most frequent first."""
  models = _models(SMALL_VOCAB)
  graphdef, policy, ref = models
  n, beta = 3000, 0.4
  cfg = SamplingConfig(max_new_tokens=2, temperature=0.8, stop_ids=())
  one = _batch(lengths=(3,), width=3, vocab=8)
  batch = {'prompt': jnp.repeat(one['prompt'], n, 0), 'prompt_mask': jnp.repeat(one['prompt_mask'], n, 0),
           'example_index': jnp.arange(n, dtype=jnp.int32)}
  out = jax.jit(lambda p, r, b: sample_pair(graphdef, p, graphdef, r, b, jax.random.key(0), cfg, beta))(
      policy, ref, batch)['mixture']
  tokens = np.asarray(out['tokens'])
  first = tokens[:, 0]
  top = int(np.bincount(first, minlength=8).argmax())
  probe = jnp.asarray([[first[0], 0], [top, 0]], jnp.int32)
  two = {k: jnp.repeat(v, 2, 0) for k, v in one.items()}
  mixed = (1 - beta) * _full_logits(graphdef, policy, two, probe, jnp.ones((2, 2), bool))
  mixed += beta * _full_logits(graphdef, ref, two, probe, jnp.ones((2, 2), bool))
  probs = np.asarray(jax.nn.softmax(mixed / cfg.temperature, axis=-1), np.float64)
  for observed, p in ((first, probs[0, 0]), (tokens[first == top, 1], probs[1, 1])):
    counts = np.bincount(observed, minlength=8)
    expected = p / p.sum() * counts.sum()
    rare = expected < 5  # pool the rare tokens into one bin, as the chi-square approximation needs
    if rare.any():
      counts = np.append(counts[~rare], counts[rare].sum())
      expected = np.append(expected[~rare], expected[rare].sum())
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)


def test_samples_depend_on_the_example_not_on_the_batch(models):
  graphdef, policy, _ = models
  cfg = SamplingConfig(max_new_tokens=5, stop_ids=())
  fn = jit_sample(graphdef, cfg)
  key = jax.random.key(3)
  full = fn(policy, _batch(indices=[10, 11, 12, 13]), key)
  order = [2, 0, 3, 1]
  shuffled = {k: v[jnp.asarray(order)] for k, v in _batch(indices=[10, 11, 12, 13]).items()}
  out = fn(policy, shuffled, key)
  np.testing.assert_array_equal(out['tokens'], full['tokens'][jnp.asarray(order)])
  np.testing.assert_allclose(out['logprobs'], full['logprobs'][jnp.asarray(order)], atol=1e-5)
  rest = _batch(lengths=(2, 5, 6), seed=5, indices=[99, 98, 97])  # row 0 shares the example; the others differ
  other = {k: jnp.concatenate([v[:1], rest[k]]) for k, v in _batch(indices=[10, 11, 12, 13]).items()}
  np.testing.assert_array_equal(fn(policy, other, key)['tokens'][0], full['tokens'][0])


def _on_mesh(model_cfg, cfg, policy, ref, batch, m, key):
  """sample_pair jitted on mesh `m` with the weights sharded by the rule table and the batch by rows: (the jitted
  function, its arguments without the key, its outputs for `key`)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, nnx.Rngs(0))))
  p_shard = named(m, param_specs(abstract))
  b_shard = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp')))
  put = lambda tree, s: jax.tree.map(lambda x, sh: jax.device_put(np.asarray(x), sh), tree, s)
  args = (put(nnx.to_pure_dict(policy), p_shard), put(nnx.to_pure_dict(ref), p_shard),
          jax.tree.map(lambda x: jax.device_put(np.asarray(x), b_shard), batch))
  fn = jax.jit(lambda p, r, b, k: sample_pair(graphdef, p, graphdef, r, b, k, cfg, 0.25, mesh=m))
  return fn, args, fn(*args, key)


def _assert_same_samples(got, expect):
  for name in ('policy', 'mixture'):
    np.testing.assert_array_equal(got[name]['tokens'], expect[name]['tokens'])
    np.testing.assert_allclose(got[name]['logprobs'], expect[name]['logprobs'], atol=1e-4)


def test_same_samples_on_one_device_and_on_a_mesh(models, devices):
  graphdef, policy, ref = models
  cfg = SamplingConfig(max_new_tokens=5, top_k=50, stop_ids=())
  batch = _batch()
  key = jax.random.key(11)
  expect = jit_sample_pair(graphdef, graphdef, cfg, 0.25)(policy, ref, batch, key)
  _, _, got = _on_mesh(CFG, cfg, policy, ref, batch, mesh(data=2, tensor=4), key)
  _assert_same_samples(got, expect)
  assert got['policy']['tokens'].sharding.spec[0] in (('data', 'fsdp'), 'data')


@pytest.mark.parametrize('shape', [dict(fsdp=8), dict(data=2, fsdp=2, tensor=2)])
def test_params_sharded_in_the_loop_sample_what_replicated_params_sample(models, devices, shape):
  """With sharded_decode the weights stay sharded over fsdp (and tensor) inside the decode loop; the samples are
  those of the replicated model for the same key, and the outputs keep the batch sharding."""
  graphdef, policy, ref = models
  cfg = SamplingConfig(max_new_tokens=5, top_k=50, stop_ids=())
  batch = _batch(lengths=LENGTHS * 2)
  key = jax.random.key(12)
  expect = jit_sample_pair(graphdef, graphdef, cfg, 0.25)(policy, ref, batch, key)
  fn, args, got = _on_mesh(CFG, dataclasses.replace(cfg, sharded_decode=True), policy, ref, batch, mesh(**shape),
                           key)
  _assert_same_samples(got, expect)
  hlo = fn.lower(*args, key).compile().as_text()
  assert 'all-gather' in hlo  # weights gathered as the steps need them, not held whole


WIDE = dataclasses.replace(CFG, num_heads=8, num_kv_heads=8, d_model=64)  # heads that split 8 ways


@pytest.mark.parametrize('shape,decode_tensor', [(dict(fsdp=8), -1), (dict(data=2, fsdp=2, tensor=2), 4)])
def test_the_samplers_own_tensor_parallel_layout_samples_what_one_device_samples(devices, shape, decode_tensor):
  """decode_tensor regroups the mesh: each decoding model's heads, MLP and vocabulary split over groups of
  devices (all 8; or 4, two groups splitting the rows). The weights move into that layout once (all-to-alls, and
  no weight gathered whole), the loop sums the projections' partial results over the group, and the samples are
  the one-device ones; the outputs keep the training mesh's row sharding."""
  graphdef, policy, ref = _models(WIDE)
  cfg = SamplingConfig(max_new_tokens=5, top_k=50, stop_ids=())
  batch = _batch(lengths=LENGTHS * 2)
  key = jax.random.key(12)
  expect = jit_sample_pair(graphdef, graphdef, cfg, 0.25)(policy, ref, batch, key)
  fn, args, got = _on_mesh(WIDE, dataclasses.replace(cfg, decode_tensor=decode_tensor), policy, ref, batch,
                           mesh(**shape), key)
  _assert_same_samples(got, expect)
  assert all(got[name]['tokens'].sharding.spec[0] in (('data', 'fsdp'), 'fsdp') for name in got)
  hlo = fn.lower(*args, key).compile().as_text()
  assert 'all-to-all' in hlo and 'all-reduce' in hlo
  whole = {f'f32[{d},{h},{k}]' for d, h, k in [(64, 8, WIDE.head_dim)]} | {'f32[64,128]', 'f32[128,64]'}
  assert not any(f'{shape}' in hlo for shape in whole)  # no device holds a whole q/k/v or MLP matrix


def test_a_decode_tensor_that_does_not_divide_the_model_or_the_devices_is_refused():
  from nlhf_jax.config.mesh_checks import decode_tensor_size
  with pytest.raises(ConfigError, match=r'^sampling.decode_tensor=3: 3 does not divide the 8 devices; use a divisor'):
    decode_tensor_size(3, 8, WIDE, 'sampling.')
  with pytest.raises(ConfigError, match=r'^config.online.sampling.decode_tensor=-1: config.model.num_heads=4 is not '
                                        r'divisible by 8; use a decode_tensor that divides it'):
    decode_tensor_size(-1, 8, CFG)
  assert decode_tensor_size(-1, 8, WIDE) == 8 and decode_tensor_size(0, 8, CFG) == 0


def test_eos_ends_the_response_and_max_length_holds():
  graphdef, policy, ref = _models(SMALL_VOCAB)
  cfg = SamplingConfig(max_new_tokens=12, stop_ids=(2,), pad_id=0)
  batch = _batch(lengths=(3, 2, 1, 3) * 8, width=3, vocab=8)
  out = jit_sample_pair(graphdef, graphdef, cfg, 0.5)(policy, ref, batch, jax.random.key(0))
  for o in out.values():
    tokens, mask, logp = (np.asarray(o[k]) for k in ('tokens', 'mask', 'logprobs'))
    assert tokens.shape == mask.shape == logp.shape == (32, 12)
    is_eos = tokens == 2
    assert is_eos.any(axis=1).sum() >= 4 and (~is_eos.any(axis=1)).sum() >= 1
    for row, m, lp, e in zip(tokens, mask, logp, is_eos):
      end = int(np.argmax(e)) + 1 if e.any() else 12
      assert m[:end].all() and not m[end:].any()
      assert (row[end:] == 0).all() and (lp[end:] == 0).all() and (lp[:end] < 0).all()


@pytest.mark.parametrize('segments', [3, 20])
def test_a_loop_in_parts_samples_what_one_loop_samples(models, segments):
  """decode_segments splits the loop into parts that attend over the slots written so far only (3: parts of 2, 2
  and 1 steps; 20: one step each); masked slots add nothing to the attention, so the samples are the same, also
  when rows end early (an eos: the parts after every row is done run no step)."""
  from nlhf_jax.config.schema import decode_parts
  assert decode_parts(6, 3) == (2, 2, 1) and decode_parts(6, 20) == (1,) * 5 and decode_parts(1, 4) == ()
  graphdef, policy, ref = models
  key = jax.random.key(5)
  for cfg in (SamplingConfig(max_new_tokens=6, top_k=50, stop_ids=()), SamplingConfig(max_new_tokens=6, stop_ids=(7,))):
    expect = jit_sample_pair(graphdef, graphdef, cfg, 0.25)(policy, ref, _batch(), key)
    got = jit_sample_pair(graphdef, graphdef, dataclasses.replace(cfg, decode_segments=segments), 0.25)(
        policy, ref, _batch(), key)
    _assert_same_samples(got, expect)
    np.testing.assert_array_equal(got['policy']['mask'], expect['policy']['mask'])


def test_greedy_is_the_argmax_and_ignores_the_key(models):
  graphdef, policy, _ = models
  batch = _batch()
  cfg = SamplingConfig(max_new_tokens=4, temperature=0.0, stop_ids=())
  fn = jit_sample(graphdef, cfg)
  a, b = fn(policy, batch, jax.random.key(0)), fn(policy, batch, jax.random.key(1))
  np.testing.assert_array_equal(a['tokens'], b['tokens'])
  logits = _full_logits(graphdef, policy, batch, a['tokens'], a['mask'])
  np.testing.assert_array_equal(a['tokens'], jnp.argmax(logits, axis=-1))
  np.testing.assert_allclose(a['logprobs'], jnp.max(jax.nn.log_softmax(logits, -1), -1), atol=1e-5)


def test_shards_that_finish_at_different_steps_on_a_tensor_mesh(models, devices):
  """On mesh (data=2, tensor=4) the decode body has tensor collectives, so the two data shards must leave the
  loop together: shard 0's rows end at their first token (EOS), shard 1's never do. The samples equal the
  single-device ones."""
  graphdef, policy, _ = models
  greedy = SamplingConfig(max_new_tokens=8, temperature=0.0, stop_ids=())
  prompt_a = _batch(lengths=(6,), seed=0)
  first_a = int(jit_sample(graphdef, greedy)(policy, prompt_a, jax.random.key(0))['tokens'][0, 0])
  for seed in range(1, 50):  # a second prompt whose greedy response never contains that token
    prompt_b = _batch(lengths=(6,), seed=seed)
    if first_a not in np.asarray(jit_sample(graphdef, greedy)(policy, prompt_b, jax.random.key(0))['tokens']):
      break
  else:
    pytest.fail('no second prompt found')
  batch = {k: jnp.concatenate([prompt_a[k]] * 4 + [prompt_b[k]] * 4) for k in ('prompt', 'prompt_mask')}
  batch['example_index'] = jnp.arange(8, dtype=jnp.int32)
  # Sampled (not argmax) through top_k = 1: the same tokens as greedy, drawn by the Gumbel-max draw, whose
  # reductions over the tensor-sharded vocabulary are collectives that hang when the shards' loops differ in length.
  cfg = dataclasses.replace(greedy, temperature=1.0, top_k=1, stop_ids=(first_a,))
  expect = jit_sample(graphdef, cfg)(policy, batch, jax.random.key(0))
  assert np.asarray(expect['mask']).sum(1).tolist() == [1] * 4 + [8] * 4
  m = mesh(data=2, tensor=4)
  _, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(CFG, nnx.Rngs(0))))
  params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), nnx.to_pure_dict(policy),
                        named(m, param_specs(abstract)))
  rows = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp')))
  got = jit_sample(graphdef, cfg, m)(params, jax.device_put(batch, rows), jax.random.key(0))
  np.testing.assert_array_equal(got['tokens'], expect['tokens'])
  np.testing.assert_array_equal(got['mask'], expect['mask'])


@pytest.mark.parametrize('switches', [dict(tie_embeddings=True),
                                      dict(tie_embeddings=False, qkv_bias=True, out_bias=True, scale_embeddings=True,
                                           post_norms=True, norm_offset=1.0, qk_norm=True, final_logit_softcap=30.0,
                                           mlp_activation='gelu_tanh')])
def test_weights_cast_once_before_decoding_sample_bit_for_bit_what_per_token_casts_sample(switches, monkeypatch):
  """A float32 model computing in bfloat16 decodes from a bfloat16 copy of its matrices made once before the loop
  (sampler.decode_weights: half the bytes a token); the samples and log-probabilities are those of casting at every
  matmul, bit for bit, across the families' switches."""
  from nlhf_jax.sampling import sampler
  cfg = dataclasses.replace(CFG, compute_dtype='bfloat16', logits_chunk=16, **switches)
  graphdef, policy, ref = _models(cfg, scale=1.0)
  policy = jax.tree.map(lambda x: x + 0.01 * jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), policy)
  batch, key = _batch(), jax.random.key(5)
  scfg = SamplingConfig(max_new_tokens=6, stop_ids=())
  cast = jit_sample_pair(graphdef, graphdef, scfg, 0.3)(policy, ref, batch, key)
  assert sampler.decode_weights(nnx.merge(graphdef, policy)).embed[...].dtype == (
      jnp.float32 if cfg.scale_embeddings else jnp.bfloat16)
  monkeypatch.setattr(sampler, 'decode_weights', lambda model, unroll=True: model)
  per_token = jit_sample_pair(graphdef, graphdef, scfg, 0.3)(policy, ref, batch, key)
  for name in ('policy', 'mixture'):
    np.testing.assert_array_equal(cast[name]['tokens'], per_token[name]['tokens'])
    np.testing.assert_array_equal(cast[name]['logprobs'], per_token[name]['logprobs'])
