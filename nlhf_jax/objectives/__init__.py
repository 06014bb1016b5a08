"""Training objectives: supervised losses `loss_fn(model, batch, rng) -> (loss, metrics)`, the offline DPO / IPO
losses (offline.py), the online NLHF surrogate losses on fixed samples (online.py, successors.py), each registered
by the name that the objective table's rows use (registry.py). Importing the package registers them all."""
from nlhf_jax.objectives import offline, online, successors
from nlhf_jax.objectives.pairwise import pair_loss, pair_metrics
from nlhf_jax.objectives.sft import sft_loss

__all__ = [
    'offline',
    'online',
    'pair_loss',
    'pair_metrics',
    'sft_loss',
    'successors',
]
