"""The built-in NLHF benchmark: a synthetic summarisation language, its non-transitive oracle P* and probes.

See docs/benchmark.md.
"""
from nlhf_jax.benchmark.language import (DEMO_STYLE_PROBS, STYLE_NAMES, corpus_text, demonstration,
                                         demonstration_records, document, prompt_records, salient_words,
                                         style_of)
from nlhf_jax.benchmark.oracle import make_oracle, preference, preferences, quality
from nlhf_jax.benchmark.probes import exploitability, probe_responses, probe_win_rates

__all__ = ['DEMO_STYLE_PROBS', 'STYLE_NAMES', 'corpus_text', 'demonstration', 'demonstration_records', 'document',
           'prompt_records', 'salient_words', 'style_of', 'make_oracle', 'preference', 'preferences', 'quality',
           'exploitability', 'probe_responses', 'probe_win_rates']
