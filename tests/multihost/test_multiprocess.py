"""Two processes x 4 CPU devices (gloo collectives on localhost) against one process with 8 devices."""
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from experiments.configs import nash_md
from nlhf_jax.config import from_config_dict
from nlhf_jax.training import checkpointing
from nlhf_jax.trainer.loop import train
from multihost import launch

CONFIG = 'experiments/configs/nash_md.py:tiny'
STEPS = 6
FLAGS = ('--config.train.log_every=3', '--config.train.checkpoint_every=3',
         '--config.train.async_checkpointing=false')


def _cfg(steps=STEPS):
  c = nash_md.get_config('tiny')
  c.train.update(num_steps=steps, log_every=3, checkpoint_every=3, async_checkpointing=False)
  return from_config_dict(c, num_devices=jax.device_count())


def _two_processes(workdir, steps=STEPS):
  port = launch.free_port()
  procs = []
  for i in range(2):
    cmd = launch.train_cmd(CONFIG, workdir, *FLAGS, f'--config.train.num_steps={steps}', f'--coordinator_address=localhost:{port}',
                           '--num_processes=2', f'--process_id={i}')
    procs.append(launch.start(cmd, 4, workdir.parent / f'{workdir.name}.{i}.log'))
  try:
    return launch.finish_all(procs, [workdir.parent / f'{workdir.name}.{i}.log' for i in range(2)])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  state = train(_cfg(), str(tmp_path_factory.mktemp('one')))
  return jax.device_get(state.params)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


@pytest.fixture(scope='module')
def two_processes(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('two') / 'run'
  return workdir, _two_processes(workdir)


@pytest.mark.slow
def test_two_processes_match_one_process(two_processes, one_process):
  workdir, logs = two_processes
  assert 'process 0 of 2' in logs[0] and 'step 6/6' in logs[0]
  assert 'step 6/6' not in logs[1]  # only process 0 logs progress
  assert launch.checkpoint_steps(workdir) == [3, 6]  # written collectively
  params, step = launch.read_params(workdir, _cfg())
  assert step == STEPS
  assert _max_diff(params, one_process) <= 1e-5
  assert (workdir / 'metrics.jsonl').read_text().count('\n') == 2


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path, two_processes, one_process):
  """Step 3 of the two-process run, continued to step 6 by one process with the same global batch."""
  shutil.copytree(two_processes[0] / 'checkpoints', tmp_path / 'checkpoints')
  shutil.rmtree(tmp_path / 'checkpoints' / str(STEPS))
  meta = checkpointing.Checkpointer(str(tmp_path / 'checkpoints')).read_meta(3)
  assert meta['processes'] == 2 and meta['devices'] == 8
  state = train(_cfg(), str(tmp_path))
  assert int(state.step) == STEPS
  assert _max_diff(jax.device_get(state.params), one_process) <= 1e-5


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_checkpointed_step(tmp_path):
  """JAX's preemption sync manager: the signalled process and the other one save the same step and exit 0."""
  port, workdir, procs = launch.free_port(), tmp_path / 'run', []
  logs = [tmp_path / f'{i}.log' for i in range(2)]
  for i in range(2):
    cmd = launch.train_cmd('experiments/configs/sft.py:tiny', workdir, '--config.train.num_steps=500',
                           '--config.train.log_every=1', '--config.train.checkpoint_every=1000',
                           f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}')
    procs.append(subprocess.Popen(cmd, cwd=launch.REPO, env=launch.env(4), stdout=open(logs[i], 'w'),
                                  stderr=subprocess.STDOUT, start_new_session=True))
  try:
    t0 = time.time()
    while 'step 3/500' not in logs[0].read_text():
      assert all(p.poll() is None for p in procs) and time.time() - t0 < 240, logs[0].read_text()[-3000:]
      time.sleep(0.05)
    os.killpg(procs[1].pid, signal.SIGTERM)
    for p in procs:
      p.wait(timeout=120)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  texts = [log.read_text() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], texts[0][-2000:] + texts[1][-2000:]
  steps = launch.checkpoint_steps(workdir)
  assert len(steps) == 1 and all(f'preempted: checkpoint at step {steps[0]} ' in t for t in texts)


@pytest.mark.slow
def test_cached_reference_logprobs_on_two_processes(tmp_path):
  """dpo with offline.reference_logprobs='cached' on two processes: each computes its rows, the all-gathered tables
  that process 0 writes equal the ones one process computes, and the two-process run trains on them."""
  from experiments.configs import dpo
  from nlhf_jax.trainer import loop
  flags = ('--config.data.num_examples=48', '--config.train.num_steps=2', '--config.train.eval_every=2',
           '--config.train.eval_batches=1', '--config.train.checkpoint_every=2',
           '--config.train.async_checkpointing=false', '--config.offline.reference_logprobs=cached')
  port = launch.free_port()
  procs, logs = [], []
  for i in range(2):
    cmd = launch.train_cmd('experiments/configs/dpo.py:tiny', tmp_path / 'two', *flags,
                           f'--config.offline.reference_cache_dir={tmp_path / "cache_two"}',
                           f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}')
    logs.append(tmp_path / f'dpo.{i}.log')
    procs.append(launch.start(cmd, 4, logs[-1]))
  try:
    launch.finish_all(procs, logs)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  c = dpo.get_config('tiny')
  c.data.num_examples = 48
  c.train.update(num_steps=1, eval_every=1, eval_batches=1, async_checkpointing=False)
  c.offline.update(reference_logprobs='cached', reference_cache_dir=str(tmp_path / 'cache_one'))
  loop.train(from_config_dict(c, num_devices=jax.device_count()), str(tmp_path / 'one'))
  two = sorted((tmp_path / 'cache_two').iterdir())
  one = sorted((tmp_path / 'cache_one').iterdir())
  assert [f.name.split('-')[1] for f in two] == [f.name.split('-')[1] for f in one] == ['train', 'validation']
  for a, b in zip(two, one):
    np.testing.assert_allclose(np.load(a)['logprobs'], np.load(b)['logprobs'], rtol=1e-5, atol=1e-5)
  assert launch.checkpoint_steps(tmp_path / 'two') == [2]
