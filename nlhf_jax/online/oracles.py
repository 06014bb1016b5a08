"""Programmatic judges (oracles): preferences computed from the token ids, with no learned parameters.

An oracle is any function
  oracle(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask) -> P(a > b) [B]
written in jax.numpy (so it runs inside the jitted train step), named in a config as 'module:function' (or
'module:factory(arg)' for a factory returning one). A NumPy/Python oracle is accepted too when decorated with
`host_oracle`: it then runs on the host through jax.pure_callback.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nlhf_jax.data import bytes_vocab


def host_oracle(fn):
  """Marks a NumPy oracle (returns a float array [B]); the judge wraps it in jax.pure_callback."""
  fn.runs_on_host = True
  return fn


def _count(tokens, mask, token_ids):
  hits = jnp.isin(tokens, jnp.asarray(token_ids, tokens.dtype)) & mask
  return jnp.sum(hits, axis=1).astype(jnp.float32)


def more_of(characters: str = 'a', temperature: float = 1.0):
  """P(a > b) = sigmoid((count_a - count_b) / temperature), counting the byte-vocabulary tokens of any of
  `characters`. A transitive toy judge (e.g. more_of('aeiou') prefers responses with more vowels)."""
  token_ids = sorted({t for c in characters for t in bytes_vocab.encode(c)})

  def oracle(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
    del prompt, prompt_mask
    diff = _count(response_a, response_a_mask, token_ids) - _count(response_b, response_b_mask, token_ids)
    return jax.nn.sigmoid(diff / temperature)

  return oracle


def shorter(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
  """Prefers the shorter response (ties 1/2)."""
  del prompt, prompt_mask, response_a, response_b
  la, lb = response_a_mask.sum(1), response_b_mask.sum(1)
  return jnp.where(la < lb, 1.0, jnp.where(la > lb, 0.0, 0.5))
