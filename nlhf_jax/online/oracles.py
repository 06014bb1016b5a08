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


def _count(tokens, mask, token_id):
  return jnp.sum((tokens == token_id) & mask, axis=1).astype(jnp.float32)


def more_of(text: str = 'a', temperature: float = 1.0):
  """P(a > b) = sigmoid((count_a - count_b) / temperature), counting the byte-vocabulary token of `text`.
  A transitive toy judge: the best response repeats one letter."""
  (token_id,) = bytes_vocab.encode(text)

  def oracle(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
    del prompt, prompt_mask
    diff = _count(response_a, response_a_mask, token_id) - _count(response_b, response_b_mask, token_id)
    return jax.nn.sigmoid(diff / temperature)

  return oracle


def shorter(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
  """Prefers the shorter response (ties 1/2)."""
  del prompt, prompt_mask, response_a, response_b
  la, lb = response_a_mask.sum(1), response_b_mask.sum(1)
  return jnp.where(la < lb, 1.0, jnp.where(la > lb, 0.0, 0.5))
