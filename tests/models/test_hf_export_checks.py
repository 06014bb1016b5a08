"""nlhf-export's inputs and outputs: config.json and generation_config.json kept key by key from the imported
originals, the run's change measured against the export dtype, --out that may not destroy anything, runs
recorded with absolute paths (a LoRA run exports from any folder), and every bad input one `error:` line.

A trained run is made by hand (the imported parameters plus a known change, saved as a run's checkpoint), so no
training step is compiled."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from nlhf_jax.config import ConfigError, ModelConfig
from nlhf_jax.interop import exporter, runs
from nlhf_jax.interop.exporter import export_run
from nlhf_jax.interop.importer import import_run
from nlhf_jax.models import Transformer, hf
from nlhf_jax.models.hf.safetensors import SafetensorsReader
from nlhf_jax.outputs import OutputError
from nlhf_jax.training import checkpointing
from tests.helpers import mesh, subprocess_env
from tests.models import hf_models

pytest.importorskip('transformers')
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """(root, the Hugging Face folder, its import): a one-layer Qwen 3 whose config.json has a bos id, an eos list
  in a non-sorted order and no pad id (as Qwen 3's and Llama 3.1's do)."""
  from nlhf_jax.data.tokenizer import load_tokenizer
  from tests.hf_assets import make_tokenizer_dir
  root = tmp_path_factory.mktemp('export')
  src = str(root / 'hf')
  make_tokenizer_dir(src, 'qwen')
  vocab = load_tokenizer(src).vocab_size
  hf_models.make_model('qwen3', src, vocab_size=vocab, num_hidden_layers=1, bos_token_id=vocab - 1,
                       eos_token_id=[3, 1])
  config = json.loads(pathlib.Path(src, 'config.json').read_text())
  config.pop('pad_token_id', None)
  pathlib.Path(src, 'config.json').write_text(json.dumps(config, indent=2))
  assert config['bos_token_id'] == vocab - 1 and config['eos_token_id'] == [3, 1] and 'pad_token_id' not in config
  return root, src, import_run(src, str(root / 'import'), mesh=mesh())


def _params(run: str, cfg: ModelConfig) -> dict:
  _, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
  params, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(run),
                                           checkpointing.params_target(abstract, mesh()))
  return params


def _save_run(path: str, config: dict, params: dict, step: int = 3) -> str:
  manager = ocp.CheckpointManager(os.path.join(path, 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             meta=ocp.args.JsonSave({'config': config})))
  manager.wait_until_finished()
  manager.close()
  checkpointing.write_run_config(path, config)
  return path


def trained_run(path, base: str, relative_change: float, seed: int = 0) -> str:
  """An SFT run started from `base` whose every weight moved by `relative_change` of its size (random sign)."""
  config = runs.run_config(base)
  config = dict(config, init_checkpoint=base, train=dict(config['train'], objective='sft', num_steps=3))
  cfg = ModelConfig.from_dict(config['model'])
  rng = np.random.default_rng(seed)
  moved = jax.tree.map(lambda x: np.asarray(x) * (1 + relative_change * rng.choice([-1.0, 1.0], x.shape)),
                       _params(base, cfg))
  return _save_run(str(path), config, moved)


def test_export_keeps_every_key_of_the_imported_json_files(imported, tmp_path):
  """Every key of config.json and generation_config.json has the original JSON value (bos id, the eos list in its
  order, no pad id added); exported in another dtype, only the dtype key differs."""
  _, src, run = imported
  trained = trained_run(tmp_path / 'sft', run, 1e-2)
  original = json.loads(pathlib.Path(src, 'config.json').read_text())
  generation = json.loads(pathlib.Path(src, 'generation_config.json').read_text())
  export_run(trained, str(tmp_path / 'out'), mesh=mesh())
  exported = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert list(exported) == list(original)
  for key, value in original.items():
    assert json.dumps(exported[key]) == json.dumps(value), key
  assert json.loads((tmp_path / 'out' / 'generation_config.json').read_text()) == generation
  export_run(trained, str(tmp_path / 'half'), dtype='bfloat16', mesh=mesh())
  half = json.loads((tmp_path / 'half' / 'config.json').read_text())
  assert {k for k in original if half[k] != original[k]} == {'dtype'} and half['dtype'] == 'bfloat16'
  assert set(half) == set(original)


def test_exported_config_of_a_gemma_3_image_text_original():
  """The export is the language model: the text part of the original, its ids kept."""
  from tests.models.test_hf_config import GEMMA_3_4B
  original = dict(GEMMA_3_4B, bos_token_id=2, eos_token_id=[1, 106], torch_dtype='bfloat16')
  cfg = hf.model_config(original)
  out = hf.exported_config(cfg, 'bfloat16', {'bos_token_id': 2, 'eos_token_id': 1, 'pad_token_id': 0}, original)
  assert out['architectures'] == ['Gemma3ForCausalLM'] and out['model_type'] == 'gemma3_text'
  assert out['eos_token_id'] == [1, 106] and 'pad_token_id' not in out and 'vision_config' not in out
  assert hf.model_config(out) == cfg
  assert hf.original_dtype(original) == 'bfloat16' and hf.original_dtype({}) == 'float32'


def test_default_dtype_is_the_imported_checkpoints(imported, tmp_path):
  _, _, run = imported
  trained = trained_run(tmp_path / 'sft', run, 1e-2)
  assert exporter.plan(trained, str(tmp_path / 'out')).dtype == 'float32'
  bf16 = tmp_path / 'bf16_import'
  shutil.copytree(run, bf16)
  kept = json.loads((bf16 / 'hf_config.json').read_text())
  (bf16 / 'hf_config.json').write_text(json.dumps(dict(kept, dtype='bfloat16')))
  assert exporter.plan(str(bf16), str(tmp_path / 'out')).dtype == 'bfloat16'


def test_a_change_below_bfloat16_rounding_is_refused_in_bfloat16(imported, tmp_path):
  """Weights moved by 1e-5 of their size (bfloat16's step is 2^-8 of it): refused in bfloat16, written with
  --allow_lossy or in float32; a change of 5% survives bfloat16."""
  _, _, run = imported
  small = trained_run(tmp_path / 'small', run, 1e-5)
  with pytest.raises(ConfigError, match=r'keeps \d+\.\d% of the run.s change.*most of the training is lost in '
                                        r'bfloat16.*--allow_lossy'):
    export_run(small, str(tmp_path / 'refused'), dtype='bfloat16', mesh=mesh())
  assert not (tmp_path / 'refused').exists()
  export_run(small, str(tmp_path / 'lossy'), dtype='bfloat16', mesh=mesh(), allow_lossy=True)
  export_run(small, str(tmp_path / 'exact'), dtype='float32', mesh=mesh())
  reader = SafetensorsReader(str(tmp_path / 'exact'))
  assert reader.dtype('model.embed_tokens.weight') == np.float32
  large = trained_run(tmp_path / 'large', run, 5e-2)
  trained, initial = _params(large, _model(run)), _params(run, _model(run))
  kept, per = exporter.measure_change(trained, initial, 'bfloat16')
  assert kept > 0.9 and all(share > 0.9 for _, share, _ in per)
  kept, per = exporter.measure_change(_params(small, _model(run)), initial, 'bfloat16')
  assert kept < 0.5 and per[0][2] < 0.5


def _model(run: str) -> ModelConfig:
  return ModelConfig.from_dict(runs.run_config(run)['model'])


def test_out_that_holds_another_model_is_refused_without_overwrite(imported, tmp_path):
  _, src, run = imported
  other = tmp_path / 'other'
  shutil.copytree(src, other)
  before = {p.name: p.read_bytes() for p in other.iterdir()}
  with pytest.raises(OutputError, match=r'already holds .*config.json.*--overwrite'):
    export_run(run, str(other), mesh=mesh())
  assert {p.name: p.read_bytes() for p in other.iterdir()} == before
  export_run(run, str(other), mesh=mesh(), overwrite=True)
  assert 'model.safetensors' in os.listdir(other) and not [n for n in os.listdir(tmp_path) if n.startswith('.')]


def test_out_that_holds_only_hidden_entries_is_not_empty(imported, tmp_path):
  """A clone of a Hub repository (.git, .gitattributes) is not an empty folder: the export would delete it."""
  _, _, run = imported
  clone = tmp_path / 'clone'
  (clone / '.git').mkdir(parents=True)
  (clone / '.gitattributes').write_text('*.safetensors filter=lfs\n')
  with pytest.raises(OutputError, match=r'already holds \.git, \.gitattributes; pass --overwrite'):
    export_run(run, str(clone), mesh=mesh())
  assert sorted(os.listdir(clone)) == ['.git', '.gitattributes']


@pytest.mark.parametrize('where', ['run', 'inside', 'holder'])
def test_out_may_not_be_in_or_hold_the_run(imported, tmp_path, where):
  _, _, run = imported
  trained = trained_run(tmp_path / 'runs' / 'sft', run, 1e-2)
  before = sorted(str(p) for p in (tmp_path / 'runs').rglob('*'))
  out = {'run': trained, 'inside': os.path.join(trained, 'hf'), 'holder': str(tmp_path / 'runs')}[where]
  with pytest.raises(ConfigError, match='inside the run|holds the run'):
    export_run(trained, out, mesh=mesh(), overwrite=True)
  assert sorted(str(p) for p in (tmp_path / 'runs').rglob('*')) == before


def test_interrupted_export_leaves_the_old_folder(imported, tmp_path, monkeypatch):
  _, _, run = imported
  out = tmp_path / 'out'
  export_run(run, str(out), mesh=mesh())
  before = {p.name: p.read_bytes() for p in out.iterdir()}

  def broken(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(hf, 'save_pretrained', broken)
  with pytest.raises(OSError, match='disk full'):
    export_run(run, str(out), mesh=mesh(), overwrite=True)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert sorted(os.listdir(tmp_path)) == ['out']


def test_lora_run_records_absolute_paths_and_exports_from_another_folder(imported, tmp_path, monkeypatch):
  """A LoRA run configured with a relative init_checkpoint records it absolute; exported from another current
  folder, its merged weights are the base's plus the adapters' product."""
  from experiments.configs import sft
  from nlhf_jax.config import from_config_dict
  from nlhf_jax.models import lora
  from nlhf_jax.training.guards import config_to_json
  root, _, run = imported
  monkeypatch.chdir(root)
  c = sft.get_config('hf')
  c.init_checkpoint = os.path.relpath(run, root)
  c.model.lora.rank = 2
  c.data.update(seq_len=64, name='demos')
  c.mesh.update(data=1, fsdp=1, tensor=1)
  cfg = from_config_dict(c)
  assert cfg.init_checkpoint == run and cfg.data.tokenizer == os.path.join(run, 'tokenizer')
  model = lora.apply_lora(Transformer(cfg.model, nnx.Rngs(0)), cfg.model.lora, nnx.Rngs(1))
  adapters, _ = lora.split_adapters(nnx.to_pure_dict(nnx.state(model)))
  adapters = jax.tree.map(lambda x: np.full(x.shape, 0.1, x.dtype), adapters)
  lora_run = _save_run(str(tmp_path / 'lora'), config_to_json(cfg), adapters)
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  export_run(lora_run, 'exported', mesh=mesh(), dtype='float32')
  reader = SafetensorsReader(str(elsewhere / 'exported'))
  base = SafetensorsReader(str(root / 'hf'))
  name = 'model.layers.0.mlp.up_proj.weight'
  assert not np.array_equal(np.asarray(reader.array(name)), np.asarray(base.array(name)))
  name = 'model.embed_tokens.weight'
  np.testing.assert_array_equal(np.asarray(reader.array(name)), np.asarray(base.array(name)))


def test_bad_inputs_are_refused_before_anything_is_read(imported, tmp_path):
  from nlhf_jax.cli.common import user_errors
  root, src, run = imported
  (tmp_path / 'file').write_text('x')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'pipeline' / 'sft' / 'checkpoints').mkdir(parents=True)
  cases = [(dict(workdir=str(tmp_path / 'nowhere')), 'does not exist'),
           (dict(workdir=str(tmp_path / 'file')), 'is a file'),
           (dict(workdir=str(tmp_path / 'empty')), 'holds no checkpoints/ folder'),
           (dict(workdir=src), 'is a Hugging Face model folder, not a run'),
           (dict(workdir=str(tmp_path / 'pipeline')), 'it holds the runs sft: give one of them'),
           (dict(workdir=str(tmp_path / 'pipeline' / 'sft')), 'no checkpoint in .*the run saved none yet'),
           (dict(step=7), 'no checkpoint of that step; it has 0'),
           (dict(dtype='float8'), '--dtype=float8: give one of float32, bfloat16, float16'),
           (dict(max_shard_bytes=0), '--max_shard_gb must be positive'),
           (dict(out=str(tmp_path / 'file')), 'is a file, not a folder')]
  for change, message in cases:
    args = dict(dict(workdir=run, out=str(tmp_path / 'out')), **change)
    with pytest.raises(user_errors(), match=message):
      exporter.plan(**args)
  assert sorted(os.listdir(tmp_path)) == ['empty', 'file', 'pipeline']


@pytest.mark.parametrize('case', ['no_run', 'lossy'])
def test_the_command_says_one_error_line(imported, tmp_path, case):
  _, _, run = imported
  workdir = str(tmp_path / 'nowhere') if case == 'no_run' else trained_run(tmp_path / 'small', run, 1e-5)
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.export', f'--workdir={workdir}',
                        f'--out={tmp_path / "out"}', '--dtype=bfloat16'], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=subprocess_env(1))
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith('error: '), out.stderr[-3000:]
  assert {'no_run': 'does not exist', 'lossy': 'most of the training is lost'}[case] in lines[0]
  assert not (tmp_path / 'out').exists()


def test_configs_record_absolute_run_and_tokenizer_paths(tmp_path, monkeypatch):
  from nlhf_jax.config import runs as config_runs
  monkeypatch.chdir(tmp_path)
  values = {'init_checkpoint': 'runs/sft', 'online': {'reference_checkpoint': '~/runs/ref', 'judge_checkpoint': ''},
            'offline': {'reference_checkpoint': 'gs://bucket/run'}, 'data': {'tokenizer': 'tok.model'}}
  out = config_runs.absolute_paths(values)
  assert out['init_checkpoint'] == str(tmp_path / 'runs' / 'sft')
  assert out['online'] == {'reference_checkpoint': os.path.expanduser('~/runs/ref'), 'judge_checkpoint': ''}
  assert out['offline']['reference_checkpoint'] == 'gs://bucket/run'
  assert out['data']['tokenizer'] == str(tmp_path / 'tok.model')
  assert config_runs.absolute_paths({'data': {'tokenizer': 'bytes'}})['data']['tokenizer'] == 'bytes'
  assert values['init_checkpoint'] == 'runs/sft'  # the input is not changed
