"""Record validation: every bad input names the file, the line and the field."""
import json

import pytest

from nlhf_jax.data import readers, records, tldr
from nlhf_jax.data.records import DataError


def _write(tmp_path, name, lines):
  path = tmp_path / name
  path.write_text('\n'.join(x if isinstance(x, str) else json.dumps(x) for x in lines) + '\n')
  return str(path)


GOOD = {'prompt': 'p', 'response_a': 'a', 'response_b': 'b', 'preference': 0.25}


@pytest.mark.parametrize('bad, pattern', [
    ('{"prompt": "p", ', r"pairs.jsonl line 3: malformed JSON"),
    ({'prompt': 'p', 'response_a': 'a', 'preference': 1}, r"pairs.jsonl line 3: missing field 'response_b'"),
    ({**GOOD, 'preference': 1.3}, r"pairs.jsonl line 3: field 'preference'=1.3 must be in \[0, 1\]"),
    ({**GOOD, 'preference': -0.1}, r"pairs.jsonl line 3: field 'preference'=-0.1 must be in \[0, 1\]"),
    ({**GOOD, 'preference': 'yes'}, r"pairs.jsonl line 3: field 'preference'='yes' must be a number"),
    ({**GOOD, 'preference': True}, r"pairs.jsonl line 3: field 'preference'=True must be a number"),
    ({**GOOD, 'response_b': '  '}, r"pairs.jsonl line 3: field 'response_b' is empty"),
    ({**GOOD, 'prompt': 7}, r"pairs.jsonl line 3: field 'prompt' must be a string, got int"),
    ({'prompt': 'p', 'chosen': 'c', 'rejected': ''}, r"pairs.jsonl line 3: field 'rejected' is empty"),
    ({**GOOD, 'chosen': 'c'}, r"pairs.jsonl line 3: a pair has either"),
    ('[1, 2]', r"pairs.jsonl line 3: a record must be a JSON object"),
])
def test_bad_pair_lines_name_file_line_field(tmp_path, bad, pattern):
  path = _write(tmp_path, 'pairs.jsonl', [GOOD, GOOD, bad])
  with pytest.raises(DataError, match=pattern):
    readers.read_jsonl(path, 'pairs')


def test_demonstration_and_prompt_errors(tmp_path):
  path = _write(tmp_path, 'demos.jsonl', [{'prompt': 'p', 'response': 'r'}, '', {'prompt': 'p', 'response': ''}])
  with pytest.raises(DataError, match=r"demos.jsonl line 3: field 'response' is empty"):
    readers.read_jsonl(path, 'demonstrations')
  path = _write(tmp_path, 'prompts.jsonl', [{'text': 'p'}])
  with pytest.raises(DataError, match=r"prompts.jsonl line 1: missing field 'prompt'"):
    readers.read_jsonl(path, 'prompts')


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(DataError, match='nope.jsonl: no such file'):
    readers.read_jsonl(str(tmp_path / 'nope.jsonl'), 'pairs')
  with pytest.raises(DataError, match='empty.jsonl: no records'):
    readers.read_jsonl(_write(tmp_path, 'empty.jsonl', ['']), 'pairs')


def test_chosen_rejected_map_to_a_preferred():
  out = records.validate({'prompt': 'p', 'chosen': 'good', 'rejected': 'bad', 'extra': 1}, 'pairs')
  assert out == {'prompt': 'p', 'response_a': 'good', 'response_b': 'bad', 'preference': 1.0}
  with pytest.raises(DataError, match="'preference' is not allowed"):
    records.validate({'prompt': 'p', 'chosen': 'c', 'rejected': 'r', 'preference': 0.5}, 'pairs')


def test_soft_preferences_and_extra_fields_dropped(tmp_path):
  path = _write(tmp_path, 'pairs.jsonl', [{**GOOD, 'id': 3}, {**GOOD, 'preference': 1}])
  assert readers.read_jsonl(path, 'pairs') == [GOOD, {**GOOD, 'preference': 1.0}]


def _comparison(choice, **info):
  return {'info': {'post': 'my post', **info}, 'summaries': [{'text': ' first '}, {'text': 'second'}],
          'choice': choice, 'worker': 'w1'}


def test_tldr_comparisons_become_pairs(tmp_path):
  path = _write(tmp_path, 'batch1.json', [_comparison(0, title='T', subreddit='r1'), _comparison(1)])
  a, b = tldr.read_comparisons(path)
  assert a == {'prompt': 'SUBREDDIT: r/r1\nTITLE: T\nPOST: my post\nTL;DR:', 'response_a': 'first',
               'response_b': 'second', 'preference': 1.0}
  assert b['prompt'] == 'POST: my post\nTL;DR:' and b['preference'] == 0.0


@pytest.mark.parametrize('change, pattern', [
    ({'choice': 2}, r"batch1.json line 2: field 'choice'=2 must be 0 or 1"),
    ({'summaries': [{'text': 'x'}]}, r"batch1.json line 2: field 'summaries' must hold 2"),
    ({'info': {'title': 'T'}}, r"batch1.json line 2: missing field 'info.post'"),
    ({'summaries': [{'text': 'x'}, {}]}, r"batch1.json line 2: missing field 'summaries\[1\].text'"),
])
def test_tldr_bad_comparisons(tmp_path, change, pattern):
  path = _write(tmp_path, 'batch1.json', [_comparison(0), {**_comparison(0), **change}])
  with pytest.raises(DataError, match=pattern):
    tldr.read_comparisons(path)


def test_every_bad_line_is_counted_and_the_first_ten_listed(tmp_path):
  """The whole file is checked; the error counts the bad records (malformed JSON included) and lists the first 10
  with their lines, messages and fields."""
  lines = [GOOD, {'prompt': 'p', 'chosen': 'c'}, GOOD, '{"prompt"', {**GOOD, 'preference': 2}]
  lines += [{'prompt': f'p{i}', 'response_a': 'a'} for i in range(10)]
  path = _write(tmp_path, 'pairs.jsonl', lines)
  with pytest.raises(DataError) as e:
    readers.read_jsonl(path, 'pairs')
  got = str(e.value).splitlines()
  assert got[0] == 'pairs.jsonl: 13 of 15 records are bad (the first 10 below); fix them at the source'
  assert got[1:4] == [
      "  pairs.jsonl line 2: missing field 'rejected' [fields: prompt, chosen]",
      "  pairs.jsonl line 4: malformed JSON (Expecting ':' delimiter at column 10)",
      "  pairs.jsonl line 5: field 'preference'=2 must be in [0, 1] "
      '[fields: prompt, response_a, response_b, preference]']
  assert got[4:] == [f"  pairs.jsonl line {n}: missing field 'response_b' [fields: prompt, response_a]"
                     for n in range(6, 13)]


def test_tldr_comparisons_report_every_bad_line(tmp_path):
  comp = {'info': {'post': 'post'}, 'summaries': [{'text': 's0'}, {'text': 's1'}], 'choice': 1}
  path = _write(tmp_path, 'batch1.json', [comp, {**comp, 'choice': 2}, comp, {**comp, 'summaries': []}])
  with pytest.raises(DataError) as e:
    tldr.read_comparisons(path)
  assert str(e.value).splitlines() == [
      'batch1.json: 2 of 4 records are bad (all of them below); fix them at the source',
      "  batch1.json line 2: field 'choice'=2 must be 0 or 1 [fields: info, summaries, choice]",
      "  batch1.json line 4: field 'summaries' must hold 2 summaries, got 0 [fields: info, summaries, choice]"]
