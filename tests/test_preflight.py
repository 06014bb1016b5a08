"""The run's inputs on disk are checked before any data is read or anything is compiled (trainer/preflight.py)."""
import dataclasses

import orbax.checkpoint as ocp
import pytest

from experiments.configs import nash_md, rlhf
from helpers import tiny_config
from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.trainer import loop, preflight
from nlhf_jax.training.guards import config_to_json


def fake_run(path, objective, **model):
  """A run directory whose only checkpoint item is the saved config (all that the checks read)."""
  cfg = tiny_config()
  saved = config_to_json(cfg)
  saved['train']['objective'] = objective
  saved['model'].update(model)
  manager = ocp.CheckpointManager(str(path / 'checkpoints'))
  manager.save(3, args=ocp.args.Composite(meta=ocp.args.JsonSave({'config': saved})))
  manager.wait_until_finished()
  manager.close()
  return str(path)


def online_cfg(module=nash_md, **online):
  c = module.get_config('tiny')
  c.online.update(**online)
  return from_config_dict(c)


@pytest.fixture(autouse=True)
def nothing_expensive(monkeypatch):
  """Any call past the checks (building the mesh) fails the test: the checks must come first."""
  def fail(*args, **kwargs):
    raise AssertionError('the run went past its input checks')
  monkeypatch.setattr(loop, 'make_mesh', fail)


def test_a_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'run').write_text('')
  with pytest.raises(ConfigError, match=r'--workdir=.*run is a file, not a directory'):
    loop.train(tiny_config(), str(tmp_path / 'run'))


def test_a_missing_reference_run_names_the_key(tmp_path):
  cfg = online_cfg(reference_checkpoint=str(tmp_path / 'no_sft'))
  with pytest.raises(FileNotFoundError, match=r'config.online.reference_checkpoint=.*no_sft: checkpoint path'):
    loop.train(cfg, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # nothing was written


def test_a_reference_of_another_size_names_the_fields(tmp_path):
  sft_run = fake_run(tmp_path / 'sft', 'sft', d_model=128, head_dim=32)
  cfg = online_cfg(reference_checkpoint=sft_run)
  with pytest.raises(ConfigError, match=r'reference_checkpoint=.*another model \(model.d_model: checkpoint 128, '
                     r'config 64, model.head_dim: checkpoint 32, config 16\); set config.model'):
    loop.train(cfg, str(tmp_path / 'run'))


def test_a_reference_that_is_not_a_language_model(tmp_path):
  cfg = online_cfg(reference_checkpoint=fake_run(tmp_path / 'pm', 'preference_model'))
  with pytest.raises(ConfigError, match=r"is a 'preference_model' run, but an sft \(or online\) run is needed"):
    loop.train(cfg, str(tmp_path / 'run'))


def test_a_judge_run_of_the_wrong_kind(tmp_path):
  cfg = online_cfg(rlhf, judge_checkpoint=fake_run(tmp_path / 'sft', 'sft'))
  with pytest.raises(ConfigError, match=r"judge_checkpoint=.*is a 'sft' run, but a reward_model run is needed"):
    loop.train(cfg, str(tmp_path / 'run'))


def test_a_judge_with_another_vocabulary(tmp_path):
  cfg = online_cfg(rlhf, judge_checkpoint=fake_run(tmp_path / 'rm', 'reward_model', vocab_size=512))
  with pytest.raises(ConfigError, match=r'model.vocab_size: checkpoint 512, config 256.*same tokenizer'):
    loop.train(cfg, str(tmp_path / 'run'))


def test_fitting_runs_pass(tmp_path):
  """A judge may have another size than the policy, as long as it reads the same tokens."""
  cfg = online_cfg(rlhf, reference_checkpoint=fake_run(tmp_path / 'sft', 'nash_md'),
                   judge_checkpoint=fake_run(tmp_path / 'rm', 'reward_model', d_model=128, num_layers=4))
  preflight.check_inputs(cfg, str(tmp_path / 'run'))
  warm = dataclasses.replace(tiny_config(), init_checkpoint=fake_run(tmp_path / 'sft2', 'sft'))
  preflight.check_inputs(warm, str(tmp_path / 'run'))


def test_an_init_checkpoint_of_another_model_kind(tmp_path):
  warm = dataclasses.replace(tiny_config(), init_checkpoint=fake_run(tmp_path / 'rm', 'reward_model'))
  with pytest.raises(ConfigError, match=r"config.init_checkpoint=.*is a 'reward_model' run"):
    loop.train(warm, str(tmp_path / 'run'))
