"""nlhf-pipeline's refusals, made before any stage runs (cheap: no stage is run here), and what it says it
resumes."""
import json
import logging
import pathlib
import subprocess
import sys

import pytest

from experiments.configs import pipeline as pipeline_configs
from nlhf_jax.config import ConfigError
from nlhf_jax.outputs import OutputError
from nlhf_jax.pipeline import runner, stages
from tests.helpers import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(**changes):
  p = pipeline_configs.get_config('tiny')
  p.policies = 'rlhf,sp,dpo'
  for key, value in changes.items():
    section, field = key.split('.')
    p[section][field] = value
  return p


def _done(workdir, *names):
  for name in names:
    (workdir / name).mkdir(parents=True, exist_ok=True)
    (workdir / name / runner.MARKER).write_text('{}')


def test_a_folder_that_is_not_a_pipeline_is_refused_by_the_command(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  cmd = [sys.executable, '-m', 'nlhf_jax.cli.pipeline', '--config=experiments/configs/pipeline.py:tiny',
         f'--workdir={tmp_path}']
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(8), cwd=REPO)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  assert [line for line in out.stderr.splitlines() if line.startswith('error:')] == [
      f'error: --workdir={tmp_path} holds notes.txt, which no pipeline writes (it is not a pipeline folder): give a '
      'new or empty folder']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_the_workdir_is_checked_before_any_stage(tmp_path):
  p = _config()
  runner.check_workdir(p, str(tmp_path / 'new'))
  (tmp_path / 'file').write_text('')
  for below in ('', 'sub'):
    with pytest.raises(OutputError, match=f'{tmp_path / "file"} is a file, not a folder'):
      runner.check_workdir(p, str(tmp_path / 'file' / below))
  workdir = tmp_path / 'w'
  _done(workdir, 'tokenizer', 'data', 'sft', 'md_0.5', 'seed_3/sft')
  runner.check_workdir(p, str(workdir))  # stage folders only (a pipeline without its pipeline.json): fine
  (workdir / runner.PIPELINE_CONFIG).write_text(p.to_json(indent=1, sort_keys=True))
  runner.check_workdir(p, str(workdir))  # the same config: it resumes
  other = _config(**{'sft.num_steps': p.sft.num_steps + 1})
  with pytest.raises(ConfigError, match=rf'another config \(config.sft.num_steps: {p.sft.num_steps} recorded, '
                                        rf'{p.sft.num_steps + 1} now\).*pass --overwrite'):
    runner.check_workdir(other, str(workdir))
  runner.check_workdir(other, str(workdir), overwrite=True)


def test_a_pipeline_folder_may_hold_a_re_evaluation(tmp_path):
  """docs/pipeline.md re-evaluates into DIR/eval2 (nlhf-eval --workdir=DIR --output=DIR/eval2): the pipeline still
  resumes in DIR (no stage touches eval2); without pipeline.json such a folder is not a pipeline's."""
  p = _config()
  _done(tmp_path, 'tokenizer', 'data', 'sft')
  (tmp_path / 'eval2').mkdir()
  (tmp_path / 'eval2' / 'matrix.json').write_text('{}')
  with pytest.raises(OutputError, match='holds eval2, which no pipeline writes'):
    runner.check_workdir(p, str(tmp_path))
  (tmp_path / runner.PIPELINE_CONFIG).write_text(p.to_json(indent=1, sort_keys=True))
  runner.check_workdir(p, str(tmp_path))
  runner.check_workdir(_config(**{'sft.num_steps': p.sft.num_steps + 1}), str(tmp_path), overwrite=True)


def _flat_sampling(values: dict) -> dict:
  """`values` with every `sampling` section's keys moved up into the section that holds it: the layout of the
  configs a pipeline recorded before the sampling sections existed."""
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      value = _flat_sampling(value)
      if key == 'sampling':
        out.update(value)
        continue
    out[key] = value
  return out


def test_a_pipeline_folder_written_before_the_sampling_sections_resumes(tmp_path):
  """pipeline.json and every stage.json as a pipeline recorded them when the sampling options were flat keys
  (pairs.temperature, policy.max_new_tokens; a policy stage's online.temperature, the pairs and eval stages'
  max_new_tokens): the pipeline resumes, skipping every finished stage without an 'another config' warning; a
  changed value is still told apart."""
  p = _config()
  old = _flat_sampling(json.loads(p.to_json()))
  assert old['pairs']['temperature'] == 1.0 and 'sampling' not in old['eval']
  (tmp_path / runner.PIPELINE_CONFIG).write_text(json.dumps(old))
  runner.check_workdir(p, str(tmp_path))
  configs = stages.stage_configs(p, str(tmp_path))
  for name, scfg in configs.items():
    _done(tmp_path, name)
    (tmp_path / name / runner.STAGE_CONFIG).write_text(json.dumps(_flat_sampling(json.loads(scfg.to_json()))))
    assert not runner._finished_config_changed(scfg, str(tmp_path / name)), name
  assert 'temperature' in json.loads((tmp_path / 'rlhf' / runner.STAGE_CONFIG).read_text())['online']
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger('nlhf_jax').addHandler(handler)
  try:
    status = runner.run_pipeline(p, str(tmp_path))
  finally:
    logging.getLogger('nlhf_jax').removeHandler(handler)
  assert set(status.values()) == {'skipped'}
  assert not [r for r in records if 'another config' in r.getMessage()]
  hotter = json.loads(configs['pairs'].to_json())
  hotter['sampling']['temperature'] = 0.5
  (tmp_path / 'pairs' / runner.STAGE_CONFIG).write_text(json.dumps(_flat_sampling(hotter)))
  assert runner._finished_config_changed(configs['pairs'], str(tmp_path / 'pairs'))
  (tmp_path / runner.PIPELINE_CONFIG).write_text(json.dumps(dict(old, pairs=dict(old['pairs'], temperature=0.5))))
  with pytest.raises(ConfigError, match=r'another config \(config.pairs.sampling.temperature: 0.5 recorded, 1.0 now'):
    runner.check_workdir(p, str(tmp_path))


def test_stages_are_checked_by_name_and_inputs(tmp_path):
  p = _config()
  configs = stages.stage_configs(p, str(tmp_path))
  with pytest.raises(ConfigError, match='--stages: sftt is not a stage of this pipeline; its stages are tokenizer, '):
    runner.check_stages(configs, str(tmp_path), ['sftt'])
  with pytest.raises(ConfigError, match=r'stage pairs reads the output of tokenizer, data, sft, which have not '
                                        r'finished .*add them \(--stages=tokenizer,data,sft,pairs\)'):
    runner.check_stages(configs, str(tmp_path), ['pairs'])
  _done(tmp_path, 'tokenizer', 'data')
  with pytest.raises(ConfigError, match=r'stage pairs reads the output of sft, which has not finished .*'
                                        r'add it \(--stages=sft,pairs\)'):
    runner.check_stages(configs, str(tmp_path), ['pairs'])
  runner.check_stages(configs, str(tmp_path), ['sft', 'pairs'])
  _done(tmp_path, 'sft', 'pairs', 'preference_model')
  runner.check_stages(configs, str(tmp_path), ['sp', 'dpo'])
  with pytest.raises(ConfigError, match='stage rlhf reads the output of reward_model, which'):
    runner.check_stages(configs, str(tmp_path), ['rlhf'])
  with pytest.raises(ConfigError, match='stage eval reads the output of rlhf, which'):
    runner.check_stages(configs, str(tmp_path), ['sp', 'dpo', 'eval'])
  runner.check_stages(configs, str(tmp_path), ['reward_model', 'rlhf', 'sp', 'dpo', 'eval'])


def test_the_first_line_says_what_is_resumed(tmp_path):
  configs = stages.stage_configs(_config(), str(tmp_path))
  assert runner.resume_summary(configs, str(tmp_path)).startswith(f'pipeline in {tmp_path}: stages to run: tokenizer')
  _done(tmp_path, 'tokenizer', 'data')
  (tmp_path / 'sft').mkdir()
  (tmp_path / 'sft' / runner.STAGE_CONFIG).write_text('{}')
  assert runner.resume_summary(configs, str(tmp_path)) == (
      f'resuming the pipeline in {tmp_path}: finished (skipped): tokenizer, data; started earlier, resumed (training '
      'from its last checkpoint): sft; to run: pairs, preference_model, reward_model, rlhf, sp, dpo, eval')


def test_an_eval_batch_that_does_not_divide_the_devices_stops_the_pipeline_first(tmp_path):
  configs = stages.stage_configs(_config(**{'eval.batch_size': 12}), str(tmp_path))
  with pytest.raises(ConfigError, match="pipeline stage 'eval': batch size 12 .* use a multiple of 8, e.g. 16"):
    stages.check_training_configs(configs, num_devices=8)
  stages.check_training_configs(configs, num_devices=4)
  assert json.loads(configs['eval'].to_json())['batch_size'] == 12
