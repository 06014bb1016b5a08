"""Chunked vocabulary log-probabilities: values, gradients and statistics equal to the dense computation, and no
[B, T, V] array in the compiled forward or backward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.models.layers import softcap as apply_softcap
from nlhf_jax.models.logprobs import TokenStats, chunked_token_logprobs, token_logprobs

B, T, D = 2, 5, 16


def _inputs(vocab: int, dtype=jnp.float32, seed: int = 0):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  hidden = jax.random.normal(k1, (B, T, D), jnp.float32).astype(dtype)
  unembed = jax.random.normal(k2, (D, vocab), jnp.float32)
  targets = jax.random.randint(k3, (B, T), 0, vocab)
  weights = jax.random.uniform(k4, (B, T), jnp.float32)
  return hidden, unembed, targets, weights


def _dense_logits(hidden, unembed, cap):
  z = jnp.einsum('btd,dv->btv', hidden, unembed.astype(hidden.dtype), preferred_element_type=jnp.float32)
  return apply_softcap(z, cap)


def _dense(hidden, unembed, targets, cap):
  return token_logprobs(_dense_logits(hidden, unembed, cap), targets)


def _value_and_grads(fn, hidden, unembed, targets, weights):
  """(fn's value [B, T], gradients of sum(weights * value) w.r.t. hidden and unembed), in one jitted call."""
  loss = lambda h, w: ((fn(h, w, targets) * weights).sum(), fn(h, w, targets))
  (_, value), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(hidden, unembed)
  return value, grads


def test_token_logprobs_is_log_softmax_at_the_target():
  logits = jnp.log(jnp.array([[[0.1, 0.2, 0.7]]]))
  np.testing.assert_allclose(token_logprobs(logits, jnp.array([[2]])), np.log([[0.7]]), rtol=1e-6)


@pytest.mark.parametrize('vocab,chunk,cap', [(48, 16, 3.0), (50, 16, 0.0), (50, 16, 3.0), (37, 64, 0.0)])
def test_values_and_gradients_equal_the_dense_ones(vocab, chunk, cap):
  """V divisible by chunk and not, chunk >= V, with and without the soft-cap."""
  hidden, unembed, targets, weights = _inputs(vocab)
  chunked = lambda h, w, t: chunked_token_logprobs(h, w, t, chunk, softcap=cap)
  got, got_grads = _value_and_grads(chunked, hidden, unembed, targets, weights)
  want, want_grads = _value_and_grads(lambda h, w, t: _dense(h, w, t, cap), hidden, unembed, targets, weights)
  assert got.shape == (B, T) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)  # log-probs near -16: one float32 ulp is 1.9e-6
  for a, b in zip(got_grads, want_grads):
    assert a.shape == b.shape and bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_bfloat16_hidden():
  """bfloat16 hidden states: float32 log-probabilities, a bfloat16 gradient for hidden, close to the dense ones."""
  hidden, unembed, targets, weights = _inputs(50, jnp.bfloat16)
  chunked = lambda h, w, t: chunked_token_logprobs(h, w, t, 16, softcap=5.0)
  got, got_grads = _value_and_grads(chunked, hidden, unembed, targets, weights)
  want, want_grads = _value_and_grads(lambda h, w, t: _dense(h, w, t, 5.0), hidden, unembed, targets, weights)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  for a, b in zip(got_grads, want_grads):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=2e-2, rtol=2e-2)


def _dense_entropy(h, w, t):
  logp = jax.nn.log_softmax(_dense_logits(h, w, 0.0), axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


@pytest.mark.parametrize('vocab,chunk', [(50, 16), (30, 100)])
def test_entropy_and_argmax_equal_the_dense_ones(vocab, chunk):
  hidden, unembed, targets, weights = _inputs(vocab, seed=1)
  logits = _dense_logits(hidden, unembed, 0.0)
  targets = targets.at[0].set(jnp.argmax(logits[0], axis=-1))  # half the rows hit the argmax
  stats = jax.jit(lambda h, w, t: chunked_token_logprobs(h, w, t, chunk, with_stats=True))(hidden, unembed, targets)
  assert isinstance(stats, TokenStats) and stats.is_argmax.dtype == jnp.bool_
  np.testing.assert_allclose(stats.logprobs, token_logprobs(logits, targets), atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(stats.entropy, _dense_entropy(hidden, unembed, targets), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(stats.is_argmax, jnp.argmax(logits, axis=-1) == targets)
  assert bool(stats.is_argmax[0].all()) and not bool(stats.is_argmax.all())
  entropy = lambda h, w, t: chunked_token_logprobs(h, w, t, chunk, with_stats=True).entropy
  _, got = _value_and_grads(entropy, hidden, unembed, targets, weights)
  _, want = _value_and_grads(_dense_entropy, hidden, unembed, targets, weights)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_ties_are_broken_towards_the_lowest_id():
  """Equal logits in two chunks and within one: the flag is set for the lowest id only, as jnp.argmax."""
  hidden = jnp.ones((1, 3, 1), jnp.float32)
  unembed = jnp.array([[0.0, 2.0, 1.0, 2.0, 2.0, 0.0]])  # max 2.0 at ids 1, 3, 4; chunks of 2: {0,1} {2,3} {4,5}
  targets = jnp.array([[1, 3, 4]])
  stats = chunked_token_logprobs(hidden, unembed, targets, 2, with_stats=True)
  np.testing.assert_array_equal(stats.is_argmax, [[True, False, False]])
  stats = chunked_token_logprobs(hidden, unembed, jnp.array([[3, 4, 1]]), 4, with_stats=True)  # ties in a chunk
  np.testing.assert_array_equal(stats.is_argmax, [[False, False, True]])


def _temp_bytes(fn, *args) -> int:
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_holds_no_batch_by_vocabulary_array():
  """Compile only (abstract inputs): B=2, T=512, D=256, V=131072. The dense forward and value_and_grad need at
  least one float32 [B, T, V] array of temporaries; the chunked ones stay far below it."""
  b, t, d, v = 2, 512, 256, 131072
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32))
  full = b * t * v * 4
  chunked = lambda h, w, y: chunked_token_logprobs(h, w, y, 2048, softcap=30.0).sum()
  dense = lambda h, w, y: _dense(h, w, y, 30.0).sum()
  for make in (lambda f: f, lambda f: jax.value_and_grad(f, argnums=(0, 1))):
    dense_bytes, chunked_bytes = _temp_bytes(make(dense), *args), _temp_bytes(make(chunked), *args)
    assert dense_bytes >= full, (dense_bytes, full)
    assert chunked_bytes < full / 8, (chunked_bytes, full)
