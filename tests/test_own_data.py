"""docs/own-data.md as it stands: its bash block runs from a fresh OUT folder, and every artefact it promises is
there (the matrix with the user's policy names and what each was trained as, the curves, config.json, run.json,
validation metrics in metrics.jsonl)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env
from xla_cpu import xla_flags

REPO = pathlib.Path(__file__).parents[1]


def _script() -> str:
  text = (REPO / 'docs' / 'own-data.md').read_text()
  blocks = re.findall(r'```bash\n(.*?)```', text, flags=re.S)
  assert len(blocks) == 1, 'docs/own-data.md should hold one bash block'
  # The virtual environment under test is this interpreter's: `source .venv/bin/activate` is replaced by its PATH.
  # The block's 8 fake devices stay, with the test run's fast-compiling flags (tests/xla_cpu.py) beside them.
  fake_devices = 'export XLA_FLAGS=--xla_force_host_platform_device_count=8'
  assert fake_devices in blocks[0]
  return blocks[0].replace('source .venv/bin/activate\n', '').replace(fake_devices, f"export XLA_FLAGS='{xla_flags(8)}'")


@pytest.mark.slow
def test_the_own_data_walkthrough_runs_as_written(tmp_path):
  out = tmp_path / 'mine'
  env = dict(subprocess_env(None), OUT=str(out), HOME=os.environ.get('HOME', '/tmp'),
             PATH=f'{pathlib.Path(sys.executable).parent}:/usr/bin:/bin')
  run = subprocess.run(['bash', '-euo', 'pipefail', '-c', _script()], capture_output=True, text=True, timeout=900,
                       cwd=REPO, env=env)
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads((out / 'eval' / 'matrix.json').read_text())
  assert result['policies'] == ['sft', 'nash_md', 'dpo'] and 'oracle' not in result
  assert result['per_policy']['nash_md']['run']['objective'] == 'nash_md'
  assert result['per_policy']['dpo']['run'] == {'objective': 'dpo', 'num_steps': 20, 'tau': 0.1}
  matrix = (out / 'eval' / 'matrix.md').read_text()
  assert 'dpo tau 0.1, 20 steps' in matrix and 'Oracle' not in matrix
  by_rm = json.loads((out / 'eval_rm' / 'matrix.json').read_text())
  assert by_rm['judge_kind'] == 'reward_model' and result['judge_kind'] == 'preference_model'
  assert '## Learned reward model' in (out / 'eval_rm' / 'matrix.md').read_text()
  assert (out / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  for run_dir in ('sft', 'pm', 'rm', 'md', 'dpo'):
    d = out / run_dir
    assert json.loads((d / 'config.json').read_text())['train']['num_steps'] > 0
    sessions = json.loads((d / 'run.json').read_text())['sessions']
    assert sessions and sessions[-1]['outcome'] == 'finished', (run_dir, sessions)
    assert (d / 'curves.png').exists()
  rows = [json.loads(x) for x in (out / 'pm' / 'metrics.jsonl').read_text().splitlines()]
  assert all('time' in r for r in rows) and any('val/accuracy' in r for r in rows)
  rows = [json.loads(x) for x in (out / 'sft' / 'metrics.jsonl').read_text().splitlines()]
  assert any('val/loss' in r for r in rows)
