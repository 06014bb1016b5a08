"""nlhf-import's inputs and outputs: a tokenizer with ids beyond the embedding (accepted when text never produces
them, or the embedding padded on request), a workdir that holds anything or holds the model, an interrupted
import, the original JSON files kept, and a damaged safetensors file as one `error:` line."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from nlhf_jax.config import ConfigError, ModelConfig
from nlhf_jax.data.tokenizer import TokenizerError, check_vocab, load_tokenizer
from nlhf_jax.interop.importer import import_run
from nlhf_jax.models import Transformer
from nlhf_jax.models.hf.safetensors import SafetensorsReader
from nlhf_jax.outputs import OutputError
from nlhf_jax.training import checkpointing
from tests.helpers import mesh, subprocess_env
from tests.models import hf_models

pytest.importorskip('transformers')
ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE_VOCAB = 656  # the gemma-style test tokenizer: 400 BPE ids and 256 byte pieces


def _model_dir(path, tokenizer: str | None, vocab: int = BASE_VOCAB, **tokenizer_args) -> str:
  """A Llama checkpoint (no torch) with `vocab` embedding rows and a gemma-style tokenizer."""
  from tests.hf_assets import make_tokenizer_dir
  cfg = ModelConfig(**{**hf_models.SMALL_LLAMA.__dict__, 'vocab_size': vocab})
  hf_models.write_checkpoint(path, cfg)
  if tokenizer:
    make_tokenizer_dir(str(path), tokenizer, **tokenizer_args)
  return str(path)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """Model folders: 'plain' (tokenizer and embedding of the same size), 'special' (one more id, a special token
  text never produces: Gemma 3 1B's case), 'ordinary' (one more id, an ordinary added token)."""
  root = tmp_path_factory.mktemp('import_sources')
  return {'plain': _model_dir(root / 'plain', 'gemma'),
          'special': _model_dir(root / 'special', 'gemma', extra_special=('<image_soft_token>',)),
          'ordinary': _model_dir(root / 'ordinary', 'gemma', extra_tokens=('zzzq',))}


def _params(run: str) -> dict:
  cfg = ModelConfig.from_dict(json.loads(pathlib.Path(run, 'config.json').read_text())['model'])
  _, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  params, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(run),
                                           checkpointing.params_target(abstract, mesh()))
  return params


def test_extra_special_id_beyond_the_embedding_is_accepted_and_named(sources, tmp_path, caplog):
  run = import_run(sources['special'], str(tmp_path / 'run'), mesh=mesh())
  saved = json.loads(pathlib.Path(run, 'config.json').read_text())
  assert saved['model']['vocab_size'] == BASE_VOCAB
  notes = [r.getMessage() for r in caplog.records if 'lie beyond' in r.getMessage()]
  assert len(notes) == 1 and f'ids {BASE_VOCAB} (<image_soft_token>)' in notes[0], notes
  # Training checks the same tokenizer against the same embedding: accepted, the extra id returned.
  assert check_vocab(load_tokenizer(saved['data']['tokenizer']), BASE_VOCAB) == [BASE_VOCAB]


def test_extra_ordinary_id_is_refused_with_the_padding_flag(sources, tmp_path):
  with pytest.raises(TokenizerError, match=rf'ids {BASE_VOCAB} beyond it are tokens that text .* can produce; '
                                           'pass --pad_vocab_to_tokenizer'):
    import_run(sources['ordinary'], str(tmp_path / 'run'), mesh=mesh())
  assert not (tmp_path / 'run').exists() and os.listdir(tmp_path) == []
  with pytest.raises(TokenizerError, match='config.model.vocab_size'):
    check_vocab(load_tokenizer(sources['ordinary']), BASE_VOCAB)


def test_pad_vocab_to_tokenizer_pads_with_the_mean_row(sources, tmp_path):
  """The embedding and the untied unembedding grow to the tokenizer's size rounded up to the multiple; the
  stored rows are kept bitwise, the new ones are the mean of them; an export writes the padded vocabulary."""
  from nlhf_jax.interop.exporter import export_run
  run = import_run(sources['ordinary'], str(tmp_path / 'run'), mesh=mesh(), pad_vocab=True, pad_multiple=8)
  size = -(-(BASE_VOCAB + 1) // 8) * 8
  assert json.loads(pathlib.Path(run, 'config.json').read_text())['model']['vocab_size'] == size
  params = _params(run)
  reader = SafetensorsReader(sources['ordinary'])
  embed, lm_head = reader.array('model.embed_tokens.weight'), reader.array('lm_head.weight')
  got_embed, got_unembed = np.asarray(params['embed']), np.asarray(params['unembed'])
  assert got_embed.shape == (size, 32) and got_unembed.shape == (32, size)
  np.testing.assert_array_equal(got_embed[:BASE_VOCAB], embed)
  np.testing.assert_array_equal(got_unembed[:, :BASE_VOCAB], lm_head.T)
  np.testing.assert_allclose(got_embed[BASE_VOCAB:], np.broadcast_to(embed.mean(0), (size - BASE_VOCAB, 32)),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_unembed[:, BASE_VOCAB:].T, np.broadcast_to(lm_head.mean(0), (size - BASE_VOCAB,
                                                                                                32)), rtol=1e-6,
                             atol=1e-7)
  export_run(run, str(tmp_path / 'out'), mesh=mesh())
  original = json.loads(pathlib.Path(sources['ordinary'], 'config.json').read_text())
  exported = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert {k for k in original if exported[k] != original[k]} == {'vocab_size'} and exported['vocab_size'] == size
  with pytest.raises(ConfigError, match='--pad_vocab_multiple=8: give a positive multiple, together with'):
    import_run(sources['plain'], str(tmp_path / 'other'), mesh=mesh(), pad_multiple=8)


def test_import_keeps_the_original_json_files(sources, tmp_path):
  src = pathlib.Path(sources['plain'])
  run = pathlib.Path(import_run(str(src), str(tmp_path / 'run'), mesh=mesh()))
  assert (run / 'hf_config.json').read_bytes() == (src / 'config.json').read_bytes()
  assert (run / 'hf_generation_config.json').read_bytes() == (src / 'generation_config.json').read_bytes()


def test_workdir_that_holds_anything_is_refused_without_overwrite(sources, tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  with pytest.raises(OutputError, match=r'already holds notes.txt; pass --overwrite'):
    import_run(sources['plain'], str(workdir), mesh=mesh())
  assert os.listdir(workdir) == ['notes.txt']
  import_run(sources['plain'], str(workdir), mesh=mesh(), overwrite=True)
  assert 'notes.txt' not in os.listdir(workdir) and (workdir / 'checkpoints').is_dir()
  assert sorted(os.listdir(tmp_path)) == ['run']


def test_workdir_that_is_or_holds_the_model_is_refused_even_with_overwrite(sources, tmp_path):
  src = pathlib.Path(sources['plain'])
  before = sorted(os.listdir(src))
  for workdir in (src, src.parent):
    with pytest.raises(ConfigError, match='is or holds --hf_dir'):
      import_run(str(src), str(workdir), mesh=mesh(), overwrite=True)
  assert sorted(os.listdir(src)) == before


def test_interrupted_import_keeps_the_old_run(sources, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  workdir = tmp_path / 'run'
  import_run(sources['plain'], str(workdir), mesh=mesh())
  before = {str(p.relative_to(workdir)): p.read_bytes() for p in workdir.rglob('*') if p.is_file()}

  def broken(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', broken)
  with pytest.raises(OSError, match='disk full'):
    import_run(sources['plain'], str(workdir), mesh=mesh(), overwrite=True)
  assert {str(p.relative_to(workdir)): p.read_bytes() for p in workdir.rglob('*') if p.is_file()} == before
  assert sorted(os.listdir(tmp_path)) == ['run']


def _command(*args: str) -> list[str]:
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.hf_import', *args], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=subprocess_env(1))
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), out.stderr[-3000:]
  return lines


def test_truncated_safetensors_file_is_one_error_line(tmp_path):
  """A shard cut short in the middle of its tensors (an interrupted download): one line naming the file, before
  anything is written."""
  src = tmp_path / 'hf'
  hf_models.write_checkpoint(src, max_shard_bytes=20_000)
  shard = next(src.glob('model-00002-of-*.safetensors'))
  size = shard.stat().st_size
  with open(shard, 'r+b') as f:
    f.truncate(size // 2)
  lines = _command(f'--hf_dir={src}', f'--workdir={tmp_path / "run"}')
  assert f'{shard} is truncated or damaged' in lines[0] and 'download the file again' in lines[0]
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('case', ['busy_workdir', 'bad_mesh', 'bad_dtype'])
def test_bad_flags_are_one_error_line(sources, tmp_path, case):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  if case == 'busy_workdir':
    (workdir / 'notes.txt').write_text('mine')
  flag = {'busy_workdir': [], 'bad_mesh': ['--mesh=fsdp'], 'bad_dtype': ['--dtype=float16']}[case]
  lines = _command(f'--hf_dir={sources["plain"]}', f'--workdir={workdir}', *flag)
  assert {'busy_workdir': 'already holds notes.txt', 'bad_mesh': "--mesh='fsdp': expected AXIS=SIZE",
          'bad_dtype': '--dtype=float16: the run\'s parameters are float32 or bfloat16'}[case] in lines[0]
  assert os.listdir(workdir) == (['notes.txt'] if case == 'busy_workdir' else [])


def test_malformed_config_json_is_named(tmp_path):
  from nlhf_jax.models import hf
  good = hf.hf_config(hf_models.SMALL_LLAMA)
  for value, message in [([1, 2], 'holds a JSON list, not the object'),
                         (dict(good, hidden_size='wide'), 'a value of the wrong type'),
                         (dict(good, num_attention_heads=None), 'a value of the wrong type')]:
    (tmp_path / 'config.json').write_text(json.dumps(value))
    with pytest.raises(hf.HFFormatError, match=message):
      hf.read_config(str(tmp_path))
