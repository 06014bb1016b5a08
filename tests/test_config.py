"""Config validation: every invalid value fails before any compilation, naming the key."""
import pathlib
import re
import subprocess
import sys

import pytest

from experiments.configs import sft
from helpers import subprocess_env
from nlhf_jax.config import ConfigError, from_config_dict


def _cfg(**overrides):
  c = sft.get_config('tiny')
  for key, value in overrides.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  return c


@pytest.mark.parametrize('overrides,devices,message', [
    ({'optim.learning_rate': 0.0}, 8, 'config.optim.learning_rate=0.0'),
    ({'optim.learning_rate': -1e-3}, 8, 'config.optim.learning_rate'),
    ({'mesh.data': 3}, 8, 'config.mesh'),
    ({'mesh.data': 2, 'mesh.tensor': 2}, 8, 'needs 4 devices but 8 are available'),
    ({'mesh.data': -1, 'mesh.tensor': 3}, 8, 'config.mesh.data=-1 cannot be filled'),
    ({'mesh.data': -1, 'mesh.fsdp': -1}, 8, 'at most one of'),
    ({'train.batch_size': 12}, 8, 'config.train.batch_size=12'),
    ({'train.batch_size': 16, 'train.grad_accum_steps': 4}, 8, 'micro-batch 4'),
    ({'train.num_steps': 0}, 8, 'config.train.num_steps=0'),
    ({'train.objective': 'nope'}, None, None),
    ({'model.num_heads': 6, 'mesh.data': 2, 'mesh.tensor': 4}, 8, 'config.model.num_heads=6'),
    ({'data.seq_len': 1000}, 8, 'config.data.seq_len=1000 exceeds config.model.max_len'),
    ({'model.compute_dtype': 'float16'}, 8, 'config.model.compute_dtype'),
    ({'optim.name': 'sgd'}, 8, "config.optim.name='sgd'"),
    ({'optim.b2': 1.5}, 8, 'config.optim.b2=1.5: must be in'),
    ({'optim.b1': -0.1}, 8, 'config.optim.b1=-0.1'),
    ({'optim.eps': 0.0}, 8, 'config.optim.eps=0.0: must be a positive number'),
])
def test_invalid_values_name_the_key(overrides, devices, message):
  if message is None:  # unknown objective: reported by the task registry, also before compilation
    from nlhf_jax.trainer.tasks import get_task
    with pytest.raises(ConfigError, match='config.train.objective'):
      get_task(from_config_dict(_cfg(**overrides), num_devices=8).train.objective)
    return
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace('.', r'\.')):
    from_config_dict(_cfg(**overrides), num_devices=devices)


def test_unknown_key_is_named_with_the_known_ones():
  c = sft.get_config('tiny')
  c.train.unlock()
  c.train.num_stepz = 3
  with pytest.raises(ConfigError, match=r'config\.train\.num_stepz.*num_steps'):
    from_config_dict(c)


def test_wrong_type_is_named():
  c = sft.get_config('tiny').to_dict()
  c['train']['num_steps'] = 'ten'
  with pytest.raises(ConfigError, match=r"config\.train\.num_steps='ten': expected an integer"):
    from_config_dict(c)


def test_layer_types_validate():
  """A model with per-layer attention kinds (Gemma 2/3) validates; a wrong entry is named."""
  ok = {'model.layer_types': ('local', 'global'), 'model.sliding_window': 8}
  cfg = from_config_dict(_cfg(**ok), num_devices=8)
  assert cfg.model.layer_types == ('local', 'global') and cfg.model.is_local(0) and not cfg.model.is_local(1)
  with pytest.raises(ConfigError, match=r"config\.model\.layer_types: 'sliding' is not a layer type"):
    from_config_dict(_cfg(**dict(ok, **{'model.layer_types': ('sliding', 'global')})))
  with pytest.raises(ConfigError, match='names local layers but config.model.sliding_window=0'):
    from_config_dict(_cfg(**dict(ok, **{'model.sliding_window': 0})))


def test_mesh_fill_axis():
  from nlhf_jax.config import MeshConfig, resolve_mesh_shape
  assert resolve_mesh_shape(MeshConfig(data=-1, fsdp=1, tensor=4), 8) == {'data': 2, 'fsdp': 1, 'tensor': 4}


@pytest.mark.slow
@pytest.mark.parametrize('args, status, message', [
    (['--config.mesh.data=3'], 1, 'error: config.mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 8'),
    (['--config.train.num_step=5'], 2, "config.train has no field 'num_step'; did you mean 'num_steps'?"),
    (['--config=experiments/configs/nosuch.py:tiny'], 2, 'config file experiments/configs/nosuch.py does not exist'),
    (['--config=experiments/configs/sft.py:nope'], 1, "unknown variant 'nope' of sft.py; use one of: tiny"),
    (['--config.model.lora.rank=4', '--config.model.lora.targets=embed', '--config.init_checkpoint=runs/base'], 1,
     "error: config.model.lora.targets='embed' selects no projection"),
])
def test_cli_rejects_bad_config_before_compiling(tmp_path, args, status, message):
  """Through `nlhf-train`: the error is one clear message (no traceback) and no workdir contents are written."""
  out = subprocess.run(
      [sys.executable, '-m', 'nlhf_jax.cli.train', '--config=experiments/configs/sft.py:tiny',
       f'--workdir={tmp_path / "run"}', *args],
      capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parents[1],
      env=subprocess_env())
  assert out.returncode == status, out.stderr[-2000:]
  assert message in out.stderr and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


TRAINING_CONFIGS = ['sft', 'preference_model', 'reward_model', 'nash_md', 'nash_ema', 'rlhf', 'online_ipo']
VARIANTS = {
    'sft': ['tiny', 'demo', '125m', '1b'],
    'preference_model': ['tiny', '125m'],
    'reward_model': ['tiny', '125m'],
    'nash_md': [f'{s}{f}' for s in ('tiny', 'small', '125m') for f in ('', ',sp', ',br')],
    'nash_ema': ['tiny', 'small', '125m'],
    'rlhf': ['tiny', 'small', '125m'],
    'online_ipo': ['tiny', 'tiny,md', 'small', '125m', '125m,md'],
}


def _load(name: str):
  import importlib.util
  path = pathlib.Path(__file__).resolve().parents[1] / 'experiments/configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'{name}_by_path', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flat_keys(tree, prefix=''):
  out = set()
  for k, v in tree.items():
    out |= _flat_keys(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}'}
  return out


@pytest.mark.parametrize('name,variant', [(n, v) for n in TRAINING_CONFIGS for v in VARIANTS[n]])
def test_every_variant_validates_and_has_every_key(name, variant):
  """Every schema key exists in every variant, so each can be overridden on the (locked) command line."""
  import dataclasses

  from nlhf_jax.config import ExperimentConfig
  c = _load(name).get_config(variant)
  if c.online.judge in ('reward_model', 'preference_model') and c.train.objective not in (
      'sft', 'preference_model', 'reward_model'):
    c.online.judge_checkpoint = '/runs/judge'  # named on the command line
  assert _flat_keys(c.to_dict()) == _flat_keys(dataclasses.asdict(ExperimentConfig()))
  exp = from_config_dict(c, num_devices=8)
  assert exp.train.objective == {'online_ipo': 'ipo_md' if variant.endswith(',md') else 'online_ipo'}.get(
      name, name)
  if name == 'nash_md' and variant.endswith((',sp', ',br')):
    assert exp.online.beta == (0.0 if variant.endswith(',sp') else 1.0)


@pytest.mark.parametrize('name,variant', [('rlhf', 'tiny,br'), ('nash_ema', 'tiny,sp'), ('online_ipo', 'tiny,br'),
                                          ('nash_md', 'huge'), ('sft', 'small')])
def test_unknown_variants_are_refused(name, variant):
  with pytest.raises(ValueError, match=f'unknown variant {variant!r}'):
    _load(name).get_config(variant)


@pytest.mark.slow
def test_locked_command_line_overrides_reach_every_section(tmp_path):
  """Through `nlhf-train` (lock_config=True): overrides of keys in every section of sft.py are accepted; the
  run then stops at validation on the one bad value given last, before any JAX work."""
  out = subprocess.run(
      [sys.executable, '-m', 'nlhf_jax.cli.train', '--config=experiments/configs/sft.py:tiny',
       f'--workdir={tmp_path / "run"}', '--config.train.on_nonfinite=skip', '--config.data.overflow=error',
       '--config.online.beta=0.5', '--config.optim.decay_steps=40', '--config.model.rope_theta=500.0',
       '--config.distributed.process_id=-1', '--config.train.num_steps=0'],
      capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parents[1],
      env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  assert out.returncode != 0
  assert 'Unknown command line flag' not in out.stderr, out.stderr[-2000:]
  assert 'config.train.num_steps=0' in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize('name', TRAINING_CONFIGS)
def test_every_training_config_loads_by_path_and_validates(name):
  # `--config=experiments/configs/NAME.py:tiny` loads the file by path; sibling configs load without sys.path.
  path_before = list(sys.path)
  c = _load(name).get_config('tiny')
  if name == 'rlhf':  # its judge is a trained reward model, named on the command line
    c.online.judge_checkpoint = '/runs/reward_model'
  exp = from_config_dict(c, num_devices=8)
  assert exp.train.objective == name
  assert sys.path == path_before


def _imported_run(tmp_path):
  """A run directory as nlhf-import leaves it (only its config.json matters to config building)."""
  import dataclasses
  import json

  from nlhf_jax.config import ExperimentConfig, ModelConfig
  from nlhf_jax.training.guards import config_to_json
  model = ModelConfig(preset='hf:qwen2', family='qwen2', vocab_size=512, d_model=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, mlp_dim=128, max_len=32768, qkv_bias=True, rope_theta=1e6)
  cfg = ExperimentConfig(model=model)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer='/runs/qwen/tokenizer'),
                            train=dataclasses.replace(cfg.train, objective='import'))
  (tmp_path / 'config.json').write_text(json.dumps(config_to_json(cfg)))
  return str(tmp_path), model


@pytest.mark.parametrize('name', TRAINING_CONFIGS)
def test_hf_variants_read_the_model_and_tokenizer_from_the_run(name, tmp_path):
  run, model = _imported_run(tmp_path)
  c = _load(name).get_config('hf')
  c.data.name = 'my_data'
  if c.train.objective in ('sft', 'preference_model', 'reward_model'):
    c.init_checkpoint = run
  else:
    c.online.reference_checkpoint = run
    c.online.judge_checkpoint = '/runs/judge'
  assert _flat_keys(c.to_dict()) == _flat_keys(dataclasses_asdict_of_defaults())
  exp = from_config_dict(c, num_devices=8)
  assert exp.model.family == 'qwen2' and exp.model.num_kv_heads == 2 and exp.model.max_len == 32768
  assert exp.model.compute_dtype == 'float32' and exp.data.tokenizer == '/runs/qwen/tokenizer'


def dataclasses_asdict_of_defaults():
  import dataclasses

  from nlhf_jax.config import ExperimentConfig
  return dataclasses.asdict(ExperimentConfig())


def test_from_run_needs_a_run_with_a_config(tmp_path):
  from nlhf_jax.config import ConfigError
  c = _load('sft').get_config('hf')
  with pytest.raises(ConfigError, match='needs a run to read them from: set config.init_checkpoint'):
    from_config_dict(c)
  c.init_checkpoint = str(tmp_path)
  with pytest.raises(ConfigError, match='no config.json there'):
    from_config_dict(c)


@pytest.mark.parametrize('config,overrides,message', [
    ('online_ipo:tiny', {'online.tau': 0.0}, "config.online.tau=0.0: config.train.objective='online_ipo' needs tau"),
    ('online_ipo:tiny,md', {'online.tau': 0.0}, "config.online.tau=0.0: config.train.objective='ipo_md' needs tau"),
    ('nash_ema:tiny', {'online.beta': 0.5}, "config.online.beta=0.5: config.train.objective='nash_ema' does not"),
])
def test_online_values_that_an_objective_cannot_use_are_refused(config, overrides, message):
  """IPO's target 1 / (2 tau) needs tau > 0; Nash-EMA's opponent is the EMA policy alone (no beta mixing)."""
  import importlib
  name, variant = config.split(':')
  c = importlib.import_module(f'experiments.configs.{name}').get_config(variant)
  for key, value in overrides.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    from_config_dict(c)
  for key in overrides:  # the shipped values pass
    section, leaf = key.split('.')
    c[section][leaf] = importlib.import_module(f'experiments.configs.{name}').get_config(variant)[section][leaf]
  from_config_dict(c)


def test_one_table_of_objectives_describes_every_task():
  """config/objectives.py is the one home of "objective": each row has its task (model class, data, loss),
  online rows a loss the online step knows and judges validation accepts, offline rows an offline loss."""
  from nlhf_jax.config import objectives
  from nlhf_jax.objectives import offline
  from nlhf_jax.trainer import tasks
  assert objectives.names('online') == ('nash_md', 'nash_ema', 'rlhf', 'online_ipo', 'ipo_md', 'inpo', 'comal', 'mpo',
                                        'sppo', 'extragradient')
  assert objectives.names('offline') == ('dpo', 'ipo') and objectives.names('supervised') == (
      'sft', 'preference_model', 'reward_model')
  for name, spec in objectives.OBJECTIVES.items():
    task = tasks.get_task(name)
    assert task.objective is spec and (task.loss_fn is not None) == (spec.kind == 'supervised'), name
    assert tasks.MODELS[spec.model] is not None and spec.data in ('demonstrations', 'pairs', 'prompts')
    if spec.online:
      assert spec.loss in ('nash_md_pg', 'rlhf_pg', 'ipo_pg', 'mirror_pairs', 'magnetic_pairs', 'sppo')
      assert spec.opponent in ('mixture', 'ema', 'policy', 'iterate') and (spec.opponent == 'iterate') == spec.iterate
      assert spec.judges and set(spec.judges) <= {'preference_model', 'reward_model', 'oracle', 'prompted'}
    if spec.offline:
      assert spec.loss in offline.LOSSES
  assert objectives.model_family('import') == 'language_model' == objectives.model_family('dpo')
  with pytest.raises(ConfigError, match=r"config.train.objective='nash' is unknown; choose one of .*nash_md"):
    objectives.get('nash')
