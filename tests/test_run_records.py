"""What a run leaves besides checkpoints: run.json sessions, timed metrics rows, curves.png, nlhf-plot, and the
progress log (compilation lines, rates without compilation, ETA, sampled tokens/s)."""
import json
import logging
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from helpers import mesh, subprocess_env, tiny_config
from nlhf_jax.training import metrics as metrics_lib
from nlhf_jax.trainer import plot
from nlhf_jax.trainer.loop import train

REPO = pathlib.Path(__file__).parents[1]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _cfg(steps):
  return tiny_config(**{'train.num_steps': steps, 'train.log_every': 1, 'train.checkpoint_every': 2,
                        'train.async_checkpointing': False, 'train.batch_size': 8})


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory, training_draws_curves):
  """sft.py:tiny on one device: stopped after step 2 of 3, then started again with 4 steps (a resume)."""
  workdir = tmp_path_factory.mktemp('records') / 'run'
  handler, logger = _Lines(), logging.getLogger('nlhf_jax')
  logger.addHandler(handler)
  try:
    with training_draws_curves():
      train(_cfg(3), str(workdir), mesh=mesh(1, 1, 1), stop_at=2)
      first = list(handler.lines)
      train(_cfg(4), str(workdir), mesh=mesh(1, 1, 1))
  finally:
    logger.removeHandler(handler)
  return workdir, first, handler.lines[len(first):]


def test_run_json_keeps_one_session_per_start(resumed_run):
  workdir, _, _ = resumed_run
  sessions = json.loads((workdir / 'run.json').read_text())['sessions']
  assert [(s['start_step'], s['final_step'], s['outcome']) for s in sessions] == [(0, 2, 'stopped'),
                                                                                  (2, 4, 'finished')]
  for s in sessions:
    assert s['start_time'] <= s['end_time'] and s['started'].endswith('+00:00') and s['ended']
    assert all(s['versions'][p] for p in ('jax', 'flax', 'optax', 'orbax-checkpoint', 'nlhf_jax'))
    assert s['devices']['count'] == 8 and s['devices']['platform'] == 'cpu' and s['devices']['kind']
    assert s['mesh'] == {'data': 1, 'fsdp': 1, 'tensor': 1} and s['processes'] == 1
    assert isinstance(s['command'], list) and s['num_steps'] in (3, 4)
  assert sessions[0]['end_time'] <= sessions[1]['start_time']
  assert (workdir / 'config.json').is_file()


def test_metrics_rows_carry_the_time(resumed_run):
  workdir, _, _ = resumed_run
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  times = [r['time'] for r in rows]
  assert times == sorted(times) and 1.6e9 < times[0] < 4e9
  assert 'sampled_tokens_per_s' not in rows[-1]  # SFT samples nothing


def test_progress_logs_the_compilation_apart_and_an_eta(resumed_run):
  _, first, second = resumed_run
  for lines in (first, second):  # each session compiles (or loads) its step once
    assert sum('compiling the training step' in x for x in lines) == 1
    assert sum(x.startswith('compiled the training step in ') for x in lines) == 1
  assert any(x.startswith('step 1/3 (first step) ') for x in first)  # no rate: that step compiled
  assert any(x.startswith('step 2/3 (') and 'steps/s, eta ' in x for x in first)
  assert any(x.startswith('step 4/4 (') and 'eta 0s' in x for x in second)
  assert any(x.startswith('step 3/4 (first step) ') for x in second)


def _is_png(path):
  data = pathlib.Path(path).read_bytes()
  with Image.open(path) as im:
    im.verify()
  return data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_training_writes_curves_and_nlhf_plot_overlays_runs(resumed_run, tmp_path):
  workdir, _, _ = resumed_run
  assert _is_png(workdir / 'curves.png')
  other = tmp_path / 'other'
  other.mkdir()
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  (other / 'metrics.jsonl').write_text(''.join(json.dumps(dict(r, loss=r['loss'] / 2)) + '\n' for r in rows))
  script = pathlib.Path(sys.executable).parent / 'nlhf-plot'
  out = subprocess.run([str(script), f'--workdir={workdir}', str(other), f'--out={tmp_path / "both.png"}'],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env=subprocess_env(None))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == str(tmp_path / 'both.png') and _is_png(tmp_path / 'both.png')
  with Image.open(tmp_path / 'both.png') as im:
    assert im.size[0] > 300 and im.size[1] > 200


def test_nlhf_plot_without_metrics_is_one_error_line(tmp_path):
  script = pathlib.Path(sys.executable).parent / 'nlhf-plot'
  out = subprocess.run([str(script), f'--workdir={tmp_path}'], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=subprocess_env(None))
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
      f'error: {tmp_path}/metrics.jsonl does not exist; give the --workdir of an nlhf-train run']


def test_read_metrics_keeps_the_last_row_of_a_step_logged_twice(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"step": 2, "loss": 1}\n{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n'
                                          '{"step": 3, "lo')
  assert plot.read_metrics(str(tmp_path)) == [{'step': 1, 'loss': 3}, {'step': 2, 'loss': 2}]


def test_sampled_tokens_per_s_covers_the_interval_after_compilation(monkeypatch):
  clock = iter([100.0, 110.0, 111.0, 113.0, 117.0])  # compiling, call returned, first step done, log 3, log 5
  monkeypatch.setattr(metrics_lib, '_clock', lambda: next(clock))
  p = metrics_lib.Progress(0, 5, 2)
  p.compiling(1)
  p.after_step(1, {'sampled_tokens': 1000.0})  # its tokens and time are the compilation's: left out
  for step in (2, 3):
    p.after_step(step, {'sampled_tokens': 30.0})
  shown = p.update(3, {'loss': 1.0, 'sampled_tokens': 30.0})
  assert shown['sampled_tokens_per_s'] == pytest.approx(60 / 2)  # steps 2-3 over 113 - 111 s
  for step in (4, 5):
    p.after_step(step, {'sampled_tokens': 10.0})
  assert p.update(5, {'loss': 1.0, 'sampled_tokens': 10.0})['sampled_tokens_per_s'] == pytest.approx(20 / 4)
  assert p.last_step == 5


def test_a_damaged_run_record_is_set_aside_and_a_failure_recorded(tmp_path):
  (tmp_path / 'run.json').write_text('{"sessions": [')
  record = metrics_lib.RunRecord(str(tmp_path), mesh(1, 1, 1), 0, 5, argv=['nlhf-train', '--workdir=x'])
  record.end(3, 'failed', error='FloatingPointError: non-finite loss at step 3')
  (session,) = json.loads((tmp_path / 'run.json').read_text())['sessions']
  assert session['outcome'] == 'failed' and session['final_step'] == 3 and 'non-finite' in session['error']
  assert session['command'] == ['nlhf-train', '--workdir=x']
  assert (tmp_path / 'run.json.bad').read_text() == '{"sessions": ['


def test_durations_read_as_people_write_them():
  assert [metrics_lib.duration(s) for s in (0.4, 45, 192, 7500)] == ['0s', '45s', '3m12s', '2h05m']
