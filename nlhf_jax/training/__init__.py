"""Training: state, optimizers, pure steps, checkpoints and metrics (the run that assembles them: nlhf_jax.trainer)."""
from nlhf_jax.training.state import TrainState

__all__ = [
    'TrainState',
]
