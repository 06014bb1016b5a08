"""Next-token (SFT) loss with masking."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nlhf_jax.models.transformer import token_logprobs


def next_token_logits(model, tokens_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """Logits that predict tokens[:, 1:], float32 [B, T-1, V]."""
  logits, _ = model(tokens_bt[:, :-1], mask_bt[:, :-1])
  return logits


def sft_loss(model, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  """Mean negative log-likelihood of the tokens that batch['loss_mask'] selects (e.g. the response).

  batch: tokens int32 [B, T], mask bool [B, T] (real tokens), loss_mask float32 [B, T].
  """
  del rng
  logits = next_token_logits(model, batch['tokens'], batch['mask'])
  targets = batch['tokens'][:, 1:]
  weights = batch['loss_mask'][:, 1:].astype(jnp.float32)
  num_tokens = jnp.maximum(weights.sum(), 1.0)
  loss = -(token_logprobs(logits, targets) * weights).sum() / num_tokens
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, {'token_accuracy': (correct * weights).sum() / num_tokens}
