"""JSONL -> TFDS array_record data set -> read back, without TensorFlow."""
import json
import sys

import pytest

from nlhf_jax.cli import data as data_cli
from nlhf_jax.data import records, tfds_builders
from nlhf_jax.data.records import DataError


def _pairs(n):
  return [{'prompt': f'prompt {i} é', 'response_a': f'a{i}', 'response_b': f'b{i}', 'preference': (i % 5) / 4}
          for i in range(n)]


def test_build_and_read_back_equals_input(tmp_path):
  recs = _pairs(20)
  counts = tfds_builders.build(recs, 'pairs', 'my_pairs', str(tmp_path), validation_fraction=0.25, seed=3)
  assert counts == {'train': 15, 'validation': 5}
  idx = tfds_builders.split_indices(20, 0.25, seed=3)
  for split in ('train', 'validation'):
    assert tfds_builders.read_split('my_pairs', str(tmp_path), split) == [recs[i] for i in idx[split]]
  assert sorted(idx['train'].tolist() + idx['validation'].tolist()) == list(range(20))
  assert 'tensorflow' not in sys.modules


def test_tfds_data_source_reads_it(tmp_path):
  import tensorflow_datasets as tfds
  tfds_builders.build(_pairs(6), 'pairs', 'my_pairs_ds', str(tmp_path), validation_fraction=0.0)
  ds = tfds.data_source('my_pairs_ds', data_dir=str(tmp_path), split='train')
  assert len(ds) == 6 and ds[2]['prompt'].decode() == 'prompt 2 é'


def test_split_is_deterministic_by_seed():
  a, b, c = (tfds_builders.split_indices(100, 0.1, s) for s in (0, 0, 1))
  assert (a['validation'] == b['validation']).all() and len(a['validation']) == 10
  assert not (a['validation'] == c['validation']).all()


def test_cli_build_chosen_rejected_and_summary(tmp_path, capsys):
  path = tmp_path / 'pairs.jsonl'
  path.write_text('\n'.join(json.dumps({'prompt': f'p{i}', 'chosen': f'c{i}', 'rejected': f'r{i}'})
                            for i in range(10)) + '\n')
  argv = ['build', '--kind=pairs', f'--input={path}', '--name=cr_pairs', f'--data_dir={tmp_path}/tfds',
          '--validation_fraction=0.2', '--seed=1']
  assert data_cli.main(argv) == 0
  out = capsys.readouterr().out
  assert out == f"built pairs data set 'cr_pairs' in {tmp_path}/tfds (10 examples)\n  train: 8\n  validation: 2\n"
  assert sorted(p.name for p in (tmp_path / 'tfds').iterdir()) == ['cr_pairs']  # no empty downloads/ folder
  back = tfds_builders.read_split('cr_pairs', f'{tmp_path}/tfds', 'train')
  assert all(r['response_a'] == 'c' + r['prompt'][1:] and r['preference'] == 1.0 for r in back)
  assert data_cli.main(argv) == 1 and 'already exists' in capsys.readouterr().err
  assert data_cli.main(argv + ['--overwrite']) == 0


def test_cli_build_tldr_and_bad_input(tmp_path, capsys):
  comp = {'info': {'post': 'post'}, 'summaries': [{'text': 's0'}, {'text': 's1'}], 'choice': 1}
  path = tmp_path / 'batch1.json'
  path.write_text('\n'.join(json.dumps(comp) for _ in range(4)))
  assert data_cli.main(['build', f'--input={path}', '--format=tldr', '--name=tldr_small', f'--data_dir={tmp_path}',
                   '--validation_fraction=0']) == 0
  assert tfds_builders.read_split('tldr_small', str(tmp_path), 'train')[0]['preference'] == 0.0
  bad = tmp_path / 'bad.jsonl'
  bad.write_text(json.dumps({'prompt': 'p', 'response': 'r'}) + '\n{"prompt": "p"}\n')
  assert data_cli.main(['build', '--kind=demonstrations', f'--input={bad}', '--name=x', f'--data_dir={tmp_path}']) == 1
  assert "bad.jsonl line 2: missing field 'response'" in capsys.readouterr().err
  bad.write_text(''.join(json.dumps({'prompt': f'p{i}'}) + '\n' for i in range(12)) + '{"prompt"\n')
  assert data_cli.main(['build', '--kind=demonstrations', f'--input={bad}', '--name=x', f'--data_dir={tmp_path}']) == 1
  err = capsys.readouterr().err.splitlines()
  assert err[0] == 'error: bad.jsonl: 13 of 13 records are bad (the first 10 below); fix them at the source'
  assert err[1:] == [f"  bad.jsonl line {n}: missing field 'response' [fields: prompt]" for n in range(1, 11)]


def test_reading_errors(tmp_path):
  with pytest.raises(DataError, match=r"no data set 'absent' in data_dir=.* \(it holds no data sets\); build it with "
                                      r"`nlhf-data build"):
    tfds_builders.SplitSource('absent', str(tmp_path), 'train')
  with pytest.raises(DataError, match=r"no data set 'absent' in data_dir=.* \(that folder does not exist\)"):
    tfds_builders.SplitSource('absent', str(tmp_path / 'nowhere'), 'train')
  tfds_builders.build([{'prompt': 'p'}] * 3, 'prompts', 'few', str(tmp_path), validation_fraction=0)
  tfds_builders.build([{'prompt': 'p'}] * 3, 'prompts', 'many', str(tmp_path), validation_fraction=0)
  with pytest.raises(DataError) as e:
    tfds_builders.SplitSource('fewer', str(tmp_path), 'train')
  assert str(e.value) == (f"no data set 'fewer' in data_dir={str(tmp_path)!r} (it holds few, many; did you mean "
                          f"'few'?); build it with `nlhf-data build --kind=KIND --input=FILE.jsonl --name=fewer "
                          f"--data_dir={tmp_path}`")
  with pytest.raises(DataError, match=r"has no split 'validation' \(it has train\)"):
    tfds_builders.SplitSource('few', str(tmp_path), 'validation')
  with pytest.raises(DataError, match='snake_case'):
    tfds_builders.build([{'prompt': 'p'}], 'prompts', 'Bad-Name', str(tmp_path))
  assert records.fields('prompts') == ('prompt',)
