"""Sampling from the policy, the reference and their token-level geometric mixture (prefill + cached decode)."""
from nlhf_jax.sampling.filters import apply_temperature, filter_logits, top_k_filter, top_p_filter
from nlhf_jax.sampling.sampler import (Groups, SamplingConfig, jit_sample, jit_sample_pair, pair_groups, sample,
                                       sample_pair)

__all__ = [
    'apply_temperature',
    'filter_logits',
    'top_k_filter',
    'top_p_filter',
    'Groups',
    'SamplingConfig',
    'jit_sample',
    'jit_sample_pair',
    'pair_groups',
    'sample',
    'sample_pair',
]
