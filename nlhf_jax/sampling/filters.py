"""Logit filters for sampling: temperature, top-k and top-p (nucleus). All act on the last axis, are pure and
jittable, and mark excluded tokens with -inf (jax.random.categorical never draws them)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
  """logits / temperature (a no-op at 1.0; temperature 0 means greedy and is handled by the caller)."""
  if temperature == 1.0 or temperature == 0.0:
    return logits
  return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (ties with the k-th are kept); k <= 0 or k >= V is a no-op."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose probability reaches p (the token that crosses p is
  kept; the most likely token always is). p >= 1 is a no-op."""
  if p >= 1.0:
    return logits
  ordered = -jnp.sort(-logits, axis=-1)  # descending
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < p
  threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, NEG_INF, logits)


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Temperature first, then top-k, then top-p (on the tempered distribution)."""
  return top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
