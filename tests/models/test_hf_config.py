"""config.json -> ModelConfig for the supported families, in the classic keys that Hub checkpoints carry
(rope_theta, rope_scaling, rope_local_base_freq, no layer_types) and back; unsupported configs are refused."""
import dataclasses

import jax
import pytest
from flax import nnx

from nlhf_jax.models import Transformer
from nlhf_jax.models.hf import HFFormatError, hf_config, model_config

# The architecture keys of released checkpoints (their config.json files), as they are on the Hub.
LLAMA_3_1_8B = dict(
    architectures=['LlamaForCausalLM'], attention_bias=False, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
    hidden_act='silu', hidden_size=4096, intermediate_size=14336, max_position_embeddings=131072, mlp_bias=False,
    model_type='llama', num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8, rms_norm_eps=1e-05,
    rope_scaling={'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                  'original_max_position_embeddings': 8192, 'rope_type': 'llama3'},
    rope_theta=500000.0, tie_word_embeddings=False, vocab_size=128256)
QWEN_2_5_7B = dict(
    architectures=['Qwen2ForCausalLM'], hidden_act='silu', hidden_size=3584, intermediate_size=18944,
    max_position_embeddings=32768, max_window_layers=28, model_type='qwen2', num_attention_heads=28,
    num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=131072,
    tie_word_embeddings=False, use_sliding_window=False, vocab_size=152064)
QWEN_3_8B = dict(
    architectures=['Qwen3ForCausalLM'], attention_bias=False, head_dim=128, hidden_act='silu', hidden_size=4096,
    intermediate_size=12288, max_position_embeddings=40960, model_type='qwen3', num_attention_heads=32,
    num_hidden_layers=36, num_key_value_heads=8, rms_norm_eps=1e-06, rope_scaling=None, rope_theta=1000000,
    tie_word_embeddings=False, use_sliding_window=False, vocab_size=151936)
MISTRAL_7B_V01 = dict(
    architectures=['MistralForCausalLM'], hidden_act='silu', hidden_size=4096, intermediate_size=14336,
    max_position_embeddings=32768, model_type='mistral', num_attention_heads=32, num_hidden_layers=32,
    num_key_value_heads=8, rms_norm_eps=1e-05, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
    vocab_size=32000)
GEMMA_2_9B = dict(
    architectures=['Gemma2ForCausalLM'], attn_logit_softcapping=50.0, final_logit_softcapping=30.0, head_dim=256,
    hidden_activation='gelu_pytorch_tanh', hidden_size=3584, intermediate_size=14336, max_position_embeddings=8192,
    model_type='gemma2', num_attention_heads=16, num_hidden_layers=42, num_key_value_heads=8,
    query_pre_attn_scalar=256, rms_norm_eps=1e-06, rope_theta=10000.0, sliding_window=4096, vocab_size=256000)
GEMMA_3_4B = dict(  # the image-text checkpoint: the language model's config is nested
    architectures=['Gemma3ForConditionalGeneration'], model_type='gemma3', text_config=dict(
        hidden_size=2560, intermediate_size=10240, model_type='gemma3_text', num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        rope_scaling={'factor': 8.0, 'rope_type': 'linear'}, sliding_window=1024, vocab_size=262208),
    vision_config=dict(model_type='siglip_vision_model'))


def test_llama_3_1():
  cfg = model_config(LLAMA_3_1_8B)
  assert (cfg.family, cfg.num_kv_heads, cfg.head_dim, cfg.rope_scaling, cfg.rope_factor) == ('llama', 8, 128,
                                                                                              'llama3', 8.0)
  assert cfg.rope_original_max_len == 8192 and cfg.rope_theta == 500000.0 and not cfg.tie_embeddings
  assert not cfg.qkv_bias and not cfg.sliding_window and cfg.norm_eps == 1e-5
  n = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))))
  assert 8.02e9 < n < 8.04e9, n  # Llama 3.1 8B: 8.03B parameters


def test_qwen_2_5_has_biases_and_no_window():
  cfg = model_config(QWEN_2_5_7B)
  assert cfg.qkv_bias and not cfg.out_bias and not cfg.sliding_window and cfg.head_dim == 128
  assert cfg.kv_heads == 4 and cfg.rope_theta == 1e6


def test_qwen_3_has_qk_norm():
  cfg = model_config(QWEN_3_8B)
  assert cfg.qk_norm and not cfg.qkv_bias and cfg.head_dim == 128 and cfg.num_layers == 36


def test_mistral_window_on_every_layer_or_none():
  cfg = model_config(MISTRAL_7B_V01)
  assert cfg.sliding_window == 4096 and all(cfg.is_local(i) for i in range(32))
  assert not model_config(dict(MISTRAL_7B_V01, sliding_window=None)).sliding_window  # v0.2 and later


def test_gemma_2_alternates_local_and_global():
  cfg = model_config(GEMMA_2_9B)
  assert cfg.layer_types[:4] == ('local', 'global', 'local', 'global') and cfg.sliding_window == 4096
  assert (cfg.norm_offset, cfg.scale_embeddings, cfg.post_norms, cfg.mlp_activation) == (1.0, True, True,
                                                                                        'gelu_tanh')
  assert (cfg.attn_logit_softcap, cfg.final_logit_softcap, cfg.query_pre_attn_scalar) == (50.0, 30.0, 256.0)
  assert cfg.tie_embeddings


def test_gemma_3_text_of_an_image_text_checkpoint():
  cfg = model_config(GEMMA_3_4B)
  assert cfg.family == 'gemma3_text' and cfg.qk_norm and cfg.num_layers == 34
  # Five local layers, then a global one; global layers scaled linearly from base 1e6, local ones at 1e4.
  assert [i for i in range(34) if not cfg.is_local(i)] == [5, 11, 17, 23, 29]
  assert (cfg.rope_theta, cfg.rope_local_theta, cfg.rope_scaling, cfg.rope_factor) == (1e6, 1e4, 'linear', 8.0)
  assert cfg.attn_logit_softcap == 0.0 and cfg.final_logit_softcap == 0.0 and cfg.sliding_window == 1024


@pytest.mark.parametrize('hub', [LLAMA_3_1_8B, QWEN_2_5_7B, QWEN_3_8B, MISTRAL_7B_V01, GEMMA_2_9B, GEMMA_3_4B])
def test_written_config_reads_back_the_same(hub):
  cfg = model_config(hub)
  again = model_config(hf_config(cfg))
  assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize('change,message', [
    (dict(model_type='mixtral'), 'mixture of experts'),
    (dict(model_type='qwen3_moe'), 'mixture of experts'),
    (dict(model_type='phi3'), "model_type 'phi3' is not supported"),
    (dict(rope_scaling={'rope_type': 'yarn', 'factor': 4.0}), "rope type 'yarn' is not supported"),
    (dict(rope_scaling={'type': 'dynamic', 'factor': 2.0}), "rope type 'dynamic' is not supported"),
    (dict(mlp_bias=True), 'mlp_bias=True is not supported'),
    (dict(hidden_act='gelu'), "hidden_act='gelu' is not supported"),
    (dict(partial_rotary_factor=0.5), 'partial_rotary_factor'),
    (dict(num_key_value_heads=5), 'not a multiple of num_key_value_heads'),
    (dict(vocab_size=None), 'lacks vocab_size'),
])
def test_unsupported_configs_name_the_field(change, message):
  hub = {k: v for k, v in dict(LLAMA_3_1_8B, **change).items() if v is not None}
  with pytest.raises(HFFormatError, match=message):
    model_config(hub)


def test_unknown_layer_type_is_refused():
  with pytest.raises(HFFormatError, match="layer type 'chunked_attention'"):
    model_config(dict(GEMMA_2_9B, layer_types=['chunked_attention'] * 42))
