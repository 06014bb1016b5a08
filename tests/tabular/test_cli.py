"""`nlhf-tabular` end to end on small configs, and the config variants."""
import json
import os
import subprocess
import sys

import pytest

from experiments.configs import tabular as tabular_config
from nlhf_jax.tabular import experiment


@pytest.mark.parametrize('variant', tabular_config.VARIANTS)
def test_config_variants(variant):
  cfg = tabular_config.get_config(variant)
  assert cfg.game.family == variant and cfg.tau > 0
  with pytest.raises(ValueError):
    tabular_config.get_config('chess')


@pytest.mark.parametrize('key, value, message', [
    ('tau', 0.0, r'config.tau=0.0: must be a positive number'),
    ('algorithms', 'nash_md,nashema', r"config.algorithms='nash_md,nashema': unknown 'nashema'; use a "
     r'comma-separated list of nash_md, omd'),
    ('algorithms', '', r"config.algorithms='': empty"),
    ('mu.probs', '0.7,0.2', r"config.mu.probs='0.7,0.2': mu.kind=given needs 3 positive probabilities"),
    ('mu.probs', '0.7,x,0.1', r'config.mu.probs'),
    ('schedule', 'fast', r"config.schedule='fast': use one of theory"),
    ('game.family', 'chess', r"config.game.family='chess'"),
    ('successor_eta', 0.0, r'config.successor_eta=0.0: must be > 0'),
    ('prox_tau', -1.0, r'config.prox_tau=-1.0: must be > 0'),
    ('prox_steps', 0, r'config.prox_steps=0: must be a positive integer'),
])
def test_bad_values_are_named_before_anything_runs(key, value, message, monkeypatch):
  cfg = tabular_config.get_config('dice')
  node, leaf = (cfg.mu, 'probs') if key == 'mu.probs' else (cfg.game, 'family') if key == 'game.family' else (
      cfg, key)
  node[leaf] = value
  monkeypatch.setattr(experiment, 'make_games', lambda cfg: pytest.fail('the check came too late'))
  with pytest.raises(ValueError, match=message):
    experiment.run_experiment(cfg)


def test_run_experiment_dice_small():
  cfg = tabular_config.get_config('dice')
  cfg.num_steps = 300
  cfg.algorithms = 'nash_md,rlhf'
  res = experiment.run_experiment(cfg)
  assert res['unregularized']['values'][0] == pytest.approx(0.5)
  assert res['final']['rlhf']['exploitability0'] >= 0.05
  assert res['final']['nash_md']['exploitability'] < 1e-3
  assert res['solver']['all_converged']
  assert len(res['t']) == len(res['curves']['nash_md']['kl_mean']) == len(res['bound'])
  assert all(k <= b for k, b in zip(res['curves']['nash_md']['kl_max'], res['bound']))


def test_run_experiment_dice_successors_small():
  """Every algorithm has the last- and average-iterate metrics against both equilibria; COMAL's last iterate beats
  Nash-MD's on the unregularised game, SPPO's average beats its last iterate."""
  cfg = tabular_config.get_config('dice')
  cfg.num_steps = 1500
  cfg.algorithms = 'nash_md,inpo,comal,sppo'
  res = experiment.run_experiment(cfg)
  for name, row in res['final'].items():
    assert set(experiment.METRICS) <= set(row), name
    assert set(f'{k}_mean' for k in experiment.METRICS) <= set(res['curves'][name]), name
  f = res['final']
  assert f['inpo']['schedule'] == 'constant' and f['inpo']['eta'] == cfg.successor_eta
  assert f['sppo']['eta'] == cfg.eta and f['nash_md']['schedule'] == 'theory'
  assert f['comal']['exploitability0'] < 1e-3 < f['nash_md']['exploitability0']
  assert f['inpo']['exploitability'] < 1e-10
  assert f['sppo']['avg_exploitability0'] < 0.5 * f['sppo']['exploitability0']
  assert res['exact']['pi* (linear program)']['exploitability0'] < 1e-9
  table = experiment.markdown(res)
  assert '| comal | constant 1 |' in table and 'e_0(pibar_T)' in table


def test_cli_writes_outputs(tmp_path):
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
  workdir = str(tmp_path / 'run')
  argv = [sys.executable, '-m', 'nlhf_jax.cli.tabular', '--config=experiments/configs/tabular.py:random',
          f'--workdir={workdir}', '--config.num_steps=50', '--config.game.num_games=2',
          '--config.game.num_actions=5', '--config.algorithms=nash_md,omd,self_play,comal']
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ('curves.json', 'results.md', 'kl.png', 'exploitability.png', 'exploitability0.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  res = json.load(open(os.path.join(workdir, 'curves.json')))
  assert res['num_games'] == 2 and res['num_actions'] == 5 and res['num_steps'] == 50
  assert set(res['curves']) == {'nash_md', 'omd', 'self_play', 'comal'}
  assert '| nash_md |' in open(os.path.join(workdir, 'results.md')).read()


def test_an_earlier_runs_files_are_replaced_only_with_overwrite(tmp_path, monkeypatch):
  """nlhf-tabular refuses a --workdir holding its files before anything runs (other files are never touched), and
  writes each file by rename."""
  from nlhf_jax.outputs import OutputError
  cfg = tabular_config.get_config('dice')
  cfg.num_steps, cfg.algorithms = 20, 'nash_md'
  (tmp_path / 'results.md').write_text('an earlier run')
  (tmp_path / 'notes.txt').write_text('mine')
  monkeypatch.setattr(experiment, 'plot', lambda res, workdir: None)  # the plots: test_cli_writes_outputs
  ran, run_experiment = [], experiment.run_experiment
  monkeypatch.setattr(experiment, 'run_experiment', lambda c: ran.append(c) or run_experiment(c))
  with pytest.raises(OutputError, match=r'already holds results.md; pass --overwrite'):
    experiment.run_command(cfg, str(tmp_path))
  assert not ran and (tmp_path / 'results.md').read_text() == 'an earlier run'
  res = experiment.run_command(cfg, str(tmp_path), overwrite=True)
  assert ran and (tmp_path / 'results.md').read_text() == experiment.markdown(res)
  assert sorted(os.listdir(tmp_path)) == ['curves.json', 'notes.txt', 'results.md']
