"""Temperature, top-k and top-p keep exactly the right sets on hand-made logits."""
import jax.numpy as jnp
import numpy as np

from nlhf_jax.sampling import apply_temperature, filter_logits, top_k_filter, top_p_filter
from nlhf_jax.sampling.sampler import inverse_cdf


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


def test_inverse_cdf_boundaries_and_zero_probability_tokens():
  probs = jnp.array([0.0, 0.25, 0.0, 0.75, 0.0])
  draws = inverse_cdf(jnp.broadcast_to(probs, (6, 5)), jnp.array([0.0, 0.2, 0.25, 0.5, 0.999, 1.0]))
  np.testing.assert_array_equal(draws, [1, 1, 3, 3, 3, 3])
