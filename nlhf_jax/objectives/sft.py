"""Next-token (SFT) loss with masking."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nlhf_jax.objectives.registry import register_loss


def sft_loss(model, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  """Mean negative log-likelihood of the tokens that batch['loss_mask'] selects (e.g. the response).

  batch: tokens int32 [B, T], mask bool [B, T] (real tokens), loss_mask float32 [B, T]. The log-probabilities
  come from the model's final hidden states (over vocabulary chunks with config.model.logits_chunk).
  """
  del rng
  hidden, _ = model.hidden(batch['tokens'][:, :-1], batch['mask'][:, :-1])
  targets = batch['tokens'][:, 1:]
  stats = model.token_logprobs(hidden, targets, with_stats=True)
  weights = batch['loss_mask'][:, 1:].astype(jnp.float32)
  num_tokens = jnp.maximum(weights.sum(), 1.0)
  loss = -(stats.logprobs * weights).sum() / num_tokens
  correct = stats.is_argmax.astype(jnp.float32)
  return loss, {'token_accuracy': (correct * weights).sum() / num_tokens}


register_loss('sft', 'supervised', sft_loss)
