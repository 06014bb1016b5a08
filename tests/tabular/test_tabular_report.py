"""`python -m nlhf_jax.cli.tabular_report`: one report of every algorithm on several games; bad input refused first."""
import os

import pytest

from nlhf_jax.outputs import OutputError
from nlhf_jax.cli import tabular_report as report
from nlhf_jax.tabular import experiment


def test_report_writes_one_table_per_variant(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(experiment, 'plot', lambda res, workdir: None)  # the plots are tested with nlhf-tabular
  workdir = str(tmp_path / 'rep')
  assert report.main(['--workdir', workdir, '--variants', 'dice,cyclic', '--algorithms', 'comal',
                      '--num_steps', '10']) == 0
  text = open(os.path.join(workdir, 'report.md')).read()
  assert text.count('| comal | constant 1 |') == 2 and '## tabular_dice' in text and '## tabular_cyclic' in text
  for v in ('dice', 'cyclic'):
    for name in ('curves.json', 'results.md'):
      assert os.path.getsize(os.path.join(workdir, v, name)) > 0
  # a second run does not replace the report unasked
  assert report.main(['--workdir', workdir, '--variants', 'dice', '--num_steps', '30']) == 1
  assert 'already holds cyclic, dice, report.md; pass --overwrite' in capsys.readouterr().err


def test_a_folder_that_holds_other_files_is_never_replaced(tmp_path, capsys, monkeypatch):
  """The report replaces its folder whole: one that holds anything else (runs, a .git) is refused, with or
  without --overwrite, and keeps every file; a report's own folder needs --overwrite."""
  monkeypatch.setattr(experiment, 'run_experiment', lambda cfg: pytest.fail('ran before the check'))
  runs = tmp_path / 'runs'
  (runs / 'sft' / 'checkpoints').mkdir(parents=True)
  (runs / '.git').mkdir()
  for flags in ([], ['--overwrite']):
    assert report.main(['--workdir', str(runs), '--variants', 'dice'] + flags) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'holds .git, sft, which no report writes' in err and err.count('\n') == 1
  assert sorted(p.name for p in runs.iterdir()) == ['.git', 'sft'] and (runs / 'sft' / 'checkpoints').is_dir()
  done = tmp_path / 'done'
  (done / 'dice').mkdir(parents=True)
  (done / 'report.md').write_text('old')
  with pytest.raises(OutputError, match=r'already holds dice, report.md; pass --overwrite'):
    report.check_workdir(str(done), overwrite=False)
  report.check_workdir(str(done), overwrite=True)


@pytest.mark.parametrize('args, message', [
    (['--variants', 'dice,chess'], "--variants: unknown variant 'chess'"),
    (['--variants', ','], '--variants is empty'),
    (['--algorithms', 'nash_md,inpoo'], "unknown 'inpoo'"),
    (['--num_steps', '0'], 'config.num_steps=0: must be a positive integer'),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys, monkeypatch, args, message):
  monkeypatch.setattr(experiment, 'run_experiment', lambda cfg: pytest.fail('ran before the check'))
  workdir = str(tmp_path / 'rep')
  assert report.main(['--workdir', workdir] + args) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err and err.count('\n') == 1
  assert not os.path.exists(workdir)
