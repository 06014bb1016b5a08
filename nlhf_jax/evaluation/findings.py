"""The paper's claims checked against evaluation matrices, per seed and pooled over seeds, with a verdict each.

Conventions (as evaluation/stats.py): a matrix has 'policies' (names), 'win', 'lower', 'upper' ([P, P] arrays, cell
(r, c) = P(pi_c > pi_r) with its 95% Clopper-Pearson interval), and may have 'exploitability' ({name: the oracle's
probe exploitability}). P(a > b) is the cell (row b, column a).

Pooling (pool): the seeds' comparisons of a cell are added, successes and counts alike, and the Clopper-Pearson
interval is taken on the totals. This assumes that all the comparisons of a cell, over all seeds, are independent
draws with one common win probability: the pooled interval covers the evaluation's sampling noise of the seeds'
policies taken together (the mean over seeds when every seed has the same N), not the variation of training from
seed to seed, which the spread (min, max, std over seeds of the cell) shows.

Claims (pure functions view -> (outcome, numbers); outcome 'holds', 'fails' or 'undecided' in that one view, a
seed's matrix or the pooled one). A claim whose policies are absent is skipped. 'Trained' policies are all but
sft; md_small is the md_BETA with the smallest BETA; Nash-MD policies are the md_BETA.
  a  beats_sft: every trained pi has P(pi > sft) > 1/2. holds: every interval above 1/2; fails: some interval
     below 1/2; undecided otherwise.
  b  md_small_unbeaten: no other policy o beats md_small. fails: some P(o > md_small) has its interval above 1/2;
     holds otherwise.
  c  rlhf_beaten_exploitable: every Nash-MD pi has P(pi > rlhf) > 1/2 and rlhf has the highest probe exploitability
     among the trained policies. holds: every interval above 1/2 and rlhf's exploitability is the highest (or no
     exploitability is known); fails: some interval below 1/2, or another trained policy's exploitability is higher;
     undecided otherwise.
  d  br_worst_vs_rlhf: P(br > rlhf) is the lowest P(pi > rlhf) among the trained pi other than rlhf. holds: br's
     point estimate is the lowest; fails: some other pi's interval lies wholly below br's interval; undecided
     otherwise.
  e  nash_support_md: the Nash averaging of the matrix (stats.nash_summary) has its support on Nash-MD policies.
     holds: support within the md_BETA; fails: no md_BETA in the support; undecided: both kinds in it.
  f  md_small_beats_offline: P(md_small > o) > 1/2 for o in dpo, ipo. holds: every interval above 1/2; fails: some
     interval below 1/2; undecided otherwise.
Verdict over the views (verdict): holds when every seed and the pooled matrix hold, fails when they all fail,
undecided otherwise. With one seed the pooled matrix is that seed's.
"""
from __future__ import annotations

import os
import re

import numpy as np

from nlhf_jax import outputs
from nlhf_jax.evaluation import stats

HALF = 0.5
_MD = re.compile(r'^md_(0?\.\d+)$')
JUDGE_TITLES = {'oracle': 'oracle', 'preference_model': 'learned judge'}


# ---------------------------------------------------------------------------------------------- pooling over seeds

def pool(matrices: list[dict], alpha: float = 0.05) -> dict:
  """Pools one judge's matrices of several seeds (same policies): {'policies', 'seeds': S, 'mean', 'min', 'max',
  'std' (over seeds, of each cell's win; std with ddof 0), 'successes', 'num_comparisons' (the totals), 'win',
  'lower', 'upper' (the pooled estimate and its Clopper-Pearson interval on the totals)}. Each matrix needs 'win'
  and 'num_comparisons', and 'successes' (else win * N)."""
  if not matrices:
    raise ValueError('pool needs at least one matrix')
  names = list(matrices[0]['policies'])
  for m in matrices[1:]:
    if list(m['policies']) != names:
      raise ValueError(f"pool: policies differ between seeds: {names} and {list(m['policies'])}")
  wins = np.stack([np.asarray(m['win'], np.float64) for m in matrices])
  ns = np.array([int(m['num_comparisons']) for m in matrices])
  ks = np.stack([np.asarray(m['successes'], np.float64) if 'successes' in m else wins[i] * ns[i]
                 for i, m in enumerate(matrices)])
  total, k = int(ns.sum()), ks.sum(0)
  k = np.clip(k, 0.0, total)
  p = len(names)
  bounds = np.array([[stats.clopper_pearson(k[r, c], total, alpha) for c in range(p)] for r in range(p)])
  return {'policies': names, 'seeds': len(matrices), 'mean': wins.mean(0), 'min': wins.min(0), 'max': wins.max(0),
          'std': wins.std(0), 'successes': k, 'num_comparisons': total, 'win': k / total,
          'lower': bounds[..., 0], 'upper': bounds[..., 1]}


# ------------------------------------------------------------------------------------------------------- claims

def md_beta(name: str) -> float | None:
  m = _MD.match(name)
  return float(m.group(1)) if m else None


def md_small(names: list[str]) -> str | None:
  mds = [n for n in names if md_beta(n) is not None]
  return min(mds, key=md_beta) if mds else None


def _p(view: dict, a: str, b: str) -> list[float]:
  """[P(a > b), lower, upper] in the view."""
  names = list(view['policies'])
  r, c = names.index(b), names.index(a)
  return [float(np.asarray(view[k])[r, c]) for k in ('win', 'lower', 'upper')]


def _intervals(cells: dict) -> str:
  """'holds' when every interval is above 1/2, 'fails' when some is below, else 'undecided'."""
  if all(lo > HALF for _, lo, _ in cells.values()):
    return 'holds'
  if any(hi < HALF for _, _, hi in cells.values()):
    return 'fails'
  return 'undecided'


def _trained(names) -> list[str]:
  return [n for n in names if n != 'sft']


def beats_sft(view: dict):
  names = list(view['policies'])
  if 'sft' not in names or not _trained(names):
    return None
  cells = {n: _p(view, n, 'sft') for n in _trained(names)}
  return _intervals(cells), {'P(pi > sft)': cells}


def md_small_unbeaten(view: dict):
  names = list(view['policies'])
  md = md_small(names)
  if md is None or len(names) < 2:
    return None
  cells = {o: _p(view, o, md) for o in names if o != md}
  beaten = [o for o, (_, lo, _) in cells.items() if lo > HALF]
  return ('fails' if beaten else 'holds'), {'md_small': md, f'P(o > {md})': cells, 'beaten by': beaten}


def rlhf_beaten_exploitable(view: dict):
  names = list(view['policies'])
  mds = [n for n in names if md_beta(n) is not None]
  if 'rlhf' not in names or not mds:
    return None
  cells = {n: _p(view, n, 'rlhf') for n in mds}
  outcome = _intervals(cells)
  numbers = {'P(md > rlhf)': cells}
  expl = view.get('exploitability') or {}
  if expl and 'rlhf' in expl:
    trained = {n: float(expl[n]) for n in _trained(names) if n in expl}
    highest = max(trained, key=trained.get)
    numbers.update(exploitability=trained, most_exploitable=highest)
    if trained['rlhf'] < trained[highest]:
      outcome = 'fails'
  return outcome, numbers


def br_worst_vs_rlhf(view: dict):
  names = list(view['policies'])
  others = [n for n in _trained(names) if n not in ('rlhf', 'br')]
  if 'br' not in names or 'rlhf' not in names or not others:
    return None
  cells = {n: _p(view, n, 'rlhf') for n in ['br', *others]}
  br = cells['br']
  lowest = min(cells, key=lambda n: cells[n][0])
  numbers = {'P(pi > rlhf)': cells, 'lowest': lowest}
  if br[0] <= min(cells[n][0] for n in others):
    return 'holds', numbers
  if any(cells[n][2] < br[1] for n in others):
    return 'fails', numbers
  return 'undecided', numbers


def nash_support_md(view: dict):
  names = list(view['policies'])
  mds = {n for n in names if md_beta(n) is not None}
  if not mds:
    return None
  avg = stats.nash_summary(np.asarray(view['win'], np.float64), names)
  support = list(avg['support'])
  on = [n for n in support if n in mds]
  outcome = 'holds' if len(on) == len(support) else 'fails' if not on else 'undecided'
  return outcome, {'support': support, 'weights': dict(zip(names, [round(w, 4) for w in avg['weights']]))}


def md_small_beats_offline(view: dict):
  names = list(view['policies'])
  md = md_small(names)
  offline = [n for n in ('dpo', 'ipo') if n in names]
  if md is None or not offline:
    return None
  cells = {o: _p(view, md, o) for o in offline}
  return _intervals(cells), {'md_small': md, f'P({md} > o)': cells}


CLAIMS = (
    ('a', 'beats_sft', 'Every trained policy beats SFT', beats_sft,
     'for every policy pi but sft, P(pi > sft) > 1/2. Holds in a matrix when every such interval lies above 1/2, '
     'fails when some lies below 1/2, undecided otherwise.'),
    ('b', 'md_small_unbeaten', 'Nash-MD with the smallest beta is not beaten', md_small_unbeaten,
     'md_small is the md_BETA with the smallest BETA; no other policy o has P(o > md_small) with its interval '
     'above 1/2. Fails in a matrix when some o does, holds otherwise.'),
    ('c', 'rlhf_beaten_exploitable', 'RLHF is beaten by every Nash-MD policy and is the most exploitable',
     rlhf_beaten_exploitable,
     'every md_BETA has P(md_BETA > rlhf) > 1/2, and rlhf has the highest probe exploitability among the trained '
     'policies (pooled: the mean over seeds). Holds when every interval lies above 1/2 and rlhf is the most '
     'exploitable (or no exploitability is known), fails when some interval lies below 1/2 or another policy is '
     'more exploitable, undecided otherwise.'),
    ('d', 'br_worst_vs_rlhf', 'BR does worst against RLHF', br_worst_vs_rlhf,
     'P(br > rlhf) is the lowest P(pi > rlhf) among the trained policies other than rlhf. Holds when br\'s point '
     'estimate is the lowest, fails when some other policy\'s interval lies wholly below br\'s, undecided otherwise.'),
    ('e', 'nash_support_md', 'The Nash averaging puts its support on Nash-MD policies', nash_support_md,
     'the maximum-entropy Nash equilibrium of the matrix\'s meta-game (payoff P(pi_i > pi_j) - 1/2, from the point '
     'estimates) has its support on md_BETA policies. Holds when the support holds md_BETA only, fails when it holds '
     'none, undecided when it mixes both.'),
    ('f', 'md_small_beats_offline', 'Nash-MD (smallest beta) beats the offline baselines DPO and IPO',
     md_small_beats_offline,
     'P(md_small > o) > 1/2 for each of dpo, ipo present. Holds when every interval lies above 1/2, fails when some '
     'lies below 1/2, undecided otherwise.'),
)


def verdict(outcomes: list[str]) -> str:
  """'holds' when every view holds, 'fails' when every view fails, else 'undecided'."""
  if outcomes and all(o == 'holds' for o in outcomes):
    return 'holds'
  if outcomes and all(o == 'fails' for o in outcomes):
    return 'fails'
  return 'undecided'


def evaluate_claims(views: dict[str, dict]) -> list[dict]:
  """Every claim over the views ({label: matrix}, the seeds' then 'pooled'): [{'id', 'key', 'title',
  'definition', 'verdict', 'views': {label: {'outcome', 'numbers'}}}], skipping claims whose policies are absent."""
  out = []
  for cid, key, title, fn, definition in CLAIMS:
    per = {label: fn(view) for label, view in views.items()}
    if any(v is None for v in per.values()):
      continue
    out.append({'id': cid, 'key': key, 'title': title, 'definition': definition,
                'verdict': verdict([o for o, _ in per.values()]),
                'views': {label: {'outcome': o, 'numbers': _jsonable(n)} for label, (o, n) in per.items()}})
  return out


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return round(float(x), 4)
  return x


# ------------------------------------------------------------------------------------- from evaluation results

def judges_of(result: dict) -> list[str]:
  return [j for j in JUDGE_TITLES if j in result]


def _exploitability(result: dict) -> dict:
  return {n: p['exploitability'] for n, p in result['per_policy'].items() if 'exploitability' in p}


def views(results: list[dict], labels: list[str], judge: str) -> dict[str, dict]:
  """{label: one result's matrix under `judge`, ..., 'pooled': pool of them} with the exploitability (pooled: the
  mean over the results) attached."""
  out = {}
  for label, r in zip(labels, results):
    out[label] = {**r[judge], 'num_comparisons': r['num_comparisons'], 'exploitability': _exploitability(r)}
  pooled = pool(list(out.values()))
  expl = [v['exploitability'] for v in out.values()]
  pooled['exploitability'] = ({n: float(np.mean([e[n] for e in expl])) for n in expl[0]}
                              if expl and all(set(e) == set(expl[0]) for e in expl) else {})
  out['pooled'] = pooled
  return out


def findings(results: list[dict], labels: list[str]) -> dict:
  """{'labels', 'num_comparisons' (per result), 'judges': {judge: [claims]}} over the results (one per seed)."""
  return {'labels': list(labels), 'num_comparisons': [r['num_comparisons'] for r in results],
          'judges': {j: evaluate_claims(views(results, labels, j)) for j in judges_of(results[0])}}


def _fmt_cells(cells: dict) -> str:
  return '; '.join(f'{n} {p:.3f} [{lo:.2f}, {hi:.2f}]' for n, (p, lo, hi) in cells.items())


def _fmt_numbers(numbers: dict) -> str:
  parts = []
  for k, v in numbers.items():
    if isinstance(v, dict) and v and all(isinstance(x, list) and len(x) == 3 for x in v.values()):
      parts.append(f'{k}: {_fmt_cells(v)}')
    elif isinstance(v, dict):
      parts.append(f'{k}: ' + ', '.join(f'{n} {x:.3f}' for n, x in v.items()))
    elif isinstance(v, list):
      parts.append(f"{k}: {{{', '.join(v)}}}")
    else:
      parts.append(f'{k}: {v}')
  return '; '.join(parts)


def markdown(f: dict) -> str:
  labels, ns = f['labels'], f['num_comparisons']
  one = len(labels) == 1
  lines = ['# Findings', '',
           (f'The paper\'s claims checked against one evaluation (N = {ns[0]} comparisons a cell): per seed = pooled.'
            if one else f"The paper's claims checked against {len(labels)} seeds ({', '.join(labels)}; N = "
            f"{', '.join(map(str, ns))} comparisons a cell) and their pooled matrix (N = {sum(ns)}: the seeds' "
            'comparisons added, Clopper-Pearson on the totals, assuming one common win probability per cell).'),
           '', 'P(a > b) is a cell of the matrix with its 95% interval [lower, upper]. Verdict: **holds** when every '
           'seed and the pooled matrix hold, **fails** when they all fail, **undecided** otherwise.']
  for judge, claims in f['judges'].items():
    lines += ['', f'## Judge: {JUDGE_TITLES[judge]}', '', '| claim | verdict | ' + ' | '.join(
        [*labels, 'pooled']) + ' |', '|---' * (len(labels) + 3) + '|']
    for c in claims:
      lines.append(f"| ({c['id']}) {c['title']} | **{c['verdict']}** | "
                   + ' | '.join(v['outcome'] for v in c['views'].values()) + ' |')
    for c in claims:
      lines += ['', f"### ({c['id']}) {c['title']}: {c['verdict']}", '', f"Claim: {c['definition']}", '']
      lines += [f"- {label}: {v['outcome']}; {_fmt_numbers(v['numbers'])}" for label, v in c['views'].items()]
  return '\n'.join(lines) + '\n'


def write_findings(results: list[dict], labels: list[str], out_dir: str) -> dict[str, str]:
  """findings.json and findings.md into out_dir; returns {file name: path}."""
  f = findings(results, labels)
  return _write(out_dir, 'findings', f, markdown(f))


def _write(out_dir: str, stem: str, obj: dict, text: str) -> dict[str, str]:
  """STEM.json (obj) and STEM.md (text) into out_dir; returns {file name: path}."""
  paths = {n: os.path.join(out_dir, n) for n in (f'{stem}.json', f'{stem}.md')}
  outputs.write_json(paths[f'{stem}.json'], obj, indent=1)
  outputs.write_text(paths[f'{stem}.md'], text)
  return paths


# ------------------------------------------------------------------------------------------ aggregate of seeds

def aggregate(results: list[dict], seeds: list[int]) -> dict:
  """The seeds' evaluations pooled: {'seeds', 'num_comparisons' (per seed), judge: pool(...) as lists with its
  'nash' (of the pooled matrix), 'per_policy': {name: {'exploitability', 'kl_to_reference': mean over seeds}}}."""
  out = {'seeds': list(seeds), 'num_comparisons': [r['num_comparisons'] for r in results],
         'policies': list(results[0]['policies'])}
  for j in judges_of(results[0]):
    m = pool([{**r[j], 'num_comparisons': r['num_comparisons']} for r in results])
    m = {k: (np.round(v, 6).tolist() if isinstance(v, np.ndarray) else v) for k, v in m.items()}
    m['nash'] = stats.nash_summary(m['win'], m['policies'])
    out[j] = m
  out['per_policy'] = {n: {k: float(np.mean([r['per_policy'][n][k] for r in results]))
                           for k in ('exploitability', 'kl_to_reference') if k in results[0]['per_policy'][n]}
                       for n in out['policies']}
  return out


def aggregate_markdown(agg: dict) -> str:
  seeds, ns = agg['seeds'], agg['num_comparisons']
  lines = ['# Evaluation pooled over seeds', '',
           f"Seeds {', '.join(map(str, seeds))}, N = {', '.join(map(str, ns))} comparisons a cell. Cell (row, col) "
           '= P(pi_col > pi_row): the mean over seeds (min-max over seeds) [pooled 95% Clopper-Pearson interval: '
           "the seeds' comparisons added, assuming one common win probability per cell]."]
  for j in judges_of(agg):
    m, names = agg[j], agg['policies']
    lines += ['', f'## {JUDGE_TITLES[j]}', '', '| row \\ col | ' + ' | '.join(names) + ' |',
              '|---' * (len(names) + 1) + '|']
    for r, name in enumerate(names):
      lines.append(f'| {name} | ' + ' | '.join(
          f"{m['mean'][r][c]:.3f} ({m['min'][r][c]:.2f}-{m['max'][r][c]:.2f}) [{m['lower'][r][c]:.2f}, "
          f"{m['upper'][r][c]:.2f}]" for c in range(len(names))) + ' |')
    lines += ['', f"Nash averaging of the pooled matrix: support {{{', '.join(m['nash']['support'])}}}."]
  return '\n'.join(lines) + '\n'


def write_aggregate(results: list[dict], seeds: list[int], out_dir: str) -> dict[str, str]:
  """aggregate.{json,md} and findings.{json,md} of the seeds' results into out_dir; returns {file name: path}."""
  agg = aggregate(results, seeds)
  paths = _write(out_dir, 'aggregate', agg, aggregate_markdown(agg))
  return {**paths, **write_findings(results, [f'seed_{s}' for s in seeds], out_dir)}
