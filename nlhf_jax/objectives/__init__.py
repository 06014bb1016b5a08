"""Training objectives: loss functions `loss_fn(model, batch, rng) -> (loss, metrics)`."""
from nlhf_jax.objectives.sft import next_token_logits, sft_loss

__all__ = [
    'next_token_logits',
    'sft_loss',
]
