"""The pipeline under jax.distributed: two processes x 4 fake CPU devices run every stage (process 0 writes the
shared files, both train and sample collectively) and evaluate to the matrix that one process with 8 devices gets
(the session's in-process miniature pipeline, the same config given as command-line overrides)."""
import json
import pathlib

import numpy as np
import pytest

from multihost import launch
from tests.pipeline.mini import overrides

pytestmark = pytest.mark.slow

KILL_AFTER = 600  # a whole (tiny) pipeline per process


def pipeline_cmd(workdir, *flags):
  cmd = launch.train_cmd('experiments/configs/pipeline.py:tiny', workdir, *overrides(), *flags,
                         kill_after=KILL_AFTER)
  cmd[cmd.index('nlhf_jax.train')] = 'nlhf_jax.pipeline'
  return cmd


def matrix(workdir, judge):
  with open(workdir / 'eval' / 'matrix.json') as f:
    return np.asarray(json.load(f)[judge]['win'])


def test_pipeline_on_two_processes_matches_one_process(tmp_path, mini_pipeline):
  one = pathlib.Path(mini_pipeline[0])
  two = tmp_path / 'two'
  port = launch.free_port()
  procs = [launch.start(pipeline_cmd(two, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                                     f'--process_id={i}'), 4, tmp_path / f'two_{i}.log') for i in range(2)]
  logs = [launch.finish(p, tmp_path / f'two_{i}.log', KILL_AFTER + 10) for i, p in enumerate(procs)]
  assert 'pipeline: 2 processes, 8 devices' in logs[0]
  for stage in ('tokenizer', 'data', 'sft', 'pairs', 'preference_model', 'reward_model', 'rlhf', 'sp', 'eval'):
    assert (two / stage / 'DONE').exists(), stage
  np.testing.assert_allclose(matrix(two, 'oracle'), matrix(one, 'oracle'), atol=1e-6)
  np.testing.assert_allclose(matrix(two, 'preference_model'), matrix(one, 'preference_model'), atol=1e-4)

