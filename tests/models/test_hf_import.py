"""Reading Hugging Face checkpoints: sharded or not, with or without the index, bfloat16, placed shard by shard;
and every malformed input stopped with one clear error before anything is read or compiled (no torch needed)."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from nlhf_jax.config import ModelConfig
from nlhf_jax.models import hf
from nlhf_jax.models.hf import safetensors
from tests.helpers import mesh
from tests.models import hf_models

CFG = hf_models.SMALL_LLAMA


def _logits(path, m=None):
  model = hf.from_pretrained(path, mesh=m)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % CFG.vocab_size
  return np.asarray(model(tokens, jnp.ones(tokens.shape, bool))[0])


def test_sharded_with_and_without_index_equals_one_file(tmp_path):
  hf_models.write_checkpoint(tmp_path / 'one')
  hf_models.write_checkpoint(tmp_path / 'sharded', max_shard_bytes=20_000)
  files = sorted(os.listdir(tmp_path / 'sharded'))
  assert safetensors.INDEX in files and sum(f.endswith('.safetensors') for f in files) > 2
  expected = _logits(tmp_path / 'one')
  np.testing.assert_array_equal(_logits(tmp_path / 'sharded'), expected)
  os.remove(tmp_path / 'sharded' / safetensors.INDEX)
  np.testing.assert_array_equal(_logits(tmp_path / 'sharded'), expected)


def test_bfloat16_checkpoints_load_as_exact_float32(tmp_path):
  tensors = hf_models.write_checkpoint(tmp_path, dtype=ml_dtypes.bfloat16)
  params = hf.load_params(str(tmp_path), CFG)
  assert params['embed'].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(params['embed']), tensors['model.embed_tokens.weight'].astype(np.float32))
  q = tensors['model.layers.0.self_attn.q_proj.weight'].astype(np.float32).reshape(4, 8, 32).transpose(2, 0, 1)
  np.testing.assert_array_equal(np.asarray(params['layer_0']['attn']['q']), q)


def test_each_device_reads_only_its_slice(tmp_path, devices, monkeypatch):
  """On fsdp=8 every parameter is placed by the rule table and each device reads its own slice: the bytes read
  for a sharded tensor add up to the tensor once."""
  hf_models.write_checkpoint(tmp_path)
  reads = {}
  real = jax.make_array_from_callback

  def counting(shape, sharding, fetch):
    def counted(index):
      out = fetch(index)
      reads[shape] = reads.get(shape, 0) + out.size
      return out
    return real(shape, sharding, counted)

  monkeypatch.setattr(jax, 'make_array_from_callback', counting)
  m = mesh(fsdp=8)
  params = hf.load_params(str(tmp_path), CFG, m)
  embed = params['embed']
  assert embed.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  assert embed.addressable_shards[0].data.shape == (CFG.vocab_size, CFG.d_model // 8)
  # The embedding [V, D] and the unembedding [D, V], each sharded over fsdp: read once in all.
  assert reads[(CFG.vocab_size, CFG.d_model)] == reads[(CFG.d_model, CFG.vocab_size)] == CFG.vocab_size * CFG.d_model
  np.testing.assert_allclose(_logits(tmp_path, m), _logits(tmp_path), rtol=1e-5, atol=1e-4)


def test_missing_shard_is_named(tmp_path):
  hf_models.write_checkpoint(tmp_path, max_shard_bytes=20_000)
  os.remove(next(tmp_path.glob('model-00002-of-*.safetensors')))
  with pytest.raises(safetensors.SafetensorsError, match='shard.*missing, first model-00002-of'):
    hf.from_pretrained(str(tmp_path))


def test_wrong_shape_is_named(tmp_path):
  hf_models.write_checkpoint(tmp_path, change={'model.layers.1.mlp.up_proj.weight': (63, 32)})
  with pytest.raises(hf.HFFormatError, match=r'model.layers.1.mlp.up_proj.weight has shape \[63, 32\], but '
                                             r'config.json implies \[64, 32\]'):
    hf.from_pretrained(str(tmp_path))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  tensors = hf_models.write_checkpoint(tmp_path / 'extra', extra=['model.layers.0.mlp.experts.0.w1.weight'])
  with pytest.raises(hf.HFFormatError, match='unexpected tensor model.layers.0.mlp.experts.0.w1.weight'):
    hf.from_pretrained(str(tmp_path / 'extra'))
  del tensors
  untied = ModelConfig(**{**CFG.__dict__, 'tie_embeddings': True})
  hf_models.write_checkpoint(tmp_path / 'tied', cfg=untied)
  config = json.loads((tmp_path / 'tied' / 'config.json').read_text())
  (tmp_path / 'tied' / 'config.json').write_text(json.dumps(dict(config, tie_word_embeddings=False)))
  with pytest.raises(hf.HFFormatError, match='tensor lm_head.weight is missing'):
    hf.from_pretrained(str(tmp_path / 'tied'))


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(hf.HFFormatError, match='is not a directory'):
    hf.read_config(str(tmp_path / 'nowhere'))
  with pytest.raises(hf.HFFormatError, match='has no config.json'):
    hf.read_config(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps(hf.hf_config(CFG)))
  with pytest.raises(safetensors.SafetensorsError, match='no \\*.safetensors file'):
    hf.from_pretrained(str(tmp_path))
  (tmp_path / 'model.safetensors').write_bytes(b'\x05\x00')
  with pytest.raises(safetensors.SafetensorsError, match='not a safetensors file'):
    hf.from_pretrained(str(tmp_path))


@pytest.mark.parametrize('problem', ['moe', 'rope', 'shape'])
def test_nlhf_import_stops_with_one_error_line(tmp_path, problem):
  """The command reports the problem in one line, before anything is compiled, and writes nothing."""
  src = tmp_path / 'hf'
  hf_models.write_checkpoint(src, CFG, change={'model.layers.0.self_attn.k_proj.weight': (8, 32)} if problem == 'shape' else None)
  config = json.loads((src / 'config.json').read_text())
  if problem == 'moe':
    config.update(model_type='mixtral', num_local_experts=8)
  if problem == 'rope':
    config['rope_scaling'] = {'rope_type': 'longrope', 'factor': 4.0}
  (src / 'config.json').write_text(json.dumps(config))
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.hf_import', f'--hf_dir={src}',
                        f'--workdir={tmp_path / "run"}'], capture_output=True, text=True, timeout=120,
                       cwd=pathlib.Path(__file__).parents[2], env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), out.stderr[-2000:]
  assert {'moe': 'mixture of experts', 'rope': "rope type 'longrope'", 'shape': 'k_proj.weight has shape'}[
      problem] in lines[0]
  assert not (tmp_path / 'run').exists()


def test_scanned_layout_reads_each_layer_into_the_stack(tmp_path, devices):
  """A checkpoint read into the scanned layout (config.model.scan_layers) is the unrolled one, stacked; on an
  fsdp mesh as well. Export writes the same tensors back."""
  import dataclasses

  from nlhf_jax.models.transformer import stack_layers
  tensors = hf_models.write_checkpoint(tmp_path / 'hf')
  scanned = dataclasses.replace(CFG, scan_layers=True)
  expected = stack_layers(hf.load_params(str(tmp_path / 'hf'), CFG), CFG.num_layers)
  got = hf.load_params(str(tmp_path / 'hf'), scanned, mesh(fsdp=8))
  assert got['layers']['attn']['q'].shape == (CFG.num_layers, 32, 4, 8)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, expected)
  hf.save_pretrained(str(tmp_path / 'out'), scanned, got)
  reader = safetensors.SafetensorsReader(str(tmp_path / 'out'))
  for name, value in tensors.items():
    np.testing.assert_array_equal(np.asarray(reader.array(name)), value)
