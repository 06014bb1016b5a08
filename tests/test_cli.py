"""`nlhf-train` end to end: metrics, checkpoints, keep-last-K, and resuming when started again."""
import json
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env

REPO = pathlib.Path(__file__).parents[1]
ENV = subprocess_env(8)


def _train(workdir, *flags):
  # The console script that `pip install` puts next to the interpreter (`python -m nlhf_jax.cli.train` is the same).
  script = pathlib.Path(sys.executable).parent / 'nlhf-train'
  cmd = [str(script), '--config=experiments/configs/sft.py:tiny',
         f'--workdir={workdir}', '--config.train.log_every=2', '--config.train.checkpoint_every=2',
         '--config.train.keep_checkpoints=2', '--config.mesh.data=2', '--config.mesh.tensor=4', *flags]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


@pytest.mark.slow
def test_second_run_on_the_same_workdir_continues(tmp_path):
  log1 = _train(tmp_path, '--config.train.num_steps=4')
  assert 'resumed' not in log1 and 'step 4/4' in log1
  log2 = _train(tmp_path, '--config.train.num_steps=8')
  assert 'resumed from step 4' in log2
  # A longer run than the checkpoint planned: the cosine schedule now spans 8 steps, and the log says so.
  assert 'schedule now decays over 8 steps' in log2 and 'config.optim.decay_steps=4' in log2
  steps = [json.loads(line)['step'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [2, 4, 6, 8]  # the second run logged only steps 5-8: it did not start over
  kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert kept == [6, 8]  # keep_checkpoints=2
  assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['preference_model'])  # reward_model.py is the same pairwise config
def test_judges_train_with_nlhf_train(tmp_path, objective):
  """`nlhf-train --config=experiments/configs/preference_model.py:tiny` trains and logs the pair metrics."""
  script = pathlib.Path(sys.executable).parent / 'nlhf-train'
  cmd = [str(script), f'--config=experiments/configs/{objective}.py:tiny', f'--workdir={tmp_path}',
         '--config.train.num_steps=2', '--config.train.log_every=1', '--config.train.checkpoint_every=2']
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2]
  assert all(k in rows[-1] for k in ('loss', 'accuracy', 'log_loss', 'calibration_error'))
  assert (tmp_path / 'checkpoints' / '2').is_dir()


def test_every_module_imports_in_one_process():
  """Commands define their flags when they run, not on import: every module of the package imports beside every
  other (a test or a notebook that imports two commands' functions must not meet a DuplicateFlagError)."""
  code = ('import importlib, pkgutil, nlhf_jax\n'
          'for m in pkgutil.walk_packages(nlhf_jax.__path__, "nlhf_jax."):\n'
          '  importlib.import_module(m.name)\n'
          'from absl import flags\n'
          'print(sorted(n for n, f in flags.FLAGS._flags().items() if f.name == n and '
          'flags.FLAGS.find_module_defining_flag(n).startswith("nlhf_jax")))\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=subprocess_env(None))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == '[]', out.stdout  # and none of them defined a flag on import
