"""Fault tolerance: non-finite guards, config-mismatch and damaged-checkpoint resumes, SIGTERM and SIGKILL."""
import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import sft
from helpers import mesh, tiny_config
from multihost import launch
from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.training import checkpointing
from nlhf_jax.trainer import loop
from nlhf_jax.training.checkpointing import CheckpointError
from nlhf_jax.trainer.loop import train

CONFIG = 'experiments/configs/sft.py:tiny'
ONE = {'mesh.data': 1, 'mesh.fsdp': 1, 'mesh.tensor': 1}  # in-process runs: one device, quick to compile


def _train(cfg, workdir):
  return train(cfg, str(workdir), mesh=mesh(1, 1, 1))


def _cfg(steps, **kw):
  return tiny_config(**{'train.num_steps': steps, 'train.log_every': 1, 'train.checkpoint_every': 2,
                        'train.async_checkpointing': False, 'train.batch_size': 16, **ONE, **kw})


def _poison_step(monkeypatch, bad_step, where='loss'):
  """Makes update number `bad_step` non-finite: a NaN loss and NaN parameters (where='loss'), or a finite loss
  with a NaN gradient norm and NaN parameters (where='grads')."""
  real = loop.plan_step

  def plan_step(*args, **kwargs):
    plan = real(*args, **kwargs)
    step = plan.step

    def poisoned(state, frozen, batch):
      new, metrics = step(state, frozen, batch)
      nan = jnp.where(state.step + 1 == bad_step, jnp.nan, 0.0)
      key = 'loss' if where == 'loss' else 'grad_norm'
      return new.replace(params=jax.tree.map(lambda p: p + nan, new.params)), dict(metrics, **{key: metrics[key] + nan})
    return dataclasses.replace(plan, step=poisoned)
  monkeypatch.setattr(loop, 'plan_step', plan_step)


def _all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(jax.device_get(tree)))


def _metrics(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def test_nonfinite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  _poison_step(monkeypatch, 3)
  with pytest.raises(FloatingPointError, match='at step 3 '):
    _train(_cfg(6), tmp_path)
  assert launch.checkpoint_steps(tmp_path) == [2]
  params, step = launch.read_params(tmp_path, _cfg(6))
  assert step == 2 and _all_finite(params)


def test_nonfinite_gradient_with_a_finite_loss_also_stops(tmp_path, monkeypatch):
  _poison_step(monkeypatch, 3, where='grads')
  with pytest.raises(FloatingPointError, match=r'non-finite loss or gradient at step 3 \(loss [0-9.]+\)'):
    _train(_cfg(6), tmp_path)
  assert launch.checkpoint_steps(tmp_path) == [2]


@pytest.mark.parametrize('where', ['loss', 'grads'])
def test_nonfinite_skip_counts_and_keeps_the_previous_update(tmp_path, monkeypatch, where):
  _poison_step(monkeypatch, 3, where)
  state = _train(_cfg(4, **{'train.on_nonfinite': 'skip', 'train.checkpoint_every': 1}), tmp_path)
  assert int(state.step) == 4 and _all_finite((state.params, state.opt_state))
  rows = _metrics(tmp_path)
  assert [r['skipped_updates'] for r in rows] == [0, 0, 1, 1] and [r['nonfinite'] for r in rows] == [0, 0, 1, 0]
  meta = checkpointing.Checkpointer(str(tmp_path / 'checkpoints')).read_meta(4)
  assert meta['skipped_updates'] == 1
  # The skipped update left the parameters of step 2 exactly as they were (step 4 then moved on).
  (p2, _), (p3, _), (p4, _) = (launch.read_params(tmp_path, _cfg(4), s) for s in (2, 3, 4))
  jax.tree.map(np.testing.assert_array_equal, p3, p2)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p3)))


def _snapshot(directory):
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in pathlib.Path(directory).rglob('*')}


def test_resume_with_another_model_fails_and_overwrites_nothing(tmp_path, monkeypatch):
  _train(_cfg(2), tmp_path)
  before = _snapshot(tmp_path)
  monkeypatch.setattr(loop, 'jit_step', lambda *args: pytest.fail('the step was compiled before the resume check'))
  old = _cfg(2).model
  with pytest.raises(ConfigError, match=rf'model.mlp_dim: checkpoint {old.mlp_dim}, config 64; '
                                        rf'model.vocab_size: checkpoint {old.vocab_size}, config 512'):
    _train(_cfg(4, **{'model.mlp_dim': 64, 'model.vocab_size': 512}), tmp_path)
  assert _snapshot(tmp_path) == before


@pytest.fixture(scope='module')
def six_steps(tmp_path_factory):
  return jax.device_get(_train(_cfg(6), tmp_path_factory.mktemp('six')).params)


def test_unreadable_checkpoint_falls_back_to_the_previous_step(tmp_path, six_steps, caplog):
  _train(_cfg(4), tmp_path)
  ckpts = tmp_path / 'checkpoints'
  assert launch.checkpoint_steps(tmp_path) == [2, 4]
  for f in (ckpts / '4' / 'params').rglob('*'):
    if f.is_file():
      f.write_bytes(b'\0garbage')
  (ckpts / '6.orbax-checkpoint-tmp-1').mkdir()  # an interrupted save
  state = _train(_cfg(6), tmp_path)
  assert 'checkpoint step 4' in caplog.text and 'cannot be read' in caplog.text
  assert 'resumed from step 2' in caplog.text and 'incomplete checkpoint' in caplog.text
  assert (ckpts / '4.unreadable').is_dir()  # kept for inspection
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), six_steps)


def test_all_checkpoints_unreadable_stops_instead_of_starting_over(tmp_path):
  _train(_cfg(4), tmp_path)
  ckpts = tmp_path / 'checkpoints'
  for f in ckpts.rglob('*'):
    if f.is_file() and f.parent.name == 'meta':
      f.write_bytes(b'\0garbage')
  with pytest.raises(CheckpointError, match=r'no checkpoint in .* can be read; the run stops instead of starting '
                     r'again from step 0\. The steps were moved to 4\.unreadable, 2\.unreadable'):
    _train(_cfg(6), tmp_path)
  assert sorted(p.name for p in ckpts.iterdir()) == ['2.unreadable', '4.unreadable']


def test_on_nonfinite_is_validated():
  c = sft.get_config('tiny')
  c.train.on_nonfinite = 'ignore'
  with pytest.raises(ConfigError, match='on_nonfinite'):
    from_config_dict(c)


def _start(workdir, log, *flags):
  cmd = launch.train_cmd(CONFIG, workdir, '--config.train.log_every=1', *flags)
  return subprocess.Popen(cmd, cwd=launch.REPO, env=launch.env(8), stdout=open(log, 'w'),
                          stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, proc, log, timeout=240):
  t0 = time.time()
  while not predicate():
    assert proc.poll() is None, f'exited early ({proc.returncode}):\n{pathlib.Path(log).read_text()[-3000:]}'
    assert time.time() - t0 < timeout, f'no progress:\n{pathlib.Path(log).read_text()[-3000:]}'
    time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_reached_and_the_restart_continues(tmp_path):
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  flags = ('--config.train.num_steps=500', '--config.train.checkpoint_every=1000')
  proc = _start(workdir, log, *flags)
  _wait_for(lambda: 'step 3/500' in log.read_text(), proc, log)
  os.killpg(proc.pid, signal.SIGTERM)
  proc.wait(timeout=120)
  text = log.read_text()
  assert proc.returncode == 0, text[-3000:]
  reached = max(int(line.split('step ')[1].split('/')[0]) for line in text.splitlines() if '/500 (' in line)
  assert launch.checkpoint_steps(workdir) == [reached] and 'preempted' in text
  proc = _start(workdir, log, f'--config.train.num_steps={reached + 2}', '--config.train.checkpoint_every=1000')
  proc.wait(timeout=launch.KILL_AFTER_S + 10)
  text = log.read_text()
  assert proc.returncode == 0 and f'resumed from step {reached} ' in text, text[-3000:]
  assert launch.checkpoint_steps(workdir) == [reached, reached + 2]


@pytest.mark.slow
def test_sigkill_at_three_random_steps_then_resume_is_bitwise(tmp_path):
  steps = 12
  flags = (f'--config.train.num_steps={steps}', '--config.train.checkpoint_every=1',
           '--config.train.keep_checkpoints=2', '--config.train.async_checkpointing=true')
  full = _start(tmp_path / 'full', tmp_path / 'full.log', *flags)
  launch.finish(full, tmp_path / 'full.log')
  workdir = tmp_path / 'killed'
  # One random step in each third of the run, so that a kill that lands late cannot pass the next point.
  choose = random.SystemRandom().choice
  kill_points = [choose((2, 3)), choose((5, 6)), choose((8, 9))]
  print('SIGKILL after the checkpoints of steps', kill_points)
  for i, kill_at in enumerate(kill_points):
    log = tmp_path / f'killed.{i}.log'
    kill_at = min(max(kill_at, max(launch.checkpoint_steps(workdir), default=0) + 1), steps - 1)
    proc = _start(workdir, log, *flags)
    _wait_for(lambda: max(launch.checkpoint_steps(workdir), default=0) >= kill_at, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  proc = _start(workdir, tmp_path / 'final.log', *flags)
  text = launch.finish(proc, tmp_path / 'final.log')
  assert 'resumed from step' in text
  cfg = _cfg(steps)
  a, step_a = launch.read_params(tmp_path / 'full', cfg)
  b, step_b = launch.read_params(workdir, cfg)
  assert step_a == step_b == steps
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=f'killed at {kill_points}'), a, b)


def test_a_resume_compares_run_paths_made_absolute(tmp_path, monkeypatch):
  """Configs written before paths were recorded absolute hold them relative to the run's folder of origin."""
  from nlhf_jax.config import ExperimentConfig
  from nlhf_jax.training import guards
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'tok').mkdir()
  cfg = ExperimentConfig()
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(tmp_path / 'tok' / 'a.model')),
                            init_checkpoint=str(tmp_path / 'runs' / 'sft'))
  saved = guards.config_to_json(cfg)
  saved['data']['tokenizer'] = os.path.join('tok', 'a.model')
  saved['init_checkpoint'] = os.path.join('runs', 'sft')
  assert guards.config_differences(saved, cfg) == []
  guards.check_resume_compatible({'config': saved}, cfg, str(tmp_path))
  saved['data']['tokenizer'] = os.path.join('other', 'a.model')
  with pytest.raises(ConfigError, match='data.tokenizer'):
    guards.check_resume_compatible({'config': saved}, cfg, str(tmp_path))
