"""nlhf-plot's inputs and output: checked before anything is drawn, and no file it did not make is replaced
unless --overwrite (a run's own curves.png, which training draws, is redrawn)."""
import json
import subprocess
import sys

import pytest

from nlhf_jax.outputs import OutputError
from nlhf_jax.trainer import plot
from tests.helpers import subprocess_env


def _run(path, rows=3):
  path.mkdir()
  (path / 'metrics.jsonl').write_text(''.join(json.dumps({'step': s, 'loss': 1.0 / s}) + '\n'
                                              for s in range(1, rows + 1)))
  return str(path)


def test_nlhf_plot_keeps_a_file_it_did_not_make(tmp_path):
  run = _run(tmp_path / 'a')
  target = tmp_path / 'mine.png'
  target.write_bytes(b'mine')
  cmd = [sys.executable, '-m', 'nlhf_jax.cli.plot', f'--workdir={run}', f'--out={target}']
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env(None))
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
      f'error: {target} already exists; pass --overwrite to replace it, or choose another path']
  assert target.read_bytes() == b'mine'
  out = subprocess.run([*cmd, '--overwrite'], capture_output=True, text=True, timeout=120, env=subprocess_env(None))
  assert out.returncode == 0, out.stderr
  assert target.read_bytes().startswith(b'\x89PNG') and sorted(p.name for p in tmp_path.iterdir()) == ['a', 'mine.png']


def test_plot_inputs_are_checked_first(tmp_path):
  a, b = _run(tmp_path / 'a'), _run(tmp_path / 'b')
  plot.check_inputs([a], None)
  (tmp_path / 'a' / 'curves.png').write_bytes(b'drawn by training')
  plot.check_inputs([a], None)  # a run's own curves are redrawn
  plot.check_inputs([a], str(tmp_path / 'a' / 'curves.png'))
  with pytest.raises(OutputError, match='2 runs are overlaid: give the picture a path with --out=FILE.png'):
    plot.check_inputs([a, b], None)
  with pytest.raises(OutputError, match='already exists; pass --overwrite'):
    plot.check_inputs([a, b], str(tmp_path / 'a' / 'curves.png'))
  with pytest.raises(OutputError, match='give a path ending in .png'):
    plot.check_inputs([a], str(tmp_path / 'c.pdf'))
  with pytest.raises(OutputError, match='metrics.jsonl is a file, not a folder'):
    plot.check_inputs([a], str(tmp_path / 'a' / 'metrics.jsonl' / 'sub' / 'c.png'))
  (tmp_path / 'x.png').mkdir()
  with pytest.raises(OutputError, match='is a folder'):
    plot.check_inputs([a], str(tmp_path / 'x.png'))
  with pytest.raises(OutputError, match='is given twice'):
    plot.check_inputs([a, str(tmp_path / 'a') + '/'], str(tmp_path / 'both.png'))
  with pytest.raises(FileNotFoundError, match='is a file, not a run folder'):
    plot.check_inputs([str(tmp_path / 'a' / 'metrics.jsonl')], None)


def test_metrics_that_are_not_utf8_are_skipped_line_by_line(tmp_path):
  (tmp_path / 'metrics.jsonl').write_bytes(b'{"step": 1, "loss": 2}\n\xff\xfe garbage\n{"step": 2, "loss": 1}\n')
  assert plot.read_metrics(str(tmp_path)) == [{'step': 1, 'loss': 2}, {'step': 2, 'loss': 1}]
