"""Models: the decoder LM and the heads built on it."""
from nlhf_jax.config.presets import PRESETS, preset
from nlhf_jax.models.logprobs import token_logprobs
from nlhf_jax.models.transformer import Transformer, init_cache

__all__ = [
    'PRESETS',
    'preset',
    'Transformer',
    'init_cache',
    'token_logprobs',
]
