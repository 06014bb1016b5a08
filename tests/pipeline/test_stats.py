"""Clopper-Pearson intervals, the mirrored win matrix and the stage configs (fast)."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments.configs import pipeline as pipeline_configs
from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.evaluation import stats
from nlhf_jax.pipeline import stages


@pytest.mark.parametrize('k, n, expected', [(5, 10, (0.187086, 0.812914)), (0, 10, (0.0, 0.308498)),
                                            (10, 10, (0.691502, 1.0)), (1, 20, (0.001265, 0.248733))])
def test_clopper_pearson_known_values(k, n, expected):
  assert stats.clopper_pearson(k, n) == pytest.approx(expected, abs=1e-6)
  ref = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method='exact')
  assert stats.clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_clopper_pearson_fractional_successes_between_integers():
  lo, hi = stats.clopper_pearson(5.5, 10)
  assert stats.clopper_pearson(5, 10)[0] < lo < stats.clopper_pearson(6, 10)[0]
  assert stats.clopper_pearson(5, 10)[1] < hi < stats.clopper_pearson(6, 10)[1]


@pytest.mark.parametrize('judgement', stats.JUDGEMENTS)
def test_win_matrix_mirrored_cells_sum_to_one(judgement):
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(4, 4, 50))
  m = stats.win_matrix(lambda r, c: probs[r, c], 4, 50, judgement, seed=3)
  np.testing.assert_array_equal(m['win'] + m['win'].T, np.ones((4, 4)))
  np.testing.assert_array_equal(np.diag(m['win']), 0.5)
  assert np.all(m['lower'] <= m['win']) and np.all(m['win'] <= m['upper'])
  again = stats.win_matrix(lambda r, c: probs[r, c], 4, 50, judgement, seed=3)
  np.testing.assert_array_equal(m['win'], again['win'])
  if judgement == 'expected':
    assert m['win'][0, 1] == pytest.approx(probs[0, 1].mean())


def test_policy_names():
  assert stages.parse_policy('md_0.125') == ('nash_md', 0.125)
  assert stages.parse_policy('sp') == ('nash_md', 0.0) and stages.parse_policy('br') == ('nash_md', 1.0)
  assert stages.parse_policy('ema') == ('nash_ema', None) and stages.parse_policy('rlhf') == ('rlhf', None)
  for bad in ('md_1.5', 'md_0', 'ppo'):
    with pytest.raises(ValueError):
      stages.parse_policy(bad)


@pytest.mark.parametrize('variant', pipeline_configs.VARIANTS)
def test_stage_configs_validate(variant, tmp_path):
  p = pipeline_configs.get_config(variant)
  configs = stages.stage_configs(p, str(tmp_path))
  assert list(configs) == stages.stage_names(p)
  assert list(configs)[-1] == 'eval' and list(configs)[:3] == ['tokenizer', 'data', 'sft']
  for name, c in configs.items():
    if name in stages.TRAINING or name in stages.policy_names(p):
      cfg = from_config_dict(c, num_devices=8)
      assert cfg.seed == p.seed
  rlhf = configs['rlhf'] if 'rlhf' in configs else None
  if rlhf is not None:
    assert rlhf.online.judge == 'reward_model' and rlhf.online.judge_checkpoint.endswith('reward_model')
  assert configs['sp'].online.beta == 0.0 and configs['sp'].online.judge == 'preference_model'
  assert configs['sp'].online.reference_checkpoint == str(tmp_path / 'sft')


def test_a_bad_policy_value_stops_the_pipeline_before_its_first_stage(tmp_path):
  """A value that only the policy stages use is checked when the stage configs are built, naming the stage."""
  p = pipeline_configs.get_config('tiny')
  p.policy.tau = -1.0
  with pytest.raises(ConfigError, match=r"pipeline stage 'sp': config.online.tau=-1.0: must be >= 0 .*built "
                     r'from config.policy, config.model, config.data'):
    stages.stage_configs(p, str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_a_mesh_that_does_not_fit_is_named_with_the_stage(tmp_path):
  p = pipeline_configs.get_config('tiny')
  configs = stages.stage_configs(p, str(tmp_path))
  configs['sft'].mesh.data = 3
  with pytest.raises(ConfigError, match=r"pipeline stage 'sft': config.mesh \(data=3"):
    stages.check_training_configs(configs, num_devices=8)


def test_eval_mesh_flag():
  from nlhf_jax.distributed.mesh import parse_mesh
  assert parse_mesh('data=2,tensor=4') == {'data': 2, 'fsdp': 1, 'tensor': 4}
  assert parse_mesh('fsdp=-1') == {'data': 1, 'fsdp': -1, 'tensor': 1}
  for bad in ('data:2', 'dta=8', 'data=two', 'data=2,'):
    with pytest.raises(ConfigError, match=r'--mesh=.*expected AXIS=SIZE pairs .*e.g. --mesh=data=2,tensor=4'):
      parse_mesh(bad)
