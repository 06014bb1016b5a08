"""A miniature pipeline end to end: interrupted and resumed, evaluated again on another mesh shape, and run
under jax.distributed (two processes x 4 fake CPU devices: process 0 writes the shared files, both train and
sample collectively) to the matrices that one process with 8 devices gets. The in-process run is the session
fixture `mini_pipeline` (tests/conftest.py); the two processes get the same config as command-line overrides."""
import json
import os
import pathlib

import numpy as np
import pytest

from nlhf_jax.cli import eval as eval_cli
from nlhf_jax.evaluation import evaluate, report
from nlhf_jax.pipeline import runner, stages
from nlhf_jax.training import checkpointing
from tests.helpers import mesh
from tests.multihost import launch
from tests.pipeline.mini import mini_config, overrides

# The tests that share the session's miniature pipeline live in this one file, so that `make test`'s
# per-file distribution over workers (pytest-xdist --dist loadfile) builds it once.
pytestmark = pytest.mark.slow


def test_finished_stages_skipped_and_interrupted_stage_resumed(mini_pipeline):
  workdir, status, messages, first = mini_pipeline
  assert status['tokenizer'] == status['data'] == 'skipped'
  assert all(status[s] == 'ran' for s in ('sft', 'pairs', 'preference_model', 'reward_model', 'rlhf', 'sp', 'eval'))
  for stage, mtime in first.items():
    assert os.path.getmtime(os.path.join(workdir, stage, runner.MARKER)) == mtime
  sft_checkpoints = os.path.join(workdir, 'sft', 'checkpoints')
  assert any(m.startswith('resumed from step 6') and sft_checkpoints in m for m in messages)
  assert checkpointing.Checkpointer(os.path.join(workdir, 'sft', 'checkpoints')).latest_step() == 12
  for stage in stages.stage_names(mini_config()):
    assert os.path.exists(os.path.join(workdir, stage, runner.STAGE_CONFIG))
    assert os.path.exists(os.path.join(workdir, stage, runner.MARKER))
  # the recorded stage configs are the current ones (no training run overwrote them): no 'another config' warning
  changed = [name for name, scfg in stages.stage_configs(mini_config(), workdir).items()
             if runner._finished_config_changed(scfg, os.path.join(workdir, name))]
  assert not changed
  again = runner.run_pipeline(mini_config(), workdir)
  assert set(again.values()) == {'skipped'}


def test_interrupted_stage_ends_as_an_uninterrupted_run(mini_pipeline, tmp_path):
  """The sft stage, stopped after step 6 of 12 and resumed, ends with the parameters of a straight 12 steps."""
  import jax

  from nlhf_jax.config import from_config_dict
  from nlhf_jax.trainer.loop import train
  workdir = mini_pipeline[0]
  scfg = stages.stage_configs(mini_config(), workdir)['sft']
  cfg = from_config_dict(scfg, num_devices=jax.device_count())
  straight = jax.device_get(train(cfg, str(tmp_path / 'sft')).params)
  resumed, step = launch.read_params(os.path.join(workdir, 'sft'), cfg)
  assert step == 12
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_pipeline_oracle_is_a_config_key(tmp_path):
  """config.oracle names the judge of the pairs and of the evaluation; a bad name fails before any work."""
  from nlhf_jax.config import ConfigError
  from nlhf_jax.pipeline import pairs
  p = mini_config()
  configs = stages.stage_configs(p, str(tmp_path))
  assert configs['pairs'].oracle == configs['eval'].oracle == 'nlhf_jax.benchmark.oracle:preferences'
  records, summary = pairs.build_records(['x', 'y'], ['a', 'b'], ['c', 'd'], 'probabilities', 0,
                                         judge=lambda xs, a, b: [0.9] * len(xs))
  assert [r['preference'] for r in records] == [0.9, 0.9] and summary['mean_oracle_probability'] == 0.9
  p.oracle = 'nlhf_jax.benchmark.oracle:no_such_judge'
  with pytest.raises(ConfigError, match=r"config.oracle='nlhf_jax.benchmark.oracle:no_such_judge': cannot import"):
    stages.stage_configs(p, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_offline_policies_train_on_the_pairs_from_mu(tmp_path):
  """A 'dpo' policy is an offline run on the pairs stage's data set, started from (and regularised towards) sft."""
  configs = stages.stage_configs(mini_config(), str(tmp_path))
  c = configs['dpo']
  assert c.train.objective == 'dpo' and c.data.name == 'pairs'
  assert c.data.data_dir == os.path.join(str(tmp_path), 'pairs', 'tfds')
  assert c.init_checkpoint == os.path.join(str(tmp_path), 'sft') and c.offline.tau == 0.1
  assert list(configs).index('dpo') > list(configs).index('pairs')


def test_evaluation_outputs(mini_pipeline):
  workdir = mini_pipeline[0]
  for name in report.FILES:
    assert os.path.getsize(os.path.join(workdir, 'eval', name)) > 0
  with open(os.path.join(workdir, 'eval', 'matrix.json')) as f:
    result = json.load(f)
  assert result['policies'] == ['sft', 'rlhf', 'sp', 'dpo'] and result['num_comparisons'] == 32
  for key in ('oracle', 'preference_model'):
    win = np.asarray(result[key]['win'])
    np.testing.assert_allclose(win + win.T, 1.0, atol=1e-6)
    assert sum(result[key]['nash']['weights']) == pytest.approx(1.0, abs=1e-5)
  for info in result['per_policy'].values():
    assert sum(info['style_distribution'].values()) == pytest.approx(1.0)
    assert 0.0 <= info['exploitability'] <= 1.0
  assert result['per_policy']['sft']['kl_to_reference'] == pytest.approx(0.0, abs=1e-6)


def test_evaluation_reproducible_on_another_mesh(mini_pipeline):
  workdir = mini_pipeline[0]
  with open(os.path.join(workdir, 'eval', 'matrix.json')) as f:
    before = json.load(f)
  ecfg = eval_cli.eval_config(workdir, mesh='data=2,tensor=4')
  after = evaluate.evaluate(ecfg, mesh(data=2, tensor=4))
  assert after['mesh'] == {'data': 2, 'fsdp': 1, 'tensor': 4}
  assert after['samples'] == before['samples']
  np.testing.assert_array_equal(after['oracle']['win'], before['oracle']['win'])
  np.testing.assert_allclose(after['preference_model']['win'], before['preference_model']['win'], atol=1e-5)
  for name, info in after['per_policy'].items():
    assert info['kl_to_reference'] == pytest.approx(before['per_policy'][name]['kl_to_reference'], abs=1e-4)


KILL_AFTER = 600  # a whole (tiny) pipeline per process


def pipeline_cmd(workdir, *flags):
  cmd = launch.train_cmd('experiments/configs/pipeline.py:tiny', workdir, *overrides(), *flags,
                         kill_after=KILL_AFTER)
  cmd[cmd.index('nlhf_jax.cli.train')] = 'nlhf_jax.cli.pipeline'
  return cmd


def matrix(workdir, judge):
  with open(workdir / 'eval' / 'matrix.json') as f:
    return np.asarray(json.load(f)[judge]['win'])


def test_pipeline_on_two_processes_matches_one_process(tmp_path, mini_pipeline):
  import shutil
  one = pathlib.Path(mini_pipeline[0])
  two = tmp_path / 'two'
  for stage in ('tokenizer', 'data', 'sft'):  # finished in-process: the two processes start at the pairs stage
    shutil.copytree(one / stage, two / stage)
  port = launch.free_port()
  procs = [launch.start(pipeline_cmd(two, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                                     f'--process_id={i}'), 4, tmp_path / f'two_{i}.log') for i in range(2)]
  logs = launch.finish_all(procs, [tmp_path / f'two_{i}.log' for i in range(2)], KILL_AFTER + 10)
  assert 'pipeline: 2 processes, 8 devices' in logs[0]
  assert 'stage sft: finished earlier' in logs[0]
  for stage in ('pairs', 'preference_model', 'reward_model', 'rlhf', 'sp', 'eval'):
    assert (two / stage / 'DONE').exists(), stage
  np.testing.assert_allclose(matrix(two, 'oracle'), matrix(one, 'oracle'), atol=1e-6)
  np.testing.assert_allclose(matrix(two, 'preference_model'), matrix(one, 'preference_model'), atol=1e-4)

