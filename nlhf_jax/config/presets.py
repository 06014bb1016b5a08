"""Named model sizes. `tiny` is for tests and CPU demos; the others are realistic starting points."""
from __future__ import annotations

import dataclasses

from nlhf_jax.config.schema import ModelConfig

_AT_SIZE = dict(scan_layers=True, remat='full', compute_dtype='bfloat16', attention_impl='dot_product',
                logits_chunk=16384)

PRESETS = {
    # ~0.1M parameters: compiles in seconds on CPU.
    'tiny': dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4, head_dim=16, mlp_dim=128, max_len=128),
    # The reference configuration of the online-training benchmark (~7M parameters).
    'small': dict(vocab_size=4096, d_model=256, num_layers=4, num_heads=4, head_dim=64, mlp_dim=1024, max_len=256),
    # ~125M parameters (GPT-2 small shape with a 32k vocabulary).
    '125m': dict(vocab_size=32768, d_model=768, num_layers=12, num_heads=12, head_dim=64, mlp_dim=2048,
                 max_len=1024),
    # Real sizes: the shapes of Llama 3.2 1B (1.24B parameters, tied embeddings) and Llama 3.1 8B (8.03B), with
    # the switches that make them fit (docs/architecture.md, "Memory at size"): scanned and rematerialised
    # layers, bfloat16 compute, fused attention, log-probabilities over vocabulary chunks.
    '1b': dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
               mlp_dim=8192, max_len=8192, rope_theta=500_000.0, norm_eps=1e-5, **_AT_SIZE),
    '8b': dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
               mlp_dim=14336, max_len=8192, rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
               **_AT_SIZE),
    # The shape of Llama 3.1 70B (70.6B parameters): for LoRA on a slice (docs/benchmark.md, "What fits where").
    '70b': dict(vocab_size=128256, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128,
                mlp_dim=28672, max_len=8192, rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False,
                **_AT_SIZE),
}


def preset(name: str, **overrides) -> dict:
  """The model section for preset `name` as a plain dict (for ml_collections configs): every ModelConfig key,
  so that each can be overridden from the command line."""
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; choose one of {", ".join(PRESETS)}')
  return {**dataclasses.asdict(ModelConfig()), **PRESETS[name], 'preset': name, **overrides}
