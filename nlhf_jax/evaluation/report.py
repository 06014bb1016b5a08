"""Writing an evaluation result: matrix.json, matrix.md (tables), matrix.png (heatmaps) and samples.md.

matrix.md: per judge the win-rate matrix and its Nash averaging (a table: policy, Nash weight, win rate vs the Nash
mixture; evaluation/stats.nash_summary), for a prompted judge its first-position rate, then the per-policy table.
matrix.png: per judge the heatmap and, beside it on the same rows, a bar panel of the Nash weights annotated with
the win rates vs the mixture. A result without
a `nash` entry (written before it existed) gets one computed from its stored win matrix. findings.{md,json}: the
paper's claims checked against this one evaluation (evaluation/findings.py; per seed = pooled).
"""
from __future__ import annotations

import os

import numpy as np

from nlhf_jax import outputs
from nlhf_jax.evaluation import findings, stats

BENCHMARK_ORACLE = 'nlhf_jax.benchmark.oracle:preferences'

FILES = ('matrix.json', 'matrix.md', 'matrix.png', 'samples.md')
OUTPUTS = (*FILES, 'findings.json', 'findings.md')  # what an evaluation writes into its output folder


def _cell(m: dict, r: int, c: int) -> str:
  return f"{m['win'][r][c]:.3f} [{m['lower'][r][c]:.2f}, {m['upper'][r][c]:.2f}]"


def matrix_table(m: dict) -> str:
  """Markdown: rows pi_row, columns pi_col, cells P(pi_col > pi_row) [95% CI]."""
  names = m['policies']
  lines = ['| row \\ col | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  for r, name in enumerate(names):
    lines.append(f'| {name} | ' + ' | '.join(_cell(m, r, c) for c in range(len(names))) + ' |')
  return '\n'.join(lines)


_TITLES = {'oracle': 'oracle', 'preference_model': 'learned preference model'}


def nash(m: dict) -> dict:
  """The matrix's Nash averaging: the stored one, or computed from its win matrix."""
  return m['nash'] if 'nash' in m else stats.nash_summary(m['win'], m['policies'])


def nash_table(m: dict) -> str:
  """Markdown: the maximum-entropy Nash equilibrium of the matrix's meta-game, one row per policy."""
  avg, names = nash(m), m['policies']
  lines = [f"Maximum-entropy Nash equilibrium of the meta-game with payoff P(pi_i > pi_j) - 1/2 (Nash averaging, "
           f"Balduzzi et al. 2018): support {{{', '.join(avg['support'])}}} ({len(avg['support'])} of {len(names)} "
           f"policies), entropy {avg['entropy']:.3f}. Win rate vs Nash = P(pi > Nash mixture), the Nash-weighted mean "
           f"of the policy's column above: at most 1/2 for every policy, 1/2 on the support.", '',
           '| policy | Nash weight | win rate vs Nash mixture |', '|---|---|---|']
  for name, w, v in zip(names, avg['weights'], avg['win_rate_vs_nash']):
    lines.append(f'| {name} | {w:.3f} | {v:.3f} |')
  return '\n'.join(lines)


def _title(result: dict, judge: str) -> str:
  """The heading of a judge's section."""
  if judge == 'oracle':
    spec = result.get('oracle_spec', BENCHMARK_ORACLE)
    return 'Oracle P*' if spec == BENCHMARK_ORACLE else f'Oracle ({spec})'
  kind = result.get('judge_kind')
  if kind == 'prompted':
    return f"Prompted judge ({os.path.basename(result.get('preference_model_run', '').rstrip('/'))})"
  return 'Learned reward model' if kind == 'reward_model' else 'Learned preference model'


def position_line(result: dict) -> str:
  """The prompted judge's position bias, from both orders of every judged pair."""
  p = result['judge_position']
  return (f"Position bias: first-position rate {p['first_position_rate']:.3f} (how often the judge prefers the "
          f"response shown first, both orders of each of {p['pairs']} pairs; 1/2: none). Each cell's P(a > b) "
          "averages the two orders: 1/2 + (P(first better | a first) - P(first better | b first)) / 2.")


def _judges(result: dict) -> list[str]:
  return [k for k in _TITLES if k in result]


def trained_as(run: dict) -> str:
  """'nash_md beta 0.125 tau 0.05, 100 steps' from a policy's run summary (evaluate.run_summary)."""
  knobs = ''.join(f' {k} {run[k]:g}' for k in ('beta', 'tau') if k in run)
  return f"{run.get('objective', '?')}{knobs}, {run.get('num_steps', 0)} steps"


def _short(result: dict, judge: str) -> str:
  if judge == 'oracle':
    return judge
  return 'prompted' if result.get('judge_kind') == 'prompted' else 'PM'


def policy_table(result: dict) -> str:
  judges = _judges(result)
  first = result['per_policy'][result['policies'][0]]
  styles, probes = 'style_distribution' in first, 'exploitability' in first
  trained = any('run' in p for p in result['per_policy'].values())
  head = ['policy', *(['trained as'] * trained),
          *(f'win vs ref ({_short(result, j)})' for j in judges), 'KL to mu',
          'length (tokens)', 'words']
  head += ['styles plain/and/so/none'] * styles + ['exploitability (probe)'] * probes
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  for name in result['policies']:
    p = result['per_policy'][name]
    cells = [name, *([trained_as(p['run']) if 'run' in p else ''] * trained)]
    for j in judges:
      lo, hi = p[f'win_rate_vs_reference_{j}_ci']
      cells.append(f"{p[f'win_rate_vs_reference_{j}']:.3f} [{lo:.2f}, {hi:.2f}]")
    cells += [f"{p['kl_to_reference']:.3f}", f"{p['mean_length_tokens']:.2f}", f"{p['mean_length_words']:.2f}"]
    if styles:
      s = p['style_distribution']
      cells.append(f"{s['plain']:.2f}/{s['and']:.2f}/{s['so']:.2f}/{s['none']:.2f}")
    if probes:
      cells.append(f"{p['exploitability']:.3f} ({p['exploitability_probe']})")
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def markdown(result: dict) -> str:
  n, judgement = result['num_comparisons'], result['judgement']
  sections = ['# Evaluation', f"Cell (row, col) = P(pi_col > pi_row) over N = {n} comparisons "
              f"({result['num_prompts']} prompts x {result['samples_per_prompt']} samples), judgement "
              f"'{judgement}', 95% Clopper-Pearson interval in brackets; seed {result['seed']}."]
  for j in _judges(result):
    title = _title(result, j)
    sections += [f'## {title}', matrix_table(result[j])]
    if j == 'preference_model' and 'judge_position' in result:
      sections.append(position_line(result))
    sections += [f'### Nash averaging ({title})', nash_table(result[j])]
  sections += [f"## Policies (reference: {result['reference']})", policy_table(result)]
  return '\n\n'.join(sections) + '\n'


def _text(prompt) -> str:
  """A prompt as one line: a conversation shows its last message."""
  return prompt[-1]['content'] if isinstance(prompt, list) and prompt else str(prompt)


def samples_markdown(result: dict) -> str:
  lines = ['# Sample generations', '']
  for name, rows in result['samples'].items():
    lines += [f'## {name}', '']
    lines += [f"- `{_text(row['prompt'])}` -> `{row['response']}`" for row in rows]
    lines.append('')
  return '\n'.join(lines)


def heatmap(result: dict, path) -> None:
  """Per judge: the heatmap of P(col > row) and, on its rows, the bars of the Nash weights (win rate vs the
  Nash mixture written beside each bar), as a PNG into `path` (a file name or a binary file)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names, judges = result['policies'], _judges(result)
  n, bars = len(names), 2.2  # the bar panel's width in inches
  fig, axes = plt.subplots(1, 2 * len(judges), squeeze=False,
                           figsize=(len(judges) * (2.2 + 0.65 * n + bars), 1.6 + 0.6 * n),
                           gridspec_kw={'width_ratios': [0.65 * n, bars] * len(judges)})
  for i, key in enumerate(judges):
    ax, bx = axes[0, 2 * i], axes[0, 2 * i + 1]
    win = np.asarray(result[key]['win'])
    ax.imshow(win, cmap='RdBu', vmin=0.0, vmax=1.0, aspect='auto')
    ax.set_xticks(range(n), names, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel('column policy (P(col > row))')
    ax.set_title('prompted judge' if key == 'preference_model' and result.get('judge_kind') == 'prompted'
                 else _TITLES[key])
    for r in range(n):
      for c in range(n):
        ax.text(c, r, f'{win[r, c]:.2f}', ha='center', va='center', fontsize=7)
    avg = nash(result[key])
    bx.barh(range(n), avg['weights'], height=0.6, color='tab:gray')
    for r, (w, v) in enumerate(zip(avg['weights'], avg['win_rate_vs_nash'])):
      bx.text(w + 0.02, r, f'{w:.2f} | {v:.2f}', va='center', fontsize=7)
    bx.set_ylim(n - 0.5, -0.5)
    bx.set_yticks(range(n), [''] * n)
    bx.set_xlim(0.0, 1.45)
    bx.set_xticks([0.0, 0.5, 1.0])
    bx.tick_params(labelsize=7)
    bx.set_xlabel('Nash weight | win rate vs Nash', fontsize=8)
    bx.set_title('Nash averaging', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120, format='png')
  plt.close(fig)


def check_output(out_dir: str, overwrite: bool = False) -> None:
  """Refuses an output folder that is a file, or that holds results (OUTPUTS) while `overwrite` is off."""
  outputs.check_dir(out_dir, OUTPUTS, overwrite)


def write(result: dict, out_dir: str) -> dict[str, str]:
  """Writes the four files and findings.{md,json} into out_dir, each by rename; returns {file name: path}."""
  paths = {f: os.path.join(out_dir, f) for f in FILES}
  outputs.write_json(paths['matrix.json'], result, indent=1)
  outputs.write_text(paths['matrix.md'], markdown(result))
  outputs.write_text(paths['samples.md'], samples_markdown(result))
  with outputs.replacing_file(paths['matrix.png'], 'wb') as f:
    heatmap(result, f)
  paths.update(findings.write_findings([result], [f"eval seed {result['seed']}"], out_dir))
  return paths
