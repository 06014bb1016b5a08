"""Writing an evaluation result: matrix.json, matrix.md (tables), matrix.png (heatmaps) and samples.md."""
from __future__ import annotations

import json
import os

import numpy as np

FILES = ('matrix.json', 'matrix.md', 'matrix.png', 'samples.md')


def _cell(m: dict, r: int, c: int) -> str:
  return f"{m['win'][r][c]:.3f} [{m['lower'][r][c]:.2f}, {m['upper'][r][c]:.2f}]"


def matrix_table(m: dict) -> str:
  """Markdown: rows pi_row, columns pi_col, cells P(pi_col > pi_row) [95% CI]."""
  names = m['policies']
  lines = ['| row \\ col | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  for r, name in enumerate(names):
    lines.append(f'| {name} | ' + ' | '.join(_cell(m, r, c) for c in range(len(names))) + ' |')
  return '\n'.join(lines)


def policy_table(result: dict) -> str:
  head = ('| policy | win vs ref (oracle) | win vs ref (PM) | KL to mu | length (tokens) | words | styles '
          'plain/and/so/none | exploitability (probe) |')
  lines = [head, '|---' * 8 + '|']
  for name in result['policies']:
    p = result['per_policy'][name]
    lo, hi = p['win_rate_vs_reference_oracle_ci']
    s = p['style_distribution']
    lines.append(f"| {name} | {p['win_rate_vs_reference_oracle']:.3f} [{lo:.2f}, {hi:.2f}] | "
                 f"{p['win_rate_vs_reference_preference_model']:.3f} | {p['kl_to_reference']:.3f} | "
                 f"{p['mean_length_tokens']:.2f} | {p['mean_length_words']:.2f} | "
                 f"{s['plain']:.2f}/{s['and']:.2f}/{s['so']:.2f}/{s['none']:.2f} | "
                 f"{p['exploitability']:.3f} ({p['exploitability_probe']}) |")
  return '\n'.join(lines)


def markdown(result: dict) -> str:
  n, judgement = result['num_comparisons'], result['judgement']
  return '\n\n'.join([
      '# Evaluation', f"Cell (row, col) = P(pi_col > pi_row) over N = {n} comparisons "
      f"({result['num_prompts']} prompts x {result['samples_per_prompt']} samples), judgement '{judgement}', "
      f"95% Clopper-Pearson interval in brackets; seed {result['seed']}.",
      '## Oracle P*', matrix_table(result['oracle']),
      '## Learned preference model', matrix_table(result['preference_model']),
      f"## Policies (reference: {result['reference']})", policy_table(result)]) + '\n'


def samples_markdown(result: dict) -> str:
  lines = ['# Sample generations', '']
  for name, rows in result['samples'].items():
    lines += [f'## {name}', '']
    lines += [f"- `{row['prompt']}` -> `{row['response']}`" for row in rows]
    lines.append('')
  return '\n'.join(lines)


def heatmap(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = result['policies']
  fig, axes = plt.subplots(1, 2, figsize=(2 + 1.3 * len(names), 1 + 0.6 * len(names)))
  for ax, key, title in zip(axes, ('oracle', 'preference_model'), ('oracle P*', 'learned preference model')):
    win = np.asarray(result[key]['win'])
    ax.imshow(win, cmap='RdBu', vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel('column policy (P(col > row))')
    ax.set_title(title)
    for r in range(len(names)):
      for c in range(len(names)):
        ax.text(c, r, f'{win[r, c]:.2f}', ha='center', va='center', fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(result: dict, out_dir: str) -> dict[str, str]:
  """Writes the four files into out_dir; returns {file name: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {f: os.path.join(out_dir, f) for f in FILES}
  with open(paths['matrix.json'], 'w') as f:
    json.dump(result, f, indent=1)
  with open(paths['matrix.md'], 'w') as f:
    f.write(markdown(result))
  with open(paths['samples.md'], 'w') as f:
    f.write(samples_markdown(result))
  heatmap(result, paths['matrix.png'])
  return paths
