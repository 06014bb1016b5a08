"""Hugging Face `datasets` save_to_disk folders (Arrow) and Parquet shard folders as `nlhf-data build` input.

The folders are written here in the layout `datasets` writes (read with pyarrow alone, without that package):
one split is a folder of data-0000K-of-0000N.arrow files (Arrow IPC streams), dataset_info.json and state.json
(whose '_data_files' lists the shards in order); a DatasetDict is dataset_dict.json ({'splits': [...]}) and one
such folder per split.
"""
import json

import pytest

from nlhf_jax.cli import data as data_cli
from nlhf_jax.data import readers, tfds_builders
from nlhf_jax.data.records import DataError

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')

SYS = {'role': 'system', 'content': 'Answer in one word.'}


def _pair(i):
  """TRL's explicit-prompt form with an extra column that the reader drops."""
  return {'prompt': [SYS, {'role': 'user', 'content': f'Name animal {i}? é'}],
          'chosen': [{'role': 'assistant', 'content': f'fox {i}'}],
          'rejected': [{'role': 'assistant', 'content': 'no'}], 'score_chosen': float(i)}


PAIRS = [_pair(i) for i in range(7)]


def _features(table) -> dict:
  """dataset_info.json's 'features' for string / float columns and lists of {role, content} messages."""
  value = lambda t: {'dtype': 'string' if pa.types.is_string(t) else 'float64', '_type': 'Value'}
  out = {}
  for field in table.schema:
    if pa.types.is_list(field.type):
      out[field.name] = [{f.name: value(f.type) for f in field.type.value_type}]
    else:
      out[field.name] = value(field.type)
  return out


def save_to_disk(folder, rows, num_shards=1, split=None):
  """One split of rows as `Dataset.save_to_disk(folder)` writes it."""
  folder.mkdir(parents=True)
  table = pa.Table.from_pylist(rows)
  names, size = [], -(-len(rows) // num_shards)
  for k in range(num_shards):
    name = f'data-{k:05d}-of-{num_shards:05d}.arrow'
    with pa.OSFile(str(folder / name), 'wb') as sink, pa.ipc.new_stream(sink, table.schema) as writer:
      writer.write_table(table.slice(k * size, size), max_chunksize=2)
    names.append(name)
  info = {'citation': '', 'description': '', 'features': _features(table), 'homepage': '', 'license': ''}
  (folder / 'dataset_info.json').write_text(json.dumps(info, indent=2))
  state = {'_data_files': [{'filename': n} for n in names], '_fingerprint': '0123456789abcdef',
           '_format_columns': None, '_format_kwargs': {}, '_format_type': None, '_output_all_columns': False,
           '_split': split}
  (folder / 'state.json').write_text(json.dumps(state, indent=2))
  return str(folder)


def save_dict_to_disk(folder, splits: dict):
  """A DatasetDict as `DatasetDict.save_to_disk(folder)` writes it."""
  for name, rows in splits.items():
    save_to_disk(folder / name, rows, split=name)
  (folder / 'dataset_dict.json').write_text(json.dumps({'splits': list(splits)}))
  return str(folder)


def _build(tmp_path, path, name, *flags):
  return data_cli.main(['build', f'--input={path}', f'--name={name}', f'--data_dir={tmp_path}/tfds', '--seed=3',
                   '--validation_fraction=0.3', *flags])


def _stored(tmp_path, name) -> dict:
  """The built examples as stored (text as bytes), per split, without 'source' (where each came from)."""
  builder = tfds_builders._read_only_builder(name, f'{tmp_path}/tfds')
  out = {}
  for split in builder.info.splits:
    src = builder.as_data_source(split=split)
    out[split] = [{k: v for k, v in src[i].items() if k != tfds_builders.SOURCE} for i in range(len(src))]
  return out


def test_arrow_and_parquet_folders_build_the_jsonl_data_set(tmp_path):
  jsonl = tmp_path / 'pairs.jsonl'
  jsonl.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in PAIRS), encoding='utf-8')
  arrow = save_to_disk(tmp_path / 'hf_pairs', PAIRS, num_shards=2, split='train')
  shards = tmp_path / 'parquet' / 'data'
  shards.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(PAIRS[:4]), str(shards / 'train-00000-of-00002.parquet'))
  pq.write_table(pa.Table.from_pylist(PAIRS[4:]), str(shards / 'train-00001-of-00002.parquet'))
  for name, path in (('from_jsonl', jsonl), ('from_arrow', arrow), ('from_parquet', tmp_path / 'parquet')):
    assert _build(tmp_path, path, name) == 0
  expected = _stored(tmp_path, 'from_jsonl')
  assert sorted(expected) == ['train', 'validation'] and sum(map(len, expected.values())) == len(PAIRS)
  assert _stored(tmp_path, 'from_arrow') == expected
  assert _stored(tmp_path, 'from_parquet') == expected
  src = tfds_builders.SplitSource('from_arrow', f'{tmp_path}/tfds', 'train')
  assert {src[i]['source'] for i in range(len(src))} <= {f'data-0000{k}-of-00002.arrow row {n}'
                                                          for k in range(2) for n in range(4)}


def test_dataset_dict_split_by_flag(tmp_path, capsys):
  prompts = {'train': [{'prompt': f'train {i}'} for i in range(3)], 'test': [{'prompt': f'test {i}'} for i in range(2)]}
  folder = save_dict_to_disk(tmp_path / 'hf_prompts', prompts)
  assert [r['prompt'] for r in readers.read_records(folder, 'prompts')] == ['train 0', 'train 1', 'train 2']
  recs = readers.read_records(folder, 'prompts', with_source=True, split='test')
  assert recs == [{'prompt': f'test {i}', 'source': f'test/data-00000-of-00001.arrow row {i}'} for i in range(2)]
  assert _build(tmp_path, folder, 'test_prompts', '--kind=prompts', '--split=test', '--validation_fraction=0') == 0
  assert tfds_builders.read_split('test_prompts', f'{tmp_path}/tfds', 'train') == prompts['test']
  capsys.readouterr()
  assert _build(tmp_path, folder, 'nope', '--kind=prompts', '--split=validation') == 1
  assert capsys.readouterr().err == (f"error: {folder}: no split 'validation' in this datasets folder (its splits: "
                                     'train, test); choose one with --split=NAME\n')
  jsonl = tmp_path / 'prompts.jsonl'
  jsonl.write_text('{"prompt": "p"}\n')
  assert _build(tmp_path, jsonl, 'nope', '--kind=prompts', '--split=test') == 1
  assert capsys.readouterr().err.startswith(f'error: --split=test names a split of a `datasets` save_to_disk folder, '
                                            f'and --input={jsonl} is not one; drop --split')
  assert not (tmp_path / 'tfds' / 'nope').exists()


def test_arrow_records_fail_as_jsonl_records_do(tmp_path, capsys):
  rows = [dict(_pair(0)), dict(_pair(1), chosen=[{'role': 'narrator', 'content': 'x'}])]
  folder = save_to_disk(tmp_path / 'bad', rows)
  with pytest.raises(DataError, match=r"^data-00000-of-00001.arrow row 1: field 'chosen' message 0: role 'narrator' "
                                      r'must be one of system, user, assistant, tool \[fields: prompt, chosen, '
                                      r'rejected, score_chosen\]$'):
    readers.read_records(folder, 'pairs')
  with pytest.raises(DataError, match="missing field 'response'"):
    readers.read_records(save_to_disk(tmp_path / 'prompts_only', [{'prompt': 'p'}]), 'demonstrations')


def test_damaged_arrow_folders(tmp_path, capsys):
  folder = tmp_path / 'hf'
  save_to_disk(folder, PAIRS, num_shards=2)
  data = (folder / 'data-00001-of-00002.arrow').read_bytes()
  (folder / 'data-00001-of-00002.arrow').write_bytes(data[:len(data) // 2])
  assert _build(tmp_path, folder, 'cut') == 1
  err = capsys.readouterr().err
  assert err.startswith('error: data-00001-of-00002.arrow: not a readable Arrow stream file (') and err.count('\n') == 1
  assert "the file is damaged or was not written by `save_to_disk`: write it again" in err
  (folder / 'data-00001-of-00002.arrow').unlink()
  assert _build(tmp_path, folder, 'gone') == 1
  assert capsys.readouterr().err == (f'error: {folder}: data-00001-of-00002.arrow, listed in state.json, is missing; '
                                     'copy the whole folder that `save_to_disk` wrote\n')
  assert _build(tmp_path, folder / 'data-00000-of-00002.arrow', 'file') == 1
  assert 'is an Arrow stream (a data file of a `datasets` folder), not text; give the folder' in capsys.readouterr().err
  assert _build(tmp_path, tmp_path, 'forced', '--format=arrow') == 1
  assert capsys.readouterr().err == (f'error: {tmp_path} is not a folder written by `datasets` save_to_disk (it holds '
                                     'no state.json or dataset_dict.json); give that folder, or drop --format=arrow\n')
  (folder / 'state.json').write_text('{"_data_files": ')
  assert _build(tmp_path, folder, 'state') == 1
  assert capsys.readouterr().err.startswith(f'error: {folder}/state.json: not a readable state.json (')
  assert not (tmp_path / 'tfds').exists()


def test_nlhf_tokenizer_reads_a_save_to_disk_folder(tmp_path):
  from nlhf_jax.cli import tokenizer as tokenizer_cli
  folder = save_to_disk(tmp_path / 'hf_pairs', PAIRS, num_shards=2, split='train')
  args = tokenizer_cli._parser().parse_args([f'--input={folder}', '--output=x'])
  tokenizer_cli.check(args)
  texts = list(tokenizer_cli.texts(args))
  first = PAIRS[0]
  assert texts[:3] == [t for t in _texts_of(first)][:3]
  assert len(texts) == sum(len(list(_texts_of(r))) for r in PAIRS)


def _texts_of(row):
  for key in ('prompt', 'chosen', 'rejected'):
    value = row[key]
    for text in ([value] if isinstance(value, str) else [m['content'] for m in value]):
      yield from text.split('\n')
