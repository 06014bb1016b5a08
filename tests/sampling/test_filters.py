"""Temperature, top-k and top-p keep exactly the right sets on hand-made logits; the token draw is exact."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from nlhf_jax.sampling import apply_temperature, filter_logits, top_k_filter, top_p_filter
from nlhf_jax.sampling import SamplingConfig, Strategy


def _kept(x):
  return np.isfinite(np.asarray(x))


def test_top_k_keeps_the_k_largest():
  logits = jnp.array([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 2.0, 1.0]])
  np.testing.assert_array_equal(_kept(top_k_filter(logits, 2)),
                                [[False, True, False, True, False], [False, False, True, True, False]])
  np.testing.assert_array_equal(top_k_filter(logits, 0), logits)
  np.testing.assert_array_equal(top_k_filter(logits, 5), logits)
  kept = top_k_filter(logits, 3)
  np.testing.assert_array_equal(kept[0, 1:4], logits[0, 1:4])  # kept logits are unchanged


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]])
  logits = jnp.log(probs)[:, ::-1]  # order must not matter: [0.05, 0.1, 0.15, 0.2, 0.5]
  np.testing.assert_array_equal(_kept(top_p_filter(logits, 0.5)), [[False, False, False, False, True]])
  np.testing.assert_array_equal(_kept(top_p_filter(logits, 0.6)), [[False, False, False, True, True]])
  np.testing.assert_array_equal(_kept(top_p_filter(logits, 0.84)), [[False, False, True, True, True]])
  np.testing.assert_array_equal(_kept(top_p_filter(logits, 0.1)), [[False, False, False, False, True]])
  np.testing.assert_array_equal(top_p_filter(logits, 1.0), logits)


def test_temperature_then_filters():
  logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
  np.testing.assert_allclose(apply_temperature(logits, 0.5), logits * 2)
  np.testing.assert_array_equal(apply_temperature(logits, 1.0), logits)
  # At temperature 0.5 the top token has probability > 0.8, so top-p 0.8 keeps it alone; at 1.0 it does not.
  np.testing.assert_array_equal(_kept(filter_logits(logits, 0.5, 0, 0.8)), [[True, False, False, False]])
  np.testing.assert_array_equal(_kept(filter_logits(logits, 1.0, 0, 0.8)), [[True, True, False, False]])
  np.testing.assert_array_equal(_kept(filter_logits(logits, 1.0, 3, 0.99)), [[True, True, True, False]])


def _draws(logits_v, n, cfg=SamplingConfig(), seed=0):
  """n tokens of `Strategy.choose` from one row of logits, each with its own key (the logits are shared, so the
  per-vocabulary work is done once and n draws cost about n * 2 sqrt(V) random numbers)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))
  one = lambda k: Strategy.of(cfg).choose(logits_v[None, None], k[None, None], jnp.int32(0))[0][0, 0]
  return np.asarray(jax.jit(jax.vmap(one))(keys))


def test_zero_probability_tokens_are_never_drawn():
  logits = jnp.log(jnp.array([0.0, 0.25, 0.0, 0.75, 0.0]))
  draws = _draws(logits, 4000)
  assert set(np.unique(draws)) == {1, 3}
  assert abs((draws == 1).mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
  # the same through the filters: top-k 1 keeps token 3 alone
  assert set(np.unique(_draws(logits, 500, SamplingConfig(top_k=1)))) == {3}


def test_tokens_far_below_float32_resolution_are_drawn_at_their_rate():
  """A 128k vocabulary whose last token has probability 1 - q and whose other V - 1 tokens have p = 0.4 * 2^-23
  = 4.8e-8 each (q = 0.0062). An inverse-CDF draw over a float32 cumulative sum with one 23-bit uniform u cannot
  do this: its thresholds u * total lie on a grid of step 2^-23 = 2.5 tail tokens, so with the cumulative sums
  i p the grid points fall in tokens 2, 4, 7, 9, ... and the tokens i = 1, 3 (mod 5), two fifths of the tail, are
  never drawn (the others 2.5 times too often). Each residue class mod 5 must get its rate q / 5 within a binomial
  interval (and the tail its rate q), over 50,000 draws."""
  vocab, n = 131072, 50_000
  p_tail = 0.4 * 2.0 ** -23
  q = (vocab - 1) * p_tail
  logits = jnp.concatenate([jnp.full(vocab - 1, np.log(p_tail)), jnp.array([np.log1p(-q)])]).astype(jnp.float32)
  draws = _draws(logits, n, seed=1)
  tail = draws[draws < vocab - 1]

  def check(count, p):  # a two-sided binomial interval at 1e-6
    lo, hi = stats.binom.ppf([5e-7, 1 - 5e-7], n, p)
    assert lo <= count <= hi, (count, n * p, lo, hi)

  check(tail.size, q)
  for r in range(5):
    check(int(np.sum(tail % 5 == r)), q / 5)
  assert np.unique(tail).size > 0.9 * tail.size  # spread over the tail: few repeats among ~310 of 131071 tokens
