"""Training: state, optimizers, pure steps, checkpoints, metrics and the outer loop."""
from nlhf_jax.training.state import TrainState

__all__ = [
    'TrainState',
]
