"""The decoder LM: causality, padding invariance, cached decoding, dtype policy and logical axes."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models import PRESETS, Transformer, init_cache, preset

CFG = ModelConfig(**preset('tiny'))


@pytest.fixture(scope='module')
def model():
  return Transformer(CFG, nnx.Rngs(0))


def _tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 4, CFG.vocab_size)


def test_logits_are_float32_and_causal(model):
  tokens = _tokens(2, 10)
  mask = jnp.ones_like(tokens, bool)
  logits, _ = model(tokens, mask)
  assert logits.shape == (2, 10, CFG.vocab_size) and logits.dtype == jnp.float32
  changed = tokens.at[:, 7].set(5)
  logits2, _ = model(changed, mask)
  np.testing.assert_allclose(logits[:, :7], logits2[:, :7], atol=1e-6)  # the past never sees the future
  assert np.abs(logits[:, 7:] - logits2[:, 7:]).max() > 1e-4


def test_left_padding_does_not_change_logits(model):
  tokens = _tokens(1, 6)
  logits, _ = model(tokens, jnp.ones_like(tokens, bool))
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
  pmask = jnp.concatenate([jnp.zeros((1, 3), bool), jnp.ones((1, 6), bool)], axis=1)
  logits_p, _ = model(padded, pmask)
  np.testing.assert_allclose(logits_p[:, 3:], logits, atol=1e-5)


def test_cached_decoding_matches_full_forward(model):
  """Prefill a left-padded prompt, then decode one token at a time: logits equal the full forward pass."""
  b, t_prompt, t_new = 2, 5, 4
  tokens = _tokens(b, t_prompt + t_new, seed=1)
  mask = jnp.ones((b, t_prompt + t_new), bool).at[0, :2].set(False)  # row 0 is left-padded by 2
  full, _ = model(tokens, mask)
  cache = init_cache(CFG, b, t_prompt + t_new)
  cache['mask'] = cache['mask'].at[:, :t_prompt].set(mask[:, :t_prompt])
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, cache = model(tokens[:, :t_prompt], mask[:, :t_prompt], positions[:, :t_prompt], cache, 0)
  steps = [logits]
  for i in range(t_prompt, t_prompt + t_new):
    cache['mask'] = cache['mask'].at[:, i].set(True)
    logits, cache = model(tokens[:, i:i + 1], mask[:, i:i + 1], positions[:, i:i + 1], cache, i)
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  np.testing.assert_allclose(cached[0, 2:], full[0, 2:], atol=1e-5)
  np.testing.assert_allclose(cached[1], full[1], atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = dataclasses.replace(CFG, compute_dtype='bfloat16')
  m = Transformer(cfg, nnx.Rngs(0))
  params = nnx.state(m, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits, _ = m(_tokens(1, 4), jnp.ones((1, 4), bool))
  assert logits.dtype == jnp.float32


def test_bfloat16_matmuls_take_bfloat16_operands_and_accumulate_in_float32():
  """Every matmul of the bfloat16 forward pass (projections, attention, MLP, logits) is a bfloat16 x bfloat16 dot
  with a float32 result: XLA:CPU runs a bfloat16 dot with a bfloat16 result on float32 copies of its operands."""
  import re
  cfg = dataclasses.replace(CFG, compute_dtype='bfloat16')
  graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  tokens = _tokens(2, 6)
  text = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, jnp.ones_like(tokens, bool))[0]).lower(params).as_text()
  dots = re.findall(r'stablehlo\.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)', text)
  per_layer = 4 + 2 + 3  # q, k, v, o; scores and values; gate, up, down
  assert len(dots) == cfg.num_layers * per_layer + 1, len(dots)
  for lhs, rhs, out in dots:
    assert lhs.endswith('xbf16>') and rhs.endswith('xbf16>') and out.endswith('xf32>'), (lhs, rhs, out)


def test_every_parameter_has_logical_axes(model):
  _, params = nnx.split(model, nnx.Param)
  for path, var in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
    axes = var.get_metadata().get('logical_axes')
    assert axes is not None and len(axes) == var[...].ndim, path


def test_untied_embeddings_add_an_unembedding():
  m = Transformer(dataclasses.replace(CFG, tie_embeddings=False), nnx.Rngs(0))
  assert m.unembed[...].shape == (CFG.d_model, CFG.vocab_size)


@pytest.mark.parametrize('name,low,high', [('125m', 100e6, 160e6), ('1b', 1.2e9, 1.3e9), ('8b', 8.02e9, 8.04e9),
                                           ('70b', 70.5e9, 70.6e9)])
def test_realistic_presets_have_their_advertised_size(name, low, high):
  abstract = nnx.eval_shape(lambda: Transformer(ModelConfig(**preset(name)), nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert low < n < high, n
  assert set(PRESETS) >= {'tiny', '125m', '1b', '8b'}


def test_sliding_window_layers_never_see_past_their_window_with_or_without_cache():
  """One local layer of window 3: the next-token logits at t depend on tokens t-2..t only, in the full forward
  pass and in cached decoding; the cache holds the kv heads only (grouped-query attention)."""
  cfg = dataclasses.replace(CFG, num_layers=1, sliding_window=3, num_kv_heads=2)
  graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(1)))
  tokens = _tokens(1, 8, seed=3)
  mask = jnp.ones_like(tokens, bool)

  @functools.partial(jax.jit, static_argnums=1)
  def last_logits(toks, cached):
    m = nnx.merge(graphdef, params)
    if not cached:
      return m(toks, mask)[0][:, -1]
    cache = init_cache(cfg, 1, 8)
    assert cache['layer_0']['k'].shape == (1, 2, 8, cfg.head_dim)
    cache['mask'] = cache['mask'].at[:, :7].set(True)
    positions = jnp.arange(8)[None]
    _, cache = m(toks[:, :7], mask[:, :7], positions[:, :7], cache, 0)
    cache['mask'] = cache['mask'].at[:, 7].set(True)
    return m(toks[:, 7:], mask[:, 7:], positions[:, 7:], cache, 7)[0][:, -1]

  for cached in (False, True):
    base = last_logits(tokens, cached)
    outside = last_logits(tokens.at[:, 4].set(7), cached)  # position 4 is 3 back from 7: outside the window
    inside = last_logits(tokens.at[:, 5].set(7), cached)
    np.testing.assert_array_equal(np.asarray(outside), np.asarray(base))
    assert np.abs(np.asarray(inside) - np.asarray(base)).max() > 1e-4


@pytest.mark.parametrize('spec,x_shape,y_shape', [
    ('btngk,bnsk->bngts', (3, 1, 2, 4, 8), (3, 2, 7, 8)),  # grouped queries against the cache
    ('bngts,bnsk->btngk', (3, 2, 4, 1, 7), (3, 2, 7, 8)),  # their probabilities times the values
    ('bthk,bhsk->bhts', (3, 1, 4, 8), (3, 4, 7, 8)),  # one query head per kv head
    ('bhts,bhsk->bthk', (3, 4, 1, 7), (3, 4, 7, 8))])
def test_decoding_attention_as_products_and_sums_is_the_einsum(spec, x_shape, y_shape):
  from nlhf_jax.models.attention import _product_einsum
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, x_shape).astype(jnp.bfloat16)
  y = jax.random.normal(ky, y_shape).astype(jnp.bfloat16)
  expect = jnp.einsum(spec, x.astype(jnp.float32), y.astype(jnp.float32), precision='highest')  # exact products
  np.testing.assert_allclose(_product_einsum(spec, x, y, jnp.float32), expect, rtol=1e-6, atol=1e-6)
  assert _product_einsum(spec, x, y, jnp.bfloat16).dtype == jnp.bfloat16


def test_a_decoded_token_reads_the_cache_without_a_matmul():
  """One token over the cache: no dot_general takes a cache-sized operand (on GPU a matmul gets a contiguous copy
  of the layer's cache, sliced out of a scanned stack, at every token); a prefill of several tokens keeps them."""
  cfg = dataclasses.replace(CFG, scan_layers=True)
  m = Transformer(cfg, nnx.Rngs(0))
  slots = 11

  def dots_on_cache(tokens):
    cache = init_cache(cfg, 2, slots)
    jaxpr = jax.make_jaxpr(lambda t: m(t, jnp.ones(t.shape, bool), None, cache, 0))(tokens)
    eqns = []
    stack = [jaxpr.jaxpr]
    while stack:
      j = stack.pop()
      for e in j.eqns:
        eqns.append(e)
        stack.extend(sub.jaxpr if hasattr(sub, 'jaxpr') else sub for sub in jax.extend.core.jaxprs_in_params(e.params))
    return sum(e.primitive.name == 'dot_general' and any(slots in v.aval.shape for v in e.invars) for e in eqns)
  assert dots_on_cache(jnp.ones((2, 1), jnp.int32)) == 0
  assert dots_on_cache(jnp.ones((2, 4), jnp.int32)) > 0


@pytest.mark.parametrize('kv_heads', [2, 0])  # grouped-query; multi-head (0: one kv head per head)
def test_a_prompt_kept_once_for_its_rows_attends_as_the_repeated_prompt_does(kv_heads):
  """A cache with a 'prefix' (one copy of a prompt's slots for each run of two rows) attends, for one decoded
  token, as a plain cache holding the prompt's slots repeated in every row (up to float sums; with a softcap and
  a padded prompt slot too), and writes the new key at its own slot (the slot minus the prompt's width)."""
  from nlhf_jax.models.attention import Attention
  cfg = dataclasses.replace(CFG, num_kv_heads=kv_heads, attn_logit_softcap=30.0)
  attn = Attention(cfg, 0, nnx.Rngs(0))
  prompts, rows, width, own, fed = 2, 2, 5, 6, 3
  r, kv, hd = prompts * rows, cfg.kv_heads, cfg.head_dim
  keys = jax.random.split(jax.random.key(1), 5)
  repeat = lambda x: jnp.repeat(x, rows, axis=0)
  prefix = {'k': jax.random.normal(keys[0], (prompts, kv, width, hd)),
            'v': jax.random.normal(keys[1], (prompts, kv, width, hd)),
            'pos': jnp.broadcast_to(jnp.arange(width) - 1, (prompts, width)).astype(jnp.int32)}
  cache = {'k': jax.random.normal(keys[2], (r, kv, own, hd)), 'v': jax.random.normal(keys[3], (r, kv, own, hd)),
           'pos': jnp.broadcast_to(width - 1 + jnp.arange(own), (r, own)).astype(jnp.int32)}
  plain = {name: jnp.concatenate([repeat(prefix[name]), cache[name]], axis=-1 if name == 'pos' else 2)
           for name in cache}
  mask = jnp.broadcast_to(jnp.arange(width + own) <= width + fed, (r, width + own)).at[:, 0].set(False)  # padding
  x = jax.random.normal(keys[4], (r, 1, cfg.d_model))
  position = jnp.full((r, 1), width - 1 + fed, jnp.int32)
  span = width + fed + 2
  got, written = attn(x, position, mask, {**cache, 'prefix': prefix}, width + fed, span=span)
  expect, expect_written = attn(x, position, mask, plain, width + fed, span=span)
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
  for name in ('k', 'v', 'pos'):
    np.testing.assert_array_equal(written[name], expect_written[name][..., width:, :] if name != 'pos'
                                  else expect_written[name][:, width:])
  assert written['prefix'] is prefix


def test_the_output_projections_hand_on_bfloat16_partial_sums_only_where_their_contraction_is_split(devices):
  """On a mesh that splits heads and MLP over 'tensor', the attention output and MLP down projections (whose sums
  cross devices) give their partial sums in the compute dtype (a bfloat16 all-reduce); every other matmul, and
  every matmul without such a mesh, accumulates to float32."""
  from tests.helpers import mesh
  cfg = dataclasses.replace(CFG, compute_dtype='bfloat16')
  m = Transformer(cfg, nnx.Rngs(0))
  tokens = jnp.ones((2, 3), jnp.int32)

  def dot_dtypes(context):
    def trace():
      return jax.make_jaxpr(lambda t: m.hidden(t, jnp.ones(t.shape, bool))[0])(tokens)
    if context is None:
      jaxpr = trace()
    else:
      with jax.sharding.use_abstract_mesh(context.abstract_mesh):
        jaxpr = trace()
    return [str(e.params['preferred_element_type']) for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  plain = dot_dtypes(None)
  split = dot_dtypes(mesh(tensor=4))
  assert set(plain) == {'float32'} and len(split) == len(plain)
  assert split.count('bfloat16') == 2 * cfg.num_layers and split.count('float32') == len(plain) - 2 * cfg.num_layers
  assert set(dot_dtypes(mesh(fsdp=4))) == {'float32'}


def test_a_decoded_position_takes_bfloat16_results_on_gpu_only(monkeypatch):
  """On GPU, the projections of one position (a decoded token) ask for their bfloat16 result directly (the GEMM
  accumulates in float32 and rounds once); several positions, where a gradient may flow, and other platforms
  keep the float32 result and its cast."""
  from nlhf_jax.models import layers
  cfg = dataclasses.replace(CFG, compute_dtype='bfloat16')
  m = Transformer(cfg, nnx.Rngs(0))

  def dot_dtypes(platform, length):
    monkeypatch.setattr(layers, 'context_platform', lambda: platform)
    tokens = jnp.ones((2, length), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda t: m.hidden(t, jnp.ones(t.shape, bool))[0])(tokens)
    return [str(e.params['preferred_element_type']) for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  one = dot_dtypes('cuda', 1)  # q, k, v, o, gate, up, down and the probabilities' product with the values
  assert one.count('bfloat16') == 8 * cfg.num_layers and one.count('float32') == cfg.num_layers  # the logits
  assert 'bfloat16' not in dot_dtypes('cuda', 3) + dot_dtypes('cpu', 1) + dot_dtypes('tpu', 1)
