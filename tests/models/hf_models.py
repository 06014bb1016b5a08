"""Tiny random Hugging Face models of every supported family, built offline with transformers (test-only).

Random init is small (std 0.02), which would hide soft-capping, scaling and norm-convention errors: every
weight gets N(0, 0.15^2) noise before saving. Sequences in the tests are longer than the sliding window (8).
"""
import os

import json

import numpy as np

VOCAB = 300
WINDOW = 8
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=256, attn_implementation='eager')
_ALTERNATING = ['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention']


def _specs():
  import transformers as tf
  return {
      # Llama 3.1/3.2: grouped-query attention and llama3 rope scaling.
      'llama': (tf.LlamaConfig, tf.LlamaForCausalLM, dict(
          rope_theta=500_000.0, rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                              'high_freq_factor': 4.0, 'original_max_position_embeddings': 64})),
      # Qwen 2.5: q/k/v biases, tied embeddings (as the 0.5B model).
      'qwen2': (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(tie_word_embeddings=True, rope_theta=1_000_000.0)),
      # Qwen 3: RMSNorm on queries and keys.
      'qwen3': (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(rope_theta=1_000_000.0)),
      # Mistral: every layer attends through a sliding window.
      'mistral': (tf.MistralConfig, tf.MistralForCausalLM, dict(sliding_window=WINDOW)),
      # Gemma 2: interleaved local/global layers, both soft-caps, query_pre_attn_scalar != head_dim.
      'gemma2': (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(
          sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
      # Gemma 3: q/k norms, local layers with their own rope base, linear scaling on global layers.
      'gemma3_text': (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(
          sliding_window=WINDOW, layer_types=_ALTERNATING, rope_parameters={
              'full_attention': {'rope_type': 'linear', 'factor': 4.0, 'rope_theta': 100_000.0},
              'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0}})),
  }


def _small_llama():
  from nlhf_jax.config import ModelConfig
  return ModelConfig(family='llama', vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64, max_len=64, tie_embeddings=False)


SMALL_LLAMA = _small_llama()  # checkpoints written without torch (write_checkpoint)
FAMILIES = ('llama', 'qwen2', 'qwen3', 'mistral', 'gemma2', 'gemma3_text')


def make_model(family: str, path: str, seed: int = 0, **overrides):
  """(torch model in eval mode, its save_pretrained directory) of a tiny random `family` model (float32);
  `overrides` change config fields (e.g. vocab_size, num_hidden_layers)."""
  import torch
  config_cls, model_cls, extra = _specs()[family]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**_COMMON, **extra, **overrides})).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.15 * torch.randn_like(p))
  model.generation_config.eos_token_id = None  # decode every new token (no early stop)
  model.generation_config.pad_token_id = 0
  os.makedirs(path, exist_ok=True)
  model.save_pretrained(path)
  return model, path


def tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, VOCAB, (batch, length)).astype(np.int32)


def torch_logits(model, tokens_bt: np.ndarray, mask_bt: np.ndarray | None = None) -> np.ndarray:
  import torch
  with torch.no_grad():
    kwargs = {} if mask_bt is None else {'attention_mask': torch.tensor(mask_bt.astype(np.int64))}
    return model(torch.tensor(tokens_bt.astype(np.int64)), **kwargs).logits.float().numpy()


def write_checkpoint(path, cfg=None, dtype=np.float32, max_shard_bytes=10**9, change=None, extra=()):
  """A checkpoint directory for `cfg` with random tensors; `change` maps a name to a new shape."""
  from nlhf_jax.models import hf
  from nlhf_jax.models.hf import safetensors
  from nlhf_jax.models.hf.tensors import entries
  cfg = SMALL_LLAMA if cfg is None else cfg
  rng = np.random.default_rng(0)
  tensors = {e.name: rng.normal(size=e.stored_shape).astype(dtype) for e in entries(cfg)}
  for name, shape in (change or {}).items():
    tensors[name] = rng.normal(size=shape).astype(dtype)
  for name in extra:
    tensors[name] = np.zeros((2, 2), dtype)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(hf.hf_config(cfg), f)
  safetensors.write_sharded(path, [(n, t.shape, np.dtype(dtype)) for n, t in tensors.items()], tensors.get,
                            max_shard_bytes)
  return tensors
