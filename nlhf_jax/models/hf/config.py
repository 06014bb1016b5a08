"""Hugging Face `config.json` <-> ModelConfig, for the supported families.

`model_config(hf)` reads a config.json dict (the classic keys `rope_theta`/`rope_scaling`/`rope_local_base_freq`
and the newer `rope_parameters`/`layer_types` alike) into the ModelConfig of the one Transformer; anything the
Transformer cannot compute exactly (a mixture of experts, an unknown RoPE type, an MLP bias, ...) is an
HFFormatError naming the field, raised before any tensor is read. `hf_config(cfg)` writes it back in the classic
keys that transformers and vLLM both read. Family defaults (for keys a config.json leaves out) are those of the
transformers configuration classes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from nlhf_jax.config import ModelConfig
from nlhf_jax.config.schema import architecture


class HFFormatError(ValueError):
  """A Hugging Face model directory that cannot be imported (or a run that cannot be exported), with the reason."""


@dataclasses.dataclass(frozen=True)
class Family:
  """What a family fixes and what its config.json may leave out."""
  architecture: str  # the *ForCausalLM class name written on export
  gemma: bool = False  # (1 + w) norms, sqrt(d_model) embedding scale, GeGLU, sandwich norms
  qkv_bias: bool | None = None  # fixed by the family (Qwen 2: True), else read from attention_bias
  qk_norm: bool = False
  activation_key: str = 'hidden_act'
  activation: str = 'silu'
  head_dim: int = 0  # default head_dim (0: hidden_size // num_attention_heads)
  tie: bool = False
  theta: float = 10_000.0
  local_theta: float = 0.0
  query_pre_attn_scalar: float = 0.0
  attn_softcap: float = 0.0  # default attn_logit_softcapping
  final_softcap: float = 0.0
  uses_attn_softcap: bool = True  # Gemma 3's attention ignores attn_logit_softcapping (as transformers does)
  window: int = 0  # default sliding_window


FAMILIES: dict[str, Family] = {
    'llama': Family('LlamaForCausalLM'),
    'mistral': Family('MistralForCausalLM', window=4096),
    'qwen2': Family('Qwen2ForCausalLM', qkv_bias=True, window=4096),
    'qwen3': Family('Qwen3ForCausalLM', qk_norm=True, head_dim=128, window=4096),
    'gemma2': Family('Gemma2ForCausalLM', gemma=True, activation_key='hidden_activation',
                     activation='gelu_pytorch_tanh', head_dim=256, tie=True, query_pre_attn_scalar=256,
                     attn_softcap=50.0, final_softcap=30.0, window=4096),
    'gemma3_text': Family('Gemma3ForCausalLM', gemma=True, qk_norm=True, activation_key='hidden_activation',
                          activation='gelu_pytorch_tanh', head_dim=256, tie=True, theta=1_000_000.0,
                          local_theta=10_000.0, query_pre_attn_scalar=256, uses_attn_softcap=False, window=4096),
}
# Known architectures that the one Transformer does not compute: named in the error.
_UNSUPPORTED = {
    'mixtral': 'a mixture of experts', 'qwen2_moe': 'a mixture of experts', 'qwen3_moe': 'a mixture of experts',
    'deepseek_v2': 'a mixture of experts', 'deepseek_v3': 'a mixture of experts', 'gemma3n': 'Gemma 3n',
    'llama4': 'a mixture of experts with chunked attention', 'gpt_oss': 'a mixture of experts',
}
_ACTIVATIONS = {'silu': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh'}
_LAYER_TYPES = {'full_attention': 'global', 'sliding_attention': 'local'}
_REQUIRED = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads')


def family_of(hf: dict) -> tuple[str, dict]:
  """(family, the text model's config) of a config.json; a Gemma 3 image-text checkpoint yields its text part."""
  model_type = hf.get('model_type', '')
  if model_type == 'gemma3':  # Gemma3ForConditionalGeneration: the language model's config is nested
    text = hf.get('text_config')
    if not isinstance(text, dict):
      raise HFFormatError("config.json: model_type 'gemma3' without a 'text_config' section")
    return 'gemma3_text', {**text, 'model_type': 'gemma3_text'}
  if model_type in FAMILIES:
    return model_type, hf
  if model_type in _UNSUPPORTED:
    raise HFFormatError(f'config.json: model_type {model_type!r} ({_UNSUPPORTED[model_type]}) is not supported; '
                        f'supported families: {", ".join(FAMILIES)}')
  raise HFFormatError(f'config.json: model_type {model_type!r} is not supported; supported families: '
                      f'{", ".join(FAMILIES)} (docs/models.md)')


def _get(hf: dict, key: str, default: Any) -> Any:
  value = hf.get(key)
  return default if value is None else value


def _reject(hf: dict, key: str, ok, why: str) -> None:
  if key in hf and hf[key] is not None and not ok(hf[key]):
    raise HFFormatError(f'config.json: {key}={hf[key]!r} is not supported ({why})')


def _rope(hf: dict, fam: Family) -> tuple[dict, float]:
  """(global rope parameters {type, theta, ...}, local theta or 0) from either config.json style."""
  params = hf.get('rope_parameters')
  theta = float(_get(hf, 'rope_theta', fam.theta))
  local_theta = float(_get(hf, 'rope_local_base_freq', fam.local_theta))
  if isinstance(params, dict) and 'full_attention' in params:  # nested by layer type
    local = params.get('sliding_attention') or {}
    if local.get('rope_type', 'default') != 'default':
      raise HFFormatError(f'config.json: rope_parameters.sliding_attention.rope_type={local["rope_type"]!r} is '
                          "not supported (local layers take plain RoPE)")
    local_theta = float(local.get('rope_theta', local_theta or theta))
    params = params['full_attention'] or {}
  elif not isinstance(params, dict) or not params:
    params = hf.get('rope_scaling') or {}
  params = dict(params)
  params.setdefault('rope_theta', theta)
  params['rope_type'] = params.get('rope_type', params.get('type', 'default'))
  return params, local_theta


def _rope_fields(hf: dict, fam: Family, has_local: bool) -> dict:
  params, local_theta = _rope(hf, fam)
  kind = params['rope_type']
  if float(params.get('partial_rotary_factor', hf.get('partial_rotary_factor') or 1.0)) != 1.0:
    raise HFFormatError('config.json: partial_rotary_factor < 1 is not supported (RoPE over the whole head)')
  out = {'rope_theta': float(params['rope_theta']), 'rope_local_theta': local_theta if has_local else 0.0}
  if fam.local_theta == 0.0:  # only Gemma 3 gives local layers a base of their own
    out['rope_local_theta'] = 0.0
  if kind == 'default':
    return out
  if kind == 'linear':
    return {**out, 'rope_scaling': 'linear', 'rope_factor': float(params['factor'])}
  if kind == 'llama3':
    original = params.get('original_max_position_embeddings', hf.get('max_position_embeddings'))
    return {**out, 'rope_scaling': 'llama3', 'rope_factor': float(params['factor']),
            'rope_low_freq_factor': float(params['low_freq_factor']),
            'rope_high_freq_factor': float(params['high_freq_factor']), 'rope_original_max_len': int(original)}
  raise HFFormatError(f'config.json: rope type {kind!r} is not supported; supported: default, linear, llama3')


def _window_fields(hf: dict, family: str, fam: Family, num_layers: int) -> dict:
  """sliding_window and layer_types as each family's transformers code reads them."""
  if family == 'llama':
    return {}
  if family == 'mistral':  # every layer local when a window is set
    window = hf['sliding_window'] if 'sliding_window' in hf else fam.window
    return {'sliding_window': int(window)} if window else {}
  if family in ('qwen2', 'qwen3') and not hf.get('use_sliding_window', False):
    return {}
  window = int(_get(hf, 'sliding_window', fam.window))
  types = hf.get('layer_types')
  if types is None:
    if family in ('qwen2', 'qwen3'):
      first = int(_get(hf, 'max_window_layers', 28))
      types = ['sliding_attention' if i >= first else 'full_attention' for i in range(num_layers)]
    else:
      pattern = 2 if family == 'gemma2' else int(_get(hf, 'sliding_window_pattern', 6))
      types = ['sliding_attention' if (i + 1) % pattern else 'full_attention' for i in range(num_layers)]
  if len(types) != num_layers:
    raise HFFormatError(f'config.json: layer_types has {len(types)} entries for {num_layers} layers')
  unknown = sorted({t for t in types if t not in _LAYER_TYPES})
  if unknown:
    raise HFFormatError(f'config.json: layer type {unknown[0]!r} is not supported; supported: '
                        f'{", ".join(_LAYER_TYPES)}')
  if 'sliding_attention' not in types or not window:
    return {}
  return {'sliding_window': window, 'layer_types': tuple(_LAYER_TYPES[t] for t in types)}


def model_config(hf: dict) -> ModelConfig:
  """The ModelConfig of a config.json dict; HFFormatError for anything unsupported."""
  family, hf = family_of(hf)
  fam = FAMILIES[family]
  missing = [k for k in _REQUIRED if k not in hf]
  if missing:
    raise HFFormatError(f'config.json lacks {", ".join(missing)}')
  _reject(hf, 'mlp_bias', lambda v: not v, 'biases in the MLP')
  _reject(hf, 'use_bidirectional_attention', lambda v: not v, 'bidirectional attention')
  _reject(hf, 'num_experts', lambda v: not v, 'a mixture of experts')
  _reject(hf, 'num_local_experts', lambda v: not v, 'a mixture of experts')
  activation = _get(hf, fam.activation_key, fam.activation)
  if activation not in _ACTIVATIONS or (activation == 'silu') == fam.gemma:
    raise HFFormatError(f'config.json: {fam.activation_key}={activation!r} is not supported for {family} '
                        f'(expected {fam.activation!r})')
  heads, layers = int(hf['num_attention_heads']), int(hf['num_hidden_layers'])
  attention_bias = bool(_get(hf, 'attention_bias', False))
  windows = _window_fields(hf, family, fam, layers)
  has_local = bool(windows) and (not windows.get('layer_types') or 'local' in windows['layer_types'])
  pad = hf.get('pad_token_id')
  fields = dict(
      preset=f'hf:{family}', family=family, vocab_size=int(hf['vocab_size']), d_model=int(hf['hidden_size']),
      num_layers=layers, num_heads=heads, num_kv_heads=int(_get(hf, 'num_key_value_heads', heads)),
      head_dim=int(_get(hf, 'head_dim', fam.head_dim or int(hf['hidden_size']) // heads)),
      mlp_dim=int(hf['intermediate_size']), max_len=int(_get(hf, 'max_position_embeddings', 2048)),
      tie_embeddings=bool(_get(hf, 'tie_word_embeddings', fam.tie)),
      norm_eps=float(_get(hf, 'rms_norm_eps', 1e-6)),
      pad_id=int(pad) if isinstance(pad, int) and 0 <= pad < int(hf['vocab_size']) else 0,
      qkv_bias=fam.qkv_bias if fam.qkv_bias is not None else attention_bias,
      out_bias=attention_bias and fam.qkv_bias is None, qk_norm=fam.qk_norm,
      norm_offset=1.0 if fam.gemma else 0.0, scale_embeddings=fam.gemma, post_norms=fam.gemma,
      mlp_activation=_ACTIVATIONS[activation],
      query_pre_attn_scalar=float(_get(hf, 'query_pre_attn_scalar', fam.query_pre_attn_scalar)),
      attn_logit_softcap=float(_get(hf, 'attn_logit_softcapping', fam.attn_softcap)) if fam.uses_attn_softcap
      else 0.0,
      final_logit_softcap=float(_get(hf, 'final_logit_softcapping', fam.final_softcap)),
      **windows, **_rope_fields(hf, fam, has_local))
  if fields['num_heads'] % fields['num_kv_heads']:
    raise HFFormatError(f'config.json: num_attention_heads={heads} is not a multiple of num_key_value_heads='
                        f'{fields["num_kv_heads"]}')
  return ModelConfig(**fields)


def _rope_json(cfg: ModelConfig) -> dict:
  if cfg.rope_scaling == 'none':
    return {'rope_theta': cfg.rope_theta}
  scaling = {'rope_type': cfg.rope_scaling, 'factor': cfg.rope_factor}
  if cfg.rope_scaling == 'llama3':
    scaling.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                   original_max_position_embeddings=cfg.rope_original_max_len)
  return {'rope_theta': cfg.rope_theta, 'rope_scaling': scaling}


def _windows_json(cfg: ModelConfig, family: str) -> dict:
  types = [('sliding_attention' if cfg.is_local(i) else 'full_attention') for i in range(cfg.num_layers)]
  if family == 'llama':
    if cfg.sliding_window:
      raise HFFormatError('a llama export cannot hold sliding-window layers')
    return {}
  if family == 'mistral':
    if cfg.sliding_window and not all(t == 'sliding_attention' for t in types):
      raise HFFormatError('a mistral export needs every layer local (or none)')
    return {'sliding_window': cfg.sliding_window or None}
  if family in ('qwen2', 'qwen3'):
    return {'use_sliding_window': bool(cfg.sliding_window), 'sliding_window': cfg.sliding_window or None,
            'max_window_layers': cfg.num_layers, 'layer_types': types}
  return {'sliding_window': cfg.sliding_window or 4096, 'layer_types': types}


def hf_config(cfg: ModelConfig, dtype: str = 'float32', token_ids: dict | None = None) -> dict:
  """config.json for `cfg` in its family (native models: llama), in the keys transformers and vLLM read."""
  family = cfg.family or 'llama'
  fam = FAMILIES[family]
  if model_config_mismatch(cfg, family):
    raise HFFormatError(f'this model cannot be written as {family}: {model_config_mismatch(cfg, family)}')
  out = {'architectures': [fam.architecture], 'model_type': family, 'vocab_size': cfg.vocab_size,
         'hidden_size': cfg.d_model, 'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
         'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.kv_heads, 'head_dim': cfg.head_dim,
         'max_position_embeddings': cfg.max_len, 'rms_norm_eps': cfg.norm_eps,
         'tie_word_embeddings': cfg.tie_embeddings, fam.activation_key: fam.activation, 'dtype': dtype}
  if fam.qkv_bias is None:
    out['attention_bias'] = cfg.qkv_bias
  if fam.gemma:
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    out['query_pre_attn_scalar'] = int(scalar) if float(scalar).is_integer() else scalar  # an int in transformers
    out['final_logit_softcapping'] = cfg.final_logit_softcap or None
    out['attn_logit_softcapping'] = cfg.attn_logit_softcap or None
  if family == 'gemma3_text':
    out['rope_local_base_freq'] = cfg.rope_local_theta or cfg.rope_theta
  out.update({**_rope_json(cfg), **_windows_json(cfg, family), **(token_ids or {})})
  return out


def model_config_mismatch(cfg: ModelConfig, family: str) -> str:
  """'' when `cfg` is expressible in `family`'s config.json, else what is not."""
  fam = FAMILIES[family]
  checks = [
      ('norm_offset', cfg.norm_offset, 1.0 if fam.gemma else 0.0),
      ('scale_embeddings', cfg.scale_embeddings, fam.gemma), ('post_norms', cfg.post_norms, fam.gemma),
      ('mlp_activation', cfg.mlp_activation, _ACTIVATIONS[fam.activation]), ('qk_norm', cfg.qk_norm, fam.qk_norm)]
  if fam.qkv_bias is not None:
    checks += [('qkv_bias', cfg.qkv_bias, fam.qkv_bias), ('out_bias', cfg.out_bias, False)]
  else:
    checks.append(('out_bias', cfg.out_bias, cfg.qkv_bias))
  if not fam.gemma:
    checks += [('attn_logit_softcap', cfg.attn_logit_softcap, 0.0), ('final_logit_softcap', cfg.final_logit_softcap,
                                                                     0.0),
               ('query_pre_attn_scalar', cfg.query_pre_attn_scalar or cfg.head_dim, cfg.head_dim)]
  if not fam.uses_attn_softcap:
    checks.append(('attn_logit_softcap', cfg.attn_logit_softcap, 0.0))
  if fam.local_theta == 0.0:
    checks.append(('rope_local_theta', cfg.rope_local_theta, 0.0))
  bad = [f'model.{k}={v!r} (the family has {w!r})' for k, v, w in checks if v != w]
  return '; '.join(bad)


ID_KEYS = ('bos_token_id', 'eos_token_id', 'pad_token_id')
DTYPE_KEYS = ('torch_dtype', 'dtype')


def original_dtype(original: dict) -> str:
  """The weights' dtype that a config.json names (torch_dtype or dtype, also in a nested text_config): 'float32',
  'bfloat16' or 'float16'; 'float32' when it names none of these."""
  for section in (original, original.get('text_config') or {}):
    for key in DTYPE_KEYS:
      value = section.get(key) if isinstance(section, dict) else None
      if value in ('float32', 'bfloat16', 'float16'):
        return value
  return 'float32'


def exported_config(cfg: ModelConfig, dtype: str, token_ids: dict | None, original: dict | None) -> dict:
  """The config.json of an export of `cfg` in `dtype`. Without `original` (a native run), hf_config. With the
  config.json the run was imported from, that file's keys and JSON values, except what the run changed: the dtype
  key(s), the vocabulary (padded at import) and any architecture key whose value would now read differently; ids
  (bos/eos/pad) are the original's and none is added. A Gemma 3 image-text config gives its text part (the export
  is the language model)."""
  ours = hf_config(cfg, dtype=dtype, token_ids=token_ids)
  if not original:
    return ours
  family, text = family_of(original)
  if family != cfg.family:
    return ours
  out = dict(text)
  if original.get('model_type') == 'gemma3':
    out['architectures'] = ours['architectures']
    out.update({k: original[k] for k in ID_KEYS if k in original and k not in text})
  present = [k for k in DTYPE_KEYS if k in out]
  for key in present or ['dtype']:
    out[key] = dtype
  target = architecture(cfg)
  if architecture(model_config(out)) != target:
    out['vocab_size'] = ours['vocab_size']
  if architecture(model_config(out)) != target:
    out.update({k: v for k, v in ours.items() if k not in ID_KEYS and k not in DTYPE_KEYS})
  got = architecture(model_config(out))
  if got != target:
    bad = sorted(k for k in target if got.get(k) != target[k])
    raise HFFormatError(f'the exported config.json cannot express the run\'s model.{bad[0]} ({len(bad)} field(s) '
                        'differ from the imported config.json)')
  return out
