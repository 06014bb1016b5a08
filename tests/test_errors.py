"""The wording of the errors that input mistakes end in (nlhf_jax/cli/common.py): one `error:` line naming what was
given, what is wrong and the fix, and no traceback, for every command."""
import configparser
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from nlhf_jax.cli import common
from tests.helpers import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config():
  return ml_collections.ConfigDict({'online': {'beta': 0.125, 'tau': 0.1}, 'optim': {'warmup_steps': 10}})


def test_misspelled_override_names_the_key_and_the_suggestion():
  assert (common.unknown_key_message(_config(), '--config.online.bta=0.1', ['online', 'bta'])
          == "--config.online.bta=0.1: config.online has no field 'bta'; did you mean 'beta'?")
  assert (common.unknown_key_message(_config(), '--config.onlin.beta=0.1', ['onlin', 'beta'])
          == "--config.onlin.beta=0.1: config has no field 'onlin'; did you mean 'online'?")


def test_override_without_a_close_key_lists_the_keys():
  assert (common.unknown_key_message(_config(), '--config.online.zzzz=1', ['online', 'zzzz'])
          == "--config.online.zzzz=1: config.online has no field 'zzzz'; its fields are: beta, tau")
  assert (common.unknown_key_message(_config(), '--config.online.beta.x=1', ['online', 'beta', 'x'])
          == '--config.online.beta.x=1: config.online.beta is a float (0.125), not a group of fields')
  assert common.unknown_key_message(_config(), '--config.online.beta=1', ['online', 'beta']) is None


def test_a_sampling_option_at_its_former_place_names_its_section():
  c = ml_collections.ConfigDict({'online': {'beta': 0.1, 'sampling': {'temperature': 1.0}},
                                 'sampling': {'max_new_tokens': 8}})
  assert (common.unknown_key_message(c, '--config.online.temperature=0.7', ['online', 'temperature'])
          == '--config.online.temperature=0.7: config.online.temperature is now config.online.sampling.temperature: '
             'set config.online.sampling.temperature instead (--config.online.sampling.temperature=... on the command '
             'line)')
  assert common.unknown_key_message(c, '--config.top_k=5', ['top_k']).startswith(
      '--config.top_k=5: config.top_k is now config.sampling.top_k: ')
  assert (common.unknown_key_message(c, '--config.online.temprature=1', ['online', 'temprature'])
          == "--config.online.temprature=1: config.online has no field 'temprature'; its fields are: beta, sampling")


def test_parse_error_without_a_known_override_is_one_line():
  e = AttributeError(KeyError('\'bta\'\nDid you mean "beta" instead of "bta"?'))
  message = common.override_error(['prog'], e)
  assert message == 'cannot build the config from the command line: \'bta\' Did you mean "beta" instead of "bta"?'


def test_missing_config_file_says_what_was_tried_and_where_the_configs_are(tmp_path):
  message = common.missing_config_message('experiments/configs/sft.py:tiny', cwd=str(tmp_path))
  configs = REPO / 'experiments' / 'configs'
  assert message == (f'config file experiments/configs/sft.py does not exist (looked for '
                     f'{tmp_path}/experiments/configs/sft.py, relative to the current folder); the project\'s configs '
                     f'are in {configs}/, e.g. --config={configs}/sft.py:tiny')
  other = common.missing_config_message(f'{tmp_path}/mine.py')
  assert other.startswith(f'config file {tmp_path}/mine.py does not exist; the project\'s configs are in {configs}/ (')
  assert 'sft.py' in other and 'config_config' not in other


def test_load_failure_is_one_line():
  text = ('Configuration is not available because of an earlier failure to load: Failed loading config file '
          "config_config\n  Attempted [Relative path]:\n    a/b.py\n      [Errno 13] Permission denied: 'a/b.py'")
  assert common._load_failure(text) == "a/b.py: [Errno 13] Permission denied: 'a/b.py'"


def _command(args, cwd=REPO):
  code = 'import sys; from nlhf_jax.cli.train import run; sys.argv[0] = "nlhf-train"; run()'
  return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                        env=subprocess_env(8))


@pytest.mark.slow
def test_nlhf_train_override_and_config_path_errors(tmp_path):
  """As typed by a user: the misspelled override and a config path relative to another folder."""
  out = _command(['--config=experiments/configs/nash_md.py:tiny', f'--workdir={tmp_path / "x"}',
                  '--config.online.bta=0.1'])
  assert out.returncode == 2
  assert out.stderr.strip() == "error: --config.online.bta=0.1: config.online has no field 'bta'; did you mean 'beta'?"
  out = _command(['--config=experiments/configs/sft.py:tiny', f'--workdir={tmp_path / "x"}'], cwd=tmp_path)
  assert out.returncode == 2
  assert out.stderr.strip() == 'error: ' + common.missing_config_message('experiments/configs/sft.py:tiny',
                                                                           cwd=str(tmp_path))


def _console_scripts() -> dict[str, str]:
  cfg = configparser.ConfigParser()
  cfg.read(REPO / 'setup.cfg')
  lines = [line.split('=') for line in cfg['options.entry_points']['console_scripts'].strip().splitlines()]
  return {name.strip(): target.strip() for name, target in lines}


GUARDED = ('nlhf-train', 'nlhf-pipeline', 'nlhf-eval', 'nlhf-data', 'nlhf-import', 'nlhf-export', 'nlhf-tabular')


def test_every_command_reports_input_mistakes_in_one_line():
  """The commands go through common.run (absl) or common.guard (argparse)."""
  scripts = _console_scripts()
  for name in GUARDED:
    module = scripts[name].split(':')[0]
    source = (REPO / (module.replace('.', '/') + '.py')).read_text()
    assert 'common.run(' in source or 'common.guard(' in source, name


MISTAKES = {
    'nlhf-train': ['--config=experiments/configs/sft.py:tiny', '--workdir={tmp}/w', '--config.optim.warmup_stepz=3'],
    'nlhf-pipeline': ['--config=configs/pipeline.py:demo', '--workdir={tmp}/w'],
    'nlhf-eval': ['--workdir={tmp}/nothing'],
    'nlhf-data': ['build', '--kind=pairs', '--input={tmp}/none.jsonl', '--name=x', '--data_dir={tmp}/d'],
    'nlhf-import': ['--hf_dir={tmp}/none', '--workdir={tmp}/w'],
    'nlhf-export': ['--workdir={tmp}/none', '--out={tmp}/o'],
    'nlhf-tabular': ['--config=experiments/configs/tabular.py:dice', '--workdir={tmp}/w', '--config.betta=1'],
}


@pytest.mark.slow
@pytest.mark.parametrize('name', GUARDED)
def test_command_input_mistake_ends_in_one_error_line(tmp_path, name):
  module, function = _console_scripts()[name].split(':')
  args = [a.format(tmp=tmp_path) for a in MISTAKES[name]]
  code = f'import sys; from {module} import {function}; sys.argv[0] = {name!r}; {function}()'
  out = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=subprocess_env(8))
  assert out.returncode in (1, 2), out.stderr[-2000:]
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, out.stderr[-2000:]
