"""Conversations in records (both TRL pair forms), Parquet input, storage and chat-templated batches."""
import dataclasses
import json

import numpy as np
import pytest

from nlhf_jax.config import DataConfig
from nlhf_jax.cli import data as data_cli
from nlhf_jax.data import pipelines, readers, records, tfds_builders
from nlhf_jax.data.records import DataError
from nlhf_jax.data.tokenizer import TokenizerError

ALL = slice(None)
SYS = {'role': 'system', 'content': 'Answer in one word.'}


def user(text):
  return {'role': 'user', 'content': text}


def bot(text):
  return {'role': 'assistant', 'content': text}


def explicit(i):
  """TRL's explicit-prompt form: prompt messages, chosen/rejected assistant messages."""
  return {'prompt': [SYS, user(f'Name animal {i}?')], 'chosen': [bot(f'fox {i}')], 'rejected': [bot('no')]}


def implicit(i):
  """TRL's implicit-prompt form: chosen and rejected are whole conversations sharing their start."""
  head = [user(f'Sort: dog cat {i}'), bot('cat dog'), user('Again?')]
  return {'chosen': head + [bot('cat dog')], 'rejected': head + [bot(f'dog {i}')], 'score_chosen': 9.0}


def _write_jsonl(path, rows):
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  return str(path)


def _write_parquet(path, rows):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist(rows), str(path))
  return str(path)


def test_both_trl_pair_forms_validate():
  assert records.validate(explicit(3), 'pairs') == {
      'prompt': [SYS, user('Name animal 3?')], 'response_a': [bot('fox 3')], 'response_b': [bot('no')],
      'preference': 1.0}
  out = records.validate(implicit(1), 'pairs')
  assert out['prompt'] == [user('Sort: dog cat 1'), bot('cat dog'), user('Again?')]
  assert (out['response_a'], out['response_b']) == ([bot('cat dog')], [bot('dog 1')])
  # Whole conversations with a redundant prompt (as in some published data sets): the prompt must match.
  both = dict(implicit(1), prompt='Again?')
  assert records.validate(both, 'pairs') == out
  with pytest.raises(DataError, match=r"field 'prompt' does not match the 3 messages that 'chosen' and 'rejected' "
                                      r'start with'):
    records.validate(dict(implicit(1), prompt='something else'), 'pairs')
  # Soft preferences, a string prompt with conversational responses, and extra message keys dropped.
  mixed = records.validate({'prompt': 'p', 'response_a': [dict(bot('a'), name=None, id=3)],
                            'response_b': 'b', 'preference': 0.25}, 'pairs')
  assert mixed == {'prompt': 'p', 'response_a': [bot('a')], 'response_b': 'b', 'preference': 0.25}


def test_demonstration_and_prompt_forms():
  whole = {'messages': [SYS, user('q'), bot('a')]}
  assert records.validate(whole, 'demonstrations') == {'prompt': [SYS, user('q')], 'response': [bot('a')]}
  assert records.validate({'prompt': [user('q')], 'completion': 'a'}, 'demonstrations') == {
      'prompt': [user('q')], 'response': 'a'}
  assert records.validate({'prompt': [SYS, user('q')]}, 'prompts') == {'prompt': [SYS, user('q')]}


@pytest.mark.parametrize('bad, pattern', [
    ({'prompt': [user('q')], 'chosen': ['hi'], 'rejected': [bot('b')]},
     r"line 2: field 'chosen' message 0 must be an object with 'role' and 'content', got str"),
    ({'prompt': [user('q'), {'content': 'x'}], 'chosen': 'a', 'rejected': 'b'},
     r"line 2: field 'prompt' message 1: missing 'role'"),
    ({'prompt': [{'role': 'bot', 'content': 'x'}], 'chosen': 'a', 'rejected': 'b'},
     r"line 2: field 'prompt' message 0: role 'bot' must be one of system, user, assistant, tool"),
    ({'prompt': [{'role': 'user', 'content': 7}], 'chosen': 'a', 'rejected': 'b'},
     r"line 2: field 'prompt' message 0: 'content' must be a string, got int"),
    ({'prompt': [], 'chosen': 'a', 'rejected': 'b'}, r"line 2: field 'prompt' is an empty conversation"),
    ({'prompt': 'q', 'chosen': [user('a')], 'rejected': 'b'},
     r"line 2: field 'chosen' message 0: a response starts with an assistant message, got role 'user'"),
    ({'prompt': 'q', 'chosen': [bot(' ')], 'rejected': 'b'}, r"line 2: field 'chosen' is empty"),
    ({'chosen': [user('a'), bot('x')], 'rejected': [user('b'), bot('y')]},
     r"line 2: no field 'prompt', and fields 'chosen' and 'rejected' do not start with the same message"),
    ({'chosen': [user('a'), bot('x')], 'rejected': [user('a'), bot('x'), user('more')]},
     r"line 2: field 'chosen' has no messages after the prompt it shares"),
    ({'chosen': [user('a'), bot('x')], 'rejected': [user('a'), user('y')]},
     r"line 2: field 'rejected' message 1: a response starts with an assistant message"),
    ({'chosen': 'x', 'rejected': 'y'}, r"line 2: missing field 'prompt'"),
])
def test_bad_conversations_name_file_line_field_and_message(tmp_path, bad, pattern):
  path = _write_jsonl(tmp_path / 'pairs.jsonl', [explicit(0), bad])
  with pytest.raises(DataError, match='pairs.jsonl ' + pattern):
    readers.read_jsonl(path, 'pairs')
  parquet = _write_parquet(tmp_path / 'pairs.parquet', [bad])  # one row: Parquet columns need one type
  with pytest.raises(DataError, match=r'pairs.parquet row 0: ' + pattern.split(': ', 1)[1]):
    readers.read_parquet(parquet, 'pairs')


def test_bad_demonstration_messages(tmp_path):
  path = _write_jsonl(tmp_path / 'demos.jsonl', [{'messages': [user('q'), bot('a')]}, {'messages': [user('q')]}])
  with pytest.raises(DataError, match=r"demos.jsonl line 2: field 'messages' message 0: the last message is the "
                                      'response, so it must be an assistant message'):
    readers.read_jsonl(path, 'demonstrations')


def test_parquet_files_directories_and_globs(tmp_path):
  rows = [explicit(i) for i in range(5)]
  single = _write_parquet(tmp_path / 'pairs.parquet', rows)
  recs = readers.read_parquet(single, 'pairs', with_source=True)
  assert [r['source'] for r in recs] == [f'pairs.parquet row {i}' for i in range(5)]
  assert recs[2]['response_a'] == [bot('fox 2')] and 'score_chosen' not in recs[2]
  shards = tmp_path / 'shards' / 'data'
  shards.mkdir(parents=True)
  _write_parquet(shards / 'train-00001.parquet', [implicit(i) for i in range(3, 5)])
  _write_parquet(shards / 'train-00000.parquet', [implicit(i) for i in range(3)])
  by_dir = readers.read_records(str(tmp_path / 'shards'), 'pairs', with_source=True)
  by_glob = readers.read_records(str(shards / 'train-*.parquet'), 'pairs', with_source=True)
  assert [r['response_b'][0]['content'] for r in by_dir] == [f'dog {i}' for i in range(5)]
  assert by_dir[3]['source'] == 'data/train-00001.parquet row 0' and by_glob[3]['source'] == 'train-00001.parquet row 0'
  with pytest.raises(DataError, match=r'nope/\*.parquet: no .parquet files there'):
    readers.read_records(str(tmp_path / 'nope' / '*.parquet'), 'pairs')
  (tmp_path / 'junk.parquet').write_text('not parquet')
  with pytest.raises(DataError, match=r'junk.parquet: not a readable Parquet file'):
    readers.read_parquet(str(tmp_path / 'junk.parquet'), 'pairs')


def test_cli_builds_conversations_and_reads_them_back(tmp_path, capsys):
  rows = [explicit(i) for i in range(4)] + [implicit(i) for i in range(4)]
  jsonl = _write_jsonl(tmp_path / 'convs.jsonl', rows + [{'prompt': 'plain', 'chosen': 'c', 'rejected': 'r'}])
  parquet = _write_parquet(tmp_path / 'convs.parquet', rows[:4])
  for name, path in (('conv_jsonl', jsonl), ('conv_parquet', parquet)):
    assert data_cli.main(['build', f'--input={path}', f'--name={name}', f'--data_dir={tmp_path}/tfds',
                     '--validation_fraction=0']) == 0
  assert 'conv_parquet' in capsys.readouterr().out
  back = tfds_builders.read_split('conv_jsonl', f'{tmp_path}/tfds', 'train')
  assert back == [records.validate(r, 'pairs') for r in rows] + [
      {'prompt': 'plain', 'response_a': 'c', 'response_b': 'r', 'preference': 1.0}]
  src = tfds_builders.SplitSource('conv_parquet', f'{tmp_path}/tfds', 'train')
  assert src.kind == 'pairs' and src[1]['source'] == 'convs.parquet row 1' and src[1]['prompt'][0] == SYS
  bad = _write_jsonl(tmp_path / 'bad.jsonl', [explicit(0), {'prompt': [{'role': 'user'}], 'chosen': 'a',
                                                            'rejected': 'b'}])
  assert data_cli.main(['build', f'--input={bad}', '--name=bad', f'--data_dir={tmp_path}/tfds']) == 1
  assert "bad.jsonl line 2: field 'prompt' message 0: missing 'content'" in capsys.readouterr().err


def test_data_sets_built_before_conversations_still_read(tmp_path, monkeypatch):
  """A data set without the conversation_fields feature (as built before) reads as plain text."""
  features = tfds_builders._features

  def old_features(kind):
    import tensorflow_datasets as tfds
    feats = dict(features(kind))
    feats.pop(tfds_builders.CONVERSATION_FIELDS)
    return tfds.features.FeaturesDict(feats)

  monkeypatch.setattr(tfds_builders, '_features', old_features)
  monkeypatch.setattr(tfds_builders, '_storable', lambda r: r)
  recs = [{'prompt': f'p{i}', 'response': f'r{i}'} for i in range(3)]
  tfds_builders.build(recs, 'demonstrations', 'old_demos', str(tmp_path), validation_fraction=0)
  monkeypatch.undo()
  src = tfds_builders.SplitSource('old_demos', str(tmp_path), 'train')
  assert src.kind == 'demonstrations' and tfds_builders.read_split('old_demos', str(tmp_path), 'train') == recs


CFG = DataConfig(seq_len=96, prompt_len=64, response_len=24)


def _ids(out):
  return list(out['input_ids'] if hasattr(out, 'keys') else out)


def _left(ids, length):
  return [0] * (length - len(ids)) + list(ids)


@pytest.mark.parametrize('style', ['llama3', 'qwen'])
def test_conversational_batches_with_a_hugging_face_tokenizer(tmp_path, hf_dirs, style):
  """JSONL -> nlhf-data build -> make_iterator: prompts are apply_chat_template(add_generation_prompt=True),
  left-padded; responses end in the end-of-turn id, right-padded."""
  from transformers import AutoTokenizer
  rows = [explicit(i) for i in range(4)] + [implicit(i) for i in range(4)]
  # Parquet: one table for both forms (the implicit rows have a null prompt, the explicit ones a null score).
  path = _write_parquet(tmp_path / 'convs.parquet', rows) if style == 'qwen' else _write_jsonl(
      tmp_path / 'convs.jsonl', rows)
  assert data_cli.main(['build', f'--input={path}', '--name=convs', f'--data_dir={tmp_path}',
                   '--validation_fraction=0']) == 0
  cfg = dataclasses.replace(CFG, source='tfds', name='convs', data_dir=str(tmp_path), tokenizer=hf_dirs[style])
  it = pipelines.make_eval_iterator(cfg, 'pairs', batch_size=len(rows), rows=ALL, split='train')
  batch = next(iter(it))
  ref = AutoTokenizer.from_pretrained(hf_dirs[style])
  stored = tfds_builders.read_split('convs', str(tmp_path), 'train')
  tok = it.encoder.tok
  for row, rec in enumerate(stored):
    want = _ids(ref.apply_chat_template(rec['prompt'], add_generation_prompt=True))
    mask = batch['prompt_mask'][row]
    assert batch['prompt'][row][mask].tolist() == want and not mask[:CFG.prompt_len - len(want)].any()
    a = batch['response_a'][row][batch['response_a_mask'][row]].tolist()
    assert a[-1] == tok.end_of_turn_id and ref.decode(a, skip_special_tokens=True) == rec['response_a'][0]['content']
    full = _ids(ref.apply_chat_template(rec['prompt'] + rec['response_b']))
    b = batch['response_b'][row][batch['response_b_mask'][row]].tolist()
    assert full[:len(want) + len(b)] == want + b
  assert batch['preference'].tolist() == [1.0] * len(stored)


def test_chat_template_flag_renders_plain_records(hf_dirs):
  from transformers import AutoTokenizer
  recs = [{'prompt': f'Sort: dog cat {i}', 'response': 'cat dog'} for i in range(4)]
  cfg = dataclasses.replace(CFG, tokenizer=hf_dirs['gemma'], chat_template=True)
  batch = pipelines.from_records(recs, 'demonstrations', cfg, 0, 4, ALL)._make_batch(np.arange(4))
  ref = AutoTokenizer.from_pretrained(hf_dirs['gemma'])
  conv = [user(recs[1]['prompt']), bot('cat dog')]
  head = _ids(ref.apply_chat_template(conv[:1], add_generation_prompt=True))
  full = _ids(ref.apply_chat_template(conv))
  n = int(batch['mask'][1].sum())
  assert batch['tokens'][1, :n].tolist() == full[:n] and full[n - 1] == ref.convert_tokens_to_ids('<end_of_turn>')
  assert batch['loss_mask'][1].tolist() == [0.0] * len(head) + [1.0] * (n - len(head)) + [0.0] * (CFG.seq_len - n)
  plain = dataclasses.replace(cfg, chat_template=False)
  batch = pipelines.from_records(recs, 'prompts', plain, 0, 4, ALL)._make_batch(np.arange(4))
  assert batch['prompt'][1][batch['prompt_mask'][1]].tolist() == ref.encode(recs[1]['prompt'])  # [bos] text


def test_conversation_with_the_byte_tokenizer_fails_when_the_iterator_is_made(tmp_path):
  path = _write_jsonl(tmp_path / 'convs.jsonl', [{'prompt': 'p', 'chosen': 'c', 'rejected': 'r'}] * 3 + [explicit(0)])
  assert data_cli.main(['build', f'--input={path}', '--name=convs', f'--data_dir={tmp_path}',
                   '--validation_fraction=0']) == 0
  cfg = dataclasses.replace(CFG, source='tfds', name='convs', data_dir=str(tmp_path))
  with pytest.raises(TokenizerError, match=r"^convs.jsonl line 4: field 'prompt': the byte tokenizer "
                                           r"\(data.tokenizer=bytes\) has no chat template.*Hugging Face tokenizer"):
    pipelines.make_iterator(cfg, 'pairs', 0, 4, ALL)
  with pytest.raises(TokenizerError, match=r"records\[train\] example 0: field 'prompt': the byte tokenizer"):
    pipelines.from_records([{'prompt': 'p', 'response': 'r'}] * 4, 'demonstrations',
                           dataclasses.replace(CFG, chat_template=True), 0, 4, ALL)


def test_template_errors_name_the_record(tmp_path, hf_dirs):
  recs = [explicit(0)] * 3 + [{'prompt': [bot('I start')], 'chosen': 'a', 'rejected': 'b'}]
  cfg = dataclasses.replace(CFG, tokenizer=hf_dirs['gemma'])
  with pytest.raises(TokenizerError, match=r"records\[train\] example 3: field 'prompt': chat template "
                                           r".*chat_template.jinja: Conversation roles must alternate"):
    pipelines.from_records(recs, 'pairs', cfg, 0, 4, ALL)
