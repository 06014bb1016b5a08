"""matrix.md and matrix.png of an evaluation result: the matrices, their Nash averaging and the per-policy table."""
import json
import os

import numpy as np
import pytest

from nlhf_jax.evaluation import evaluate, report, stats
from nlhf_jax.tabular import games

NAMES = ['sft', 'rlhf', 'sp', 'md']
N = 64


def win_matrix(pref):
  """The evaluation's matrix from a preference matrix between policies, pref[i, j] = P(pi_i > pi_j): cell (r, c)
  is P(pi_c > pi_r), judged as 'expected' over N comparisons of probability pref[c, r] each."""
  return stats.win_matrix(lambda r, c: np.full(N, pref[c, r]), len(pref), N, 'expected')


def cyclic_with_a_weak_reference():
  """rlhf, sp and md in a rock-paper-scissors cycle; every one beats sft with probability 0.75."""
  pref = np.full((4, 4), 0.5)
  pref[1:, 1:] = np.round(games.cyclic(3), 4)
  pref[1:, 0], pref[0, 1:] = 0.75, 0.25
  return pref


def result(judges: dict) -> dict:
  per_policy = {}
  for i, name in enumerate(NAMES):
    info = {'kl_to_reference': 0.1 * i, 'mean_length_tokens': 5.0, 'mean_length_words': 2.0}
    for key, m in judges.items():
      info[f'win_rate_vs_reference_{key}'] = float(m['win'][0, i])
      info[f'win_rate_vs_reference_{key}_ci'] = [float(m['lower'][0, i]), float(m['upper'][0, i])]
    per_policy[name] = info
  return {'policies': NAMES, 'reference': 'sft', 'num_comparisons': N, 'num_prompts': N, 'samples_per_prompt': 1,
          'judgement': 'expected', 'seed': 0, 'oracle_spec': report.BENCHMARK_ORACLE, 'preference_model_run': 'pm',
          **{key: evaluate._matrix_json(m, NAMES) for key, m in judges.items()}, 'per_policy': per_policy,
          'samples': {name: [{'prompt': 'x', 'response': 'y'}] for name in NAMES}}


def table_rows(md: str, heading: str) -> dict[str, tuple[float, float]]:
  """{policy: (Nash weight, win rate vs Nash)} from the Nash table under `heading`."""
  section = md.split(heading, 1)[1].split('\n## ', 1)[0].split('\n### ', 1)[0]
  rows = [line.strip('|').split('|') for line in section.splitlines() if line.startswith('| ')][1:]
  return {cells[0].strip(): (float(cells[1]), float(cells[2])) for cells in rows}


def test_nash_of_the_stored_matrix_is_the_equilibrium():
  """Cell (r, c) = P(pi_c > pi_r): the meta-game is the transposed matrix; weights uniform on the cycle."""
  m = evaluate._matrix_json(win_matrix(cyclic_with_a_weak_reference()), NAMES)
  avg = m['nash']
  assert avg['support'] == ['rlhf', 'sp', 'md']
  np.testing.assert_allclose(avg['weights'], [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-9)
  np.testing.assert_allclose(avg['win_rate_vs_nash'], [0.25, 0.5, 0.5, 0.5], atol=1e-9)
  win = np.asarray(m['win'])
  np.testing.assert_allclose(np.diag(win), 0.5)
  np.testing.assert_allclose(avg['win_rate_vs_nash'], np.asarray(avg['weights']) @ win, atol=1e-12)  # column means
  assert avg['exploitability'] == pytest.approx(0.0, abs=1e-9) and avg['entropy'] == pytest.approx(np.log(3))


def test_duplicated_policy_splits_the_weight_in_the_report():
  """sft < rlhf < sp < sft, each pair at 0.8, and md a copy of sp: sp and md share sp's third."""
  cycle = np.array([[0.5, 0.2, 0.8], [0.8, 0.5, 0.2], [0.2, 0.8, 0.5]])
  md = report.markdown(result({'oracle': win_matrix(cycle[np.ix_([0, 1, 2, 2], [0, 1, 2, 2])])}))
  assert table_rows(md, '### Nash averaging (Oracle P*)') == {
      'sft': (0.333, 0.5), 'rlhf': (0.333, 0.5), 'sp': (0.167, 0.5), 'md': (0.167, 0.5)}


def test_matrix_md_shows_the_nash_averaging_of_each_judge(tmp_path):
  pm = np.full((4, 4), 0.5)  # under the learned judge md beats everyone
  pm[3, :3], pm[:3, 3] = 0.7, 0.3
  res = result({'oracle': win_matrix(cyclic_with_a_weak_reference()), 'preference_model': win_matrix(pm)})
  paths = report.write(res, str(tmp_path))
  md = open(paths['matrix.md']).read()
  assert md.index('## Oracle P*') < md.index('### Nash averaging (Oracle P*)') < md.index(
      '## Learned preference model') < md.index('### Nash averaging (Learned preference model)') < md.index(
      '## Policies')
  assert table_rows(md, '### Nash averaging (Oracle P*)') == {
      'sft': (0.0, 0.25), 'rlhf': (0.333, 0.5), 'sp': (0.333, 0.5), 'md': (0.333, 0.5)}
  assert 'support {rlhf, sp, md} (3 of 4 policies), entropy 1.099' in md
  assert table_rows(md, '### Nash averaging (Learned preference model)') == {
      'sft': (0.0, 0.3), 'rlhf': (0.0, 0.3), 'sp': (0.0, 0.3), 'md': (1.0, 0.5)}
  assert '| md | 1.000 | 0.500 |' in md and 'support {md} (1 of 4 policies), entropy 0.000' in md
  with open(paths['matrix.json']) as f:
    stored = json.load(f)
  assert stored['preference_model']['nash']['support'] == ['md']
  assert os.path.getsize(paths['matrix.png']) > 0
  import matplotlib.image
  height, width = matplotlib.image.imread(paths['matrix.png']).shape[:2]
  assert width > 2 * height  # two heatmaps, each with its bar panel


def test_a_result_without_nash_gets_it_from_its_matrix():
  """matrix.json files written before Nash averaging render the same tables."""
  res = result({'oracle': win_matrix(cyclic_with_a_weak_reference())})
  before = report.markdown(res)
  del res['oracle']['nash']
  assert report.markdown(res) == before
  assert '### Nash averaging (Learned preference model)' not in before
