"""Sampling from the policy, the reference and their token-level geometric mixture (prefill + cached decode).

config.py (SamplingConfig, built from a `sampling` config section such as config.online.sampling),
strategies.py (temperature, top-k, top-p, the draw), filters.py (their math), mixture.py (row groups, mixed
logits, row keys), state.py (DecodeState), decode.py (the model passes and the Decoder), sharded.py (constraints,
the per-shard loop), sampler.py (the entry points).
"""
from nlhf_jax.sampling.config import SamplingConfig
from nlhf_jax.sampling.decode import Decoder, decode_step, prefill
from nlhf_jax.sampling.filters import apply_temperature, filter_logits, top_k_filter, top_p_filter
from nlhf_jax.sampling.mixture import Groups, mix_logits, pair_groups, row_keys
from nlhf_jax.sampling.sampler import (SCOPE, decode_weights, jit_sample, jit_sample_pair, run, sample,
                                       sample_pair)
from nlhf_jax.sampling.state import DecodeState
from nlhf_jax.sampling.strategies import Strategy, Temperature, TopK, TopP, draw

__all__ = [
    'apply_temperature',
    'filter_logits',
    'top_k_filter',
    'top_p_filter',
    'Decoder',
    'DecodeState',
    'Groups',
    'SCOPE',
    'SamplingConfig',
    'Strategy',
    'Temperature',
    'TopK',
    'TopP',
    'decode_step',
    'decode_weights',
    'draw',
    'jit_sample',
    'jit_sample_pair',
    'mix_logits',
    'pair_groups',
    'prefill',
    'row_keys',
    'run',
    'sample',
    'sample_pair',
]
