"""Every supported Hugging Face family against transformers, on tiny random models (docs/models.md):

- float32 logits equal to transformers' (max abs difference <= 1e-4) on unpadded sequences longer than the
  sliding window;
- KV-cached greedy decoding of left-padded prompts gives the same 16 tokens as `generate`;
- nlhf-import -> nlhf-export -> transformers from_pretrained gives every tensor back bitwise, and the same logits.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax.models import hf
from nlhf_jax.sampling.sampler import SamplingConfig, jit_sample
from tests.models import hf_models

pytest.importorskip('transformers')


@pytest.fixture(scope='module', params=hf_models.FAMILIES)
def family(request, tmp_path_factory):
  name = request.param
  model, path = hf_models.make_model(name, str(tmp_path_factory.mktemp(name)))
  return name, model, path


def test_config_maps_to_the_family(family):
  name, model, path = family
  cfg, _ = hf.read_config(path)
  assert cfg.family == name and cfg.kv_heads == 2 and cfg.num_heads == 4
  assert cfg.is_local(0) == (name in ('mistral', 'gemma2', 'gemma3_text'))
  assert cfg.is_local(1) == (name == 'mistral')


def test_logits_equal_transformers(family):
  name, model, path = family
  tokens = hf_models.tokens(2, 3 * hf_models.WINDOW)  # longer than the sliding window
  ours, _ = hf.from_pretrained(path)(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), hf_models.torch_logits(model, tokens), atol=1e-4, rtol=0)


def test_cached_greedy_decoding_equals_generate(family):
  import torch
  name, model, path = family
  pads = [0, 3, 7]
  tokens = hf_models.tokens(3, 12, seed=1)
  mask = np.ones(tokens.shape, bool)
  for row, pad in enumerate(pads):  # left padding
    tokens[row, :pad], mask[row, :pad] = 0, False
  with torch.no_grad():
    out = model.generate(torch.tensor(tokens.astype(np.int64)), attention_mask=torch.tensor(mask.astype(np.int64)),
                         do_sample=False, max_new_tokens=16, min_new_tokens=16)
  expected = out[:, tokens.shape[1]:].numpy()
  graphdef, params = nnx.split(hf.from_pretrained(path))
  sample = jit_sample(graphdef, SamplingConfig(max_new_tokens=16, temperature=0.0, stop_ids=()))
  batch = {'prompt': jnp.asarray(tokens), 'prompt_mask': jnp.asarray(mask), 'example_index': jnp.arange(3)}
  got = np.asarray(sample(params, batch, jax.random.key(0))['tokens'])
  np.testing.assert_array_equal(got, expected)


def test_import_export_round_trip_is_bitwise(family, tmp_path):
  import torch
  import transformers
  from nlhf_jax.interop.exporter import export_run
  from nlhf_jax.interop.importer import import_run
  name, model, path = family
  run = import_run(path, str(tmp_path / 'run'))
  files = export_run(run, str(tmp_path / 'out'))
  assert 'config.json' in files and 'model.safetensors' in files
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'out'), attn_implementation='eager').eval()
  assert type(back) is type(model)
  original, reloaded = model.state_dict(), back.state_dict()
  assert set(original) == set(reloaded)
  for key, value in original.items():
    assert torch.equal(value, reloaded[key]), key
  tokens = hf_models.tokens(2, 20, seed=2)
  np.testing.assert_array_equal(hf_models.torch_logits(back, tokens), hf_models.torch_logits(model, tokens))
  assert os.path.exists(os.path.join(run, 'config.json'))


def test_native_models_export_as_llama(tmp_path):
  """A model of the built-in shape (no family) is written as a Llama checkpoint with tied embeddings that
  transformers loads with the same logits."""
  import transformers

  from nlhf_jax.config import ModelConfig
  from nlhf_jax.models import Transformer, preset
  cfg = ModelConfig(**preset('tiny'))
  model = Transformer(cfg, nnx.Rngs(3))
  _, params = nnx.split(model)
  files = hf.save_pretrained(str(tmp_path), cfg, nnx.to_pure_dict(params))
  assert files == ['config.json', 'model.safetensors']
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation='eager').eval()
  assert type(back).__name__ == 'LlamaForCausalLM' and back.config.tie_word_embeddings
  tokens = hf_models.tokens(2, 10) % cfg.vocab_size
  ours, _ = model(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))
  np.testing.assert_allclose(np.asarray(ours), hf_models.torch_logits(back, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', ['gemma2', 'gemma3_text'])
def test_gemma_embedding_scale_is_rounded_like_transformers(name, tmp_path):
  """Gemma multiplies the embeddings by sqrt(d_model) in the weights' dtype: with bfloat16 parameters the
  constant is rounded to bfloat16 first (sqrt(48) = 6.93 -> 6.94) and the product is bfloat16, whatever the
  compute dtype. Our input embeddings equal transformers' bfloat16 ones bit for bit."""
  import torch
  extra = {'layer_types': ['sliding_attention']} if name == 'gemma3_text' else {}
  model, path = hf_models.make_model(name, str(tmp_path), hidden_size=48, num_hidden_layers=1, **extra)
  tokens = hf_models.tokens(2, 12, seed=3)
  with torch.no_grad():
    theirs = model.to(torch.bfloat16).model.embed_tokens(torch.tensor(tokens.astype(np.int64))).float().numpy()
  for compute in ('float32', 'bfloat16'):
    ours = hf.from_pretrained(path, dtype=jnp.bfloat16, compute_dtype=compute).embed_tokens(jnp.asarray(tokens))
    assert ours.dtype == jnp.dtype(compute)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), theirs, err_msg=compute)
