"""The one table between Hugging Face tensor names and layouts and the Transformer's parameter paths.

Import and export read the same table in opposite directions, so an import followed by an export gives back
every tensor bitwise (in the dtype it was stored in). A Hugging Face linear layer stores its weight as
[out_features, in_features]; the Transformer keeps [in, out] with the heads as their own axis:

  q_proj [H*K, D] -> q [D, H, K]    k_proj/v_proj [KV*K, D] -> k/v [D, KV, K]    o_proj [D, H*K] -> o [H, K, D]
  gate_proj/up_proj [M, D] -> [D, M]    down_proj [D, M] -> [M, D]    lm_head [V, D] -> unembed [D, V]
  q/k/v biases [H*K] -> [H, K]; embeddings and norm weights as they are (Gemma's norms store w for 1 + w, as
  the Transformer does with norm_offset = 1).

Each entry is a reshape of the stored tensor followed by a transpose (`Layout`), both views of a memory map,
so that a device's slice of a parameter is read without materialising the whole tensor.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from nlhf_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Layout:
  """stored tensor --reshape(split)--> --transpose(perm)--> parameter."""
  split: tuple[int, ...]
  perm: tuple[int, ...]

  def to_param(self, stored: np.ndarray) -> np.ndarray:
    """A view of the parameter over the stored array (no copy for a memory map)."""
    return stored.reshape(self.split).transpose(self.perm)

  def to_stored(self, value: np.ndarray, stored_shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(value.transpose(np.argsort(self.perm))).reshape(stored_shape)

  def param_shape(self) -> tuple[int, ...]:
    return tuple(self.split[i] for i in self.perm)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str  # the Hugging Face tensor name (without a checkpoint-specific prefix)
  path: tuple[str, ...]  # the parameter's path in the Transformer's params dict
  stored_shape: tuple[int, ...]
  layout: Layout


def _same(*shape: int) -> Layout:
  return Layout(tuple(shape), tuple(range(len(shape))))


def _transposed(rows: int, cols: int) -> Layout:
  return Layout((rows, cols), (1, 0))


def _layer_entries(cfg: ModelConfig, i: int) -> Iterator[Entry]:
  d, h, kv, k, m = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
  hf, us = f'model.layers.{i}.', ('layer_' + str(i),)
  attn = us + ('attn',)
  yield Entry(hf + 'self_attn.q_proj.weight', attn + ('q',), (h * k, d), Layout((h, k, d), (2, 0, 1)))
  yield Entry(hf + 'self_attn.k_proj.weight', attn + ('k',), (kv * k, d), Layout((kv, k, d), (2, 0, 1)))
  yield Entry(hf + 'self_attn.v_proj.weight', attn + ('v',), (kv * k, d), Layout((kv, k, d), (2, 0, 1)))
  yield Entry(hf + 'self_attn.o_proj.weight', attn + ('o',), (d, h * k), Layout((d, h, k), (1, 2, 0)))
  if cfg.qkv_bias:
    yield Entry(hf + 'self_attn.q_proj.bias', attn + ('q_bias',), (h * k,), _same(h, k))
    yield Entry(hf + 'self_attn.k_proj.bias', attn + ('k_bias',), (kv * k,), _same(kv, k))
    yield Entry(hf + 'self_attn.v_proj.bias', attn + ('v_bias',), (kv * k,), _same(kv, k))
  if cfg.out_bias:
    yield Entry(hf + 'self_attn.o_proj.bias', attn + ('o_bias',), (d,), _same(d))
  if cfg.qk_norm:
    yield Entry(hf + 'self_attn.q_norm.weight', attn + ('q_norm', 'scale'), (k,), _same(k))
    yield Entry(hf + 'self_attn.k_norm.weight', attn + ('k_norm', 'scale'), (k,), _same(k))
  yield Entry(hf + 'input_layernorm.weight', us + ('attn_norm', 'scale'), (d,), _same(d))
  if cfg.post_norms:  # Gemma: post_attention_layernorm is the attention branch's output norm
    yield Entry(hf + 'post_attention_layernorm.weight', us + ('attn_post_norm', 'scale'), (d,), _same(d))
    yield Entry(hf + 'pre_feedforward_layernorm.weight', us + ('mlp_norm', 'scale'), (d,), _same(d))
    yield Entry(hf + 'post_feedforward_layernorm.weight', us + ('mlp_post_norm', 'scale'), (d,), _same(d))
  else:  # Llama: post_attention_layernorm is the norm before the MLP
    yield Entry(hf + 'post_attention_layernorm.weight', us + ('mlp_norm', 'scale'), (d,), _same(d))
  yield Entry(hf + 'mlp.gate_proj.weight', us + ('mlp', 'gate'), (m, d), _transposed(m, d))
  yield Entry(hf + 'mlp.up_proj.weight', us + ('mlp', 'up'), (m, d), _transposed(m, d))
  yield Entry(hf + 'mlp.down_proj.weight', us + ('mlp', 'down'), (d, m), _transposed(d, m))


def entries(cfg: ModelConfig) -> list[Entry]:
  """Every tensor of a causal LM with config `cfg`, in the order Hugging Face checkpoints list them."""
  out = [Entry('model.embed_tokens.weight', ('embed',), (cfg.vocab_size, cfg.d_model),
               _same(cfg.vocab_size, cfg.d_model))]
  for i in range(cfg.num_layers):
    out.extend(_layer_entries(cfg, i))
  out.append(Entry('model.norm.weight', ('final_norm', 'scale'), (cfg.d_model,), _same(cfg.d_model)))
  if not cfg.tie_embeddings:
    out.append(Entry('lm_head.weight', ('unembed',), (cfg.vocab_size, cfg.d_model),
                     _transposed(cfg.vocab_size, cfg.d_model)))
  return out


# Tensors some checkpoints carry that the model does not use.
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)
# Where checkpoints of image-text models keep the language model (Gemma 3 4B and larger).
TEXT_PREFIXES = ('', 'language_model.', 'model.language_model.')


def hf_name(entry_name: str, prefix: str) -> str:
  """The name of a table entry in a checkpoint whose language model sits under `prefix`."""
  if prefix == 'model.language_model.':  # model.language_model.layers..., lm_head stays at the top
    return entry_name.replace('model.', prefix, 1) if entry_name.startswith('model.') else entry_name
  return prefix + entry_name
