"""Training objectives: supervised losses `loss_fn(model, batch, rng) -> (loss, metrics)` and the online NLHF
surrogate losses on fixed samples (online.py)."""
from nlhf_jax.objectives.pairwise import pair_loss, pair_metrics
from nlhf_jax.objectives.sft import sft_loss

__all__ = [
    'pair_loss',
    'pair_metrics',
    'sft_loss',
]
