"""Pooling evaluations over seeds and the findings' verdicts (evaluation/findings.py) on hand-made matrices, and a
miniature pipeline with two seeds: its layout, its pooled evaluation and its findings.json."""
import json
import os

import numpy as np
import pytest

from nlhf_jax.evaluation import findings, stats
from nlhf_jax.pipeline import runner, stages
from tests.pipeline.mini import mini_config


def matrix(names, upper, n=100):
  """A view from {(a, b): P(a > b)} (mirrored; 1/2 elsewhere) with N comparisons a cell and its CP intervals."""
  p = len(names)
  win = np.full((p, p), 0.5)
  for (a, b), v in upper.items():
    win[names.index(b), names.index(a)] = v
    win[names.index(a), names.index(b)] = 1.0 - v
  k = win * n
  bounds = np.array([[stats.clopper_pearson(k[r, c], n) for c in range(p)] for r in range(p)])
  return {'policies': names, 'win': win, 'lower': bounds[..., 0], 'upper': bounds[..., 1], 'successes': k,
          'num_comparisons': n}


def test_pool_mean_spread_and_pooled_interval():
  names = ['sft', 'rlhf']
  a, b = matrix(names, {('rlhf', 'sft'): 0.6}, n=100), matrix(names, {('rlhf', 'sft'): 0.7}, n=300)
  m = findings.pool([a, b])
  assert m['seeds'] == 2 and m['num_comparisons'] == 400
  assert m['mean'][0, 1] == pytest.approx(0.65) and m['min'][0, 1] == 0.6 and m['max'][0, 1] == 0.7
  assert m['std'][0, 1] == pytest.approx(0.05)
  assert m['successes'][0, 1] == pytest.approx(60 + 210) and m['win'][0, 1] == pytest.approx(270 / 400)
  assert (m['lower'][0, 1], m['upper'][0, 1]) == pytest.approx(stats.clopper_pearson(270, 400))
  np.testing.assert_allclose(m['win'] + m['win'].T, 1.0)
  assert m['win'][0, 0] == 0.5
  with pytest.raises(ValueError, match='policies differ'):
    findings.pool([a, matrix(['sft', 'sp'], {})])


def verdict_of(key, views):
  views = {f'seed_{i}': v for i, v in enumerate(views)}
  views['pooled'] = findings.pool(list(views.values()))
  (claim,) = [c for c in findings.evaluate_claims(views) if c['key'] == key]
  return claim['verdict'], {k: v['outcome'] for k, v in claim['views'].items()}


N = ['sft', 'rlhf', 'md_0.125', 'md_0.5', 'br']


def test_claim_a_every_policy_beats_sft():
  good = {(n, 'sft'): 0.8 for n in N[1:]}
  bad = {**good, ('br', 'sft'): 0.2}
  assert verdict_of('beats_sft', [matrix(N, good)] * 2)[0] == 'holds'
  assert verdict_of('beats_sft', [matrix(N, bad)] * 2)[0] == 'fails'
  verdict, outcomes = verdict_of('beats_sft', [matrix(N, good), matrix(N, bad)])
  assert verdict == 'undecided' and outcomes['seed_0'] == 'holds' and outcomes['seed_1'] == 'fails'
  assert verdict_of('beats_sft', [matrix(N, {**good, ('br', 'sft'): 0.52})] * 2)[0] == 'undecided'


def test_claim_b_small_beta_nash_md_not_beaten():
  assert findings.md_small(N) == 'md_0.125'
  fine = {('md_0.125', n): 0.55 for n in N if n != 'md_0.125'}
  beaten = {**fine, ('md_0.125', 'br'): 0.2}  # P(br > md_0.125) = 0.8
  assert verdict_of('md_small_unbeaten', [matrix(N, fine)] * 3)[0] == 'holds'
  assert verdict_of('md_small_unbeaten', [matrix(N, beaten)] * 3)[0] == 'fails'
  assert verdict_of('md_small_unbeaten', [matrix(N, fine), matrix(N, beaten)])[0] == 'undecided'


def test_claim_d_br_does_worst_against_rlhf():
  base = {('md_0.125', 'rlhf'): 0.7, ('md_0.5', 'rlhf'): 0.65}
  assert verdict_of('br_worst_vs_rlhf', [matrix(N, {**base, ('br', 'rlhf'): 0.3})] * 2)[0] == 'holds'
  assert verdict_of('br_worst_vs_rlhf', [matrix(N, {**base, ('br', 'rlhf'): 0.9})] * 2)[0] == 'fails'
  # br above md_0.5 but within its interval: undecided in every view
  verdict, outcomes = verdict_of('br_worst_vs_rlhf', [matrix(N, {**base, ('br', 'rlhf'): 0.67})] * 2)
  assert verdict == 'undecided' and set(outcomes.values()) == {'undecided'}


def test_claims_c_e_f_and_skipped_claims():
  names = ['sft', 'rlhf', 'md_0.25', 'dpo']
  m = matrix(names, {('md_0.25', 'rlhf'): 0.8, ('md_0.25', 'dpo'): 0.8, ('md_0.25', 'sft'): 0.8,
                     ('dpo', 'rlhf'): 0.5, ('sft', 'rlhf'): 0.5})
  m['exploitability'] = {'sft': 0.9, 'rlhf': 0.7, 'md_0.25': 0.4, 'dpo': 0.5}
  claims = {c['key']: c for c in findings.evaluate_claims({'seed_0': m, 'pooled': m})}
  assert 'br_worst_vs_rlhf' not in claims  # no br
  assert claims['rlhf_beaten_exploitable']['verdict'] == 'holds'
  assert claims['nash_support_md']['verdict'] == 'holds'  # md_0.25 beats every other policy
  assert claims['md_small_beats_offline']['verdict'] == 'holds'
  m2 = {**m, 'exploitability': {**m['exploitability'], 'dpo': 0.95}}
  assert findings.rlhf_beaten_exploitable(m2)[0] == 'fails'
  assert findings.md_small_beats_offline(matrix(names, {('md_0.25', 'dpo'): 0.2}))[0] == 'fails'


@pytest.mark.slow
def test_pipeline_with_two_seeds(tmp_path):
  p = mini_config()
  p.seeds = '0,1'
  p.policies = 'rlhf,md_0.25'
  p.sft.update(num_steps=4, checkpoint_every=4)
  p.preference_model.update(num_steps=2, checkpoint_every=2)
  p.reward_model.update(num_steps=2, checkpoint_every=2)
  p.policy.update(num_steps=2, checkpoint_every=2)
  p.eval.update(num_prompts=8)
  workdir = str(tmp_path)
  status = runner.run_pipeline(p, workdir)
  assert list(status) == stages.stage_names(p) and set(status.values()) == {'ran'}
  for stage in ('tokenizer', 'data', 'eval'):
    assert os.path.exists(os.path.join(workdir, stage, runner.MARKER))
  for s in (0, 1):
    for stage in ('sft', 'pairs', 'preference_model', 'reward_model', 'rlhf', 'md_0.25', 'eval'):
      assert os.path.exists(os.path.join(workdir, f'seed_{s}', stage, runner.MARKER)), (s, stage)
    with open(os.path.join(workdir, f'seed_{s}', 'sft', runner.STAGE_CONFIG)) as f:
      assert json.load(f)['seed'] == s
  assert not os.path.exists(os.path.join(workdir, 'sft'))
  ev = os.path.join(workdir, 'eval')
  with open(os.path.join(ev, 'aggregate.json')) as f:
    agg = json.load(f)
  assert agg['seeds'] == [0, 1] and agg['num_comparisons'] == [16, 16]
  assert agg['oracle']['num_comparisons'] == 32
  with open(os.path.join(ev, 'findings.json')) as f:
    found = json.load(f)
  assert found['labels'] == ['seed_0', 'seed_1']
  keys = {c['key'] for c in found['judges']['oracle']}
  assert keys == {'beats_sft', 'md_small_unbeaten', 'rlhf_beaten_exploitable', 'nash_support_md'}
  for c in found['judges']['oracle']:
    assert c['verdict'] in ('holds', 'fails', 'undecided') and list(c['views']) == ['seed_0', 'seed_1', 'pooled']
  assert '# Findings' in open(os.path.join(ev, 'findings.md')).read()
  assert os.path.exists(os.path.join(workdir, 'seed_0', 'eval', 'findings.md'))  # each seed's own
  assert set(runner.run_pipeline(p, workdir).values()) == {'skipped'}
  from nlhf_jax.cli import eval as eval_cli
  with pytest.raises(ValueError, match=r'pipeline of 2 seeds \(0,1\).*--workdir=.*seed_S'):
    eval_cli.eval_config(workdir)  # DIR/eval pools the seeds: one clear error naming seed_S
  assert eval_cli.eval_config(os.path.join(workdir, 'seed_1')).output_dir.endswith(os.path.join('seed_1', 'eval'))
