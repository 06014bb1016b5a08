"""Training curves of one or several runs, every metric of RUN/metrics.jsonl against the step (training draws
its own at the end of a run; `nlhf-plot`, nlhf_jax/cli/plot.py, draws them on demand).

Contracts:
- `read_metrics(run)`: the rows of RUN/metrics.jsonl, one per logged step, sorted by step. A step logged twice (a
  run resumed from a checkpoint older than its last log line) keeps its last row; a line that does not parse (a
  run being written, bytes that are not UTF-8) is skipped.
- `write_curves(runs, out=None)`: one panel per metric (every key of the rows except `step` and `time`, over all
  runs: `loss` first, then by name), one line per run (named by its folder), written as a PNG to `out` (by
  rename: an interrupted write leaves the old file), by default the first run's RUN/curves.png. Returns the path,
  or None when no run has a logged row. Training calls it at the end of each run with its own workdir.
- `check_inputs(runs, out, overwrite)`, the command's checks before anything is drawn: every run is a folder with
  a metrics.jsonl, no run is given twice, and the output is a .png path that is not a folder and does not exist
  unless `overwrite`. The one exception is a single run's own RUN/curves.png (the default output), which the
  command redraws as training does. Several runs need --out: their overlay never replaces a run's own curves.
Imports only matplotlib's Agg canvas (no pyplot: no display, no global figure state), inside `write_curves` (an
optional dependency), and the standard library.
"""
from __future__ import annotations

import json
import math
import os

from nlhf_jax import outputs

CURVES = 'curves.png'
_NOT_PLOTTED = ('step', 'time')


def read_metrics(run: str) -> list[dict]:
  path = os.path.join(run, 'metrics.jsonl')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; give the --workdir of an nlhf-train run')
  rows = {}
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and isinstance(row.get('step'), (int, float)):
        rows[int(row['step'])] = row
  return [rows[s] for s in sorted(rows)]


def _names(runs: list[str]) -> list[str]:
  """Each run's folder name, or its path where two runs share a folder name."""
  base = [os.path.basename(os.path.normpath(r)) or r for r in runs]
  return [b if base.count(b) == 1 else os.path.normpath(r) for b, r in zip(base, runs)]


def _keys(tables: list[list[dict]]) -> list[str]:
  keys = {k for rows in tables for row in rows for k, v in row.items()
          if k not in _NOT_PLOTTED and isinstance(v, (int, float)) and not isinstance(v, bool)}
  return sorted(keys, key=lambda k: (k != 'loss', k))


def write_curves(runs: list[str], out: str | None = None, columns: int = 4) -> str | None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  tables = [read_metrics(r) for r in runs]
  keys = _keys(tables)
  if not keys:
    return None
  cols = min(columns, len(keys))
  rows = math.ceil(len(keys) / cols)
  width, height = 3.6 * cols, 2.5 * rows + 0.6
  fig = Figure(figsize=(width, height))  # margins set by hand: a constrained layout takes twice as long to draw
  fig.subplots_adjust(left=0.65 / width, right=1 - 0.2 / width, bottom=0.45 / height, top=1 - 0.6 / height,
                      wspace=0.32, hspace=0.45)
  FigureCanvasAgg(fig)
  names = _names(runs)
  for i, key in enumerate(keys):
    ax = fig.add_subplot(rows, cols, i + 1)
    for name, table in zip(names, tables):
      points = [(r['step'], r[key]) for r in table if isinstance(r.get(key), (int, float))]
      if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name, marker='.' if len(points) < 20 else None, linewidth=1.2)
    ax.set_title(key, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if i >= len(keys) - cols:
      ax.set_xlabel('step', fontsize=8)
  handles, labels = fig.axes[0].get_legend_handles_labels()
  if len(runs) > 1 and handles:
    fig.legend(handles, labels, loc='upper center', ncols=min(len(runs), 4), fontsize=8, frameon=False)
  else:
    fig.suptitle(names[0], fontsize=10)
  out = out or os.path.join(runs[0], CURVES)
  with outputs.replacing_file(out, 'wb') as f:
    fig.savefig(f, dpi=80, format='png')
  return out


def check_inputs(runs: list[str], out: str | None, overwrite: bool = False) -> None:
  """The command's checks (see the module docstring): FileNotFoundError for a missing run, OutputError for an
  output that may not be written."""
  if not runs:
    raise FileNotFoundError('no run given; pass --workdir=RUN (repeat it to overlay several runs)')
  seen = set()
  for run in runs:
    if not os.path.isdir(run):
      what = 'is a file, not a run folder' if os.path.exists(run) else 'does not exist'
      raise FileNotFoundError(f'--workdir={run} {what}; give the --workdir of an nlhf-train run')
    if not os.path.isfile(os.path.join(run, 'metrics.jsonl')):
      raise FileNotFoundError(f'{os.path.join(run, "metrics.jsonl")} does not exist; give the --workdir of an '
                              'nlhf-train run')
    if os.path.realpath(run) in seen:
      raise outputs.OutputError(f'--workdir={run} is given twice; give each run once')
    seen.add(os.path.realpath(run))
  if out is None:
    if len(runs) > 1:
      raise outputs.OutputError(f'{len(runs)} runs are overlaid: give the picture a path with --out=FILE.png (the '
                                "default, the first run's curves.png, holds that run's own curves)")
    return
  if not out.lower().endswith('.png'):
    raise outputs.OutputError(f'--out={out}: the curves are a PNG picture; give a path ending in .png')
  own = len(runs) == 1 and os.path.abspath(out) == os.path.abspath(os.path.join(runs[0], CURVES))
  outputs.check_file(out, overwrite or own)

