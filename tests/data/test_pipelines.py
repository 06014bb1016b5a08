"""Batch iterators: formats, determinism, per-process rows, resumption and the overflow policy."""
import dataclasses
import logging

import numpy as np
import pytest

from nlhf_jax.config import DataConfig
from nlhf_jax.data import bytes_vocab, pipelines, synthetic, tfds_builders
from nlhf_jax.data.records import DataError

CFG = DataConfig(seq_len=64, prompt_len=40, response_len=32)
ALL = slice(None)


def _pairs(n, long_every=0):
  return [{'prompt': f'prompt {i}' + ('x' * 60 if long_every and i % long_every == 0 else ''),
           'response_a': f'answer a{i}', 'response_b': f'b{i}', 'preference': (i % 3) / 2} for i in range(n)]


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_pair_batch_format_and_padding():
  it = pipelines.from_records(_pairs(4), 'pairs', CFG, seed=0, batch_size=4, rows=ALL)
  b = it._make_batch(np.arange(4))
  assert b['prompt'].dtype == np.int32 and b['prompt'].shape == (4, 40) and b['prompt_mask'].dtype == bool
  assert b['response_a'].shape == b['response_b'].shape == (4, 32) and b['preference'].dtype == np.float32
  ids = [bytes_vocab.BOS] + bytes_vocab.encode('prompt 1') + [bytes_vocab.SEP]
  assert b['prompt'][1, -len(ids):].tolist() == ids and not b['prompt_mask'][1, :-len(ids)].any()
  resp = bytes_vocab.encode('answer a1') + [bytes_vocab.EOS]
  assert b['response_a'][1, :len(resp)].tolist() == resp and b['response_a_mask'][1].sum() == len(resp)
  assert b['preference'].tolist() == [0.0, 0.5, 1.0, 0.0]


def test_demonstrations_match_pack_demonstration():
  recs = [dict(zip(('prompt', 'response'), synthetic.sort_demonstration(0, i))) for i in range(8)]
  b = pipelines.from_records(recs, 'demonstrations', CFG, 0, 8, ALL)._make_batch(np.arange(8))
  ref = synthetic.demonstration_batch(0, range(8), CFG.seq_len)
  assert all(np.array_equal(b[k], ref[k]) for k in ref)
  assert {'prompt', 'prompt_mask', 'response', 'response_mask'} <= b.keys()
  prompts = pipelines.from_records(recs, 'prompts', CFG, 0, 8, ALL)._make_batch(np.arange(8))
  assert prompts.keys() == {'prompt', 'prompt_mask', 'example_index'}
  assert np.array_equal(prompts['prompt'], b['prompt']) and prompts['example_index'].tolist() == list(range(8))


def test_deterministic_by_seed_and_rows_concatenate_to_global_batch():
  make = lambda seed, rows: pipelines.from_records(_pairs(20), 'pairs', CFG, seed, 8, rows)
  full, again, other = make(1, ALL), make(1, ALL), make(2, ALL)
  top, bottom = make(1, slice(0, 4)), make(1, slice(4, 8))
  for _ in range(5):  # crosses an epoch boundary (2 batches per epoch)
    f = next(full)
    assert _equal(f, next(again))
    t, b = next(top), next(bottom)
    assert all(np.array_equal(np.concatenate([t[k], b[k]]), f[k]) for k in f)
  assert not _equal(next(make(1, ALL)), next(other))


def test_resume_sees_exactly_the_next_batch():
  make = lambda: pipelines.make_iterator(CFG, 'pairs', seed=0, batch_size=4, rows=slice(2, 4))
  it = make()
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = next(it)
  resumed = make()
  resumed.set_state(state)
  assert _equal(next(resumed), expected)
  with pytest.raises(DataError, match='state is for a data set of 99 examples'):
    resumed.set_state({'batches_produced': 1, 'num_examples': 99})


def test_too_small_data_set():
  with pytest.raises(DataError, match=r'records\[train\] has 3 examples, fewer than the global batch size 4'):
    pipelines.from_records(_pairs(3), 'pairs', CFG, 0, 4, ALL)


def test_truncate_counts_and_warns_before_the_first_batch(caplog):
  with caplog.at_level(logging.WARNING, logger='nlhf_jax.data.pipelines'):
    it = pipelines.from_records(_pairs(8, long_every=4), 'pairs', CFG, 0, 8, ALL)
  assert it.encoder.num_truncated == 2  # examples 0 and 4, counted up front
  assert ("records[train]: 2 of 8 examples do not fit and are truncated (data.overflow='truncate'), e.g. "
          "records[train] example 0: 'prompt' has 70 tokens > data.prompt_len=40") in caplog.text
  b = next(it)
  body = bytes_vocab.encode(_pairs(1, long_every=4)[0]['prompt'])[-(CFG.prompt_len - 2):]
  row = [i for i in range(8) if b['prompt_mask'][i].all()][0]
  assert b['prompt'][row].tolist()[1:-1] == body and b['prompt'][row, 0] == bytes_vocab.BOS


def test_error_policy_stops_before_training_naming_file_line_and_field(tmp_path):
  """An over-long example anywhere in the split (here the last one) stops the run when the iterator is made,
  naming the JSONL file and line it came from (kept through `nlhf-data build`) and the field."""
  from nlhf_jax.cli import data as data_cli
  from nlhf_jax.data import readers
  recs = _pairs(12)
  recs[11]['prompt'] += 'x' * 60
  path = tmp_path / 'long.jsonl'
  readers.write_jsonl(str(path), recs)
  assert data_cli.main(['build', '--kind=pairs', f'--input={path}', '--name=long', f'--data_dir={tmp_path}',
                   '--validation_fraction=0']) == 0
  cfg = dataclasses.replace(CFG, overflow='error', source='tfds', name='long', data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"long.jsonl line 12: field 'prompt' has 71 tokens, more than "
                                      r"data.prompt_len=40 \(data.overflow='error'"):
    pipelines.make_iterator(cfg, 'pairs', 0, 4, ALL)
  short = dataclasses.replace(cfg, response_len=4)
  with pytest.raises(DataError, match=r"records\[train\] example 0: field 'response_a' has 10 tokens, more "
                                      r"than data.response_len=4"):
    pipelines.make_iterator(short, 'pairs', 0, 8, ALL, records=_pairs(8))
  with pytest.raises(DataError, match=r"long.jsonl line 12: field 'prompt'"):
    pipelines.make_eval_iterator(cfg, 'pairs', 4, ALL, split='train')


def test_tfds_source_and_eval_iterator(tmp_path):
  recs = _pairs(10)
  tfds_builders.build(recs, 'pairs', 'evalme', str(tmp_path), validation_fraction=0.5, seed=0)
  cfg = dataclasses.replace(CFG, source='tfds', name='evalme', data_dir=str(tmp_path))
  val = tfds_builders.read_split('evalme', str(tmp_path), 'validation')
  batches = list(pipelines.make_eval_iterator(cfg, 'pairs', batch_size=2, rows=slice(1, 2)))
  assert len(batches) == 3 and [b['valid'].tolist() for b in batches] == [[True], [True], [False]]
  ref = pipelines.from_records(val, 'pairs', CFG, 0, 5, ALL)._make_batch(np.array([1, 3, 4]))
  assert np.array_equal(np.concatenate([b['response_a'] for b in batches]), ref['response_a'])
  with pytest.raises(DataError, match=r'evalme\[train\] holds pairs, not prompts'):
    pipelines.make_iterator(cfg, 'prompts', 0, 2, ALL)


def test_synthetic_source_without_records():
  cfg = dataclasses.replace(CFG, num_examples=16)
  b = next(pipelines.make_iterator(cfg, 'pairs', 0, 4, ALL))
  a_sorted = [sorted(w.split()) == w.split() for w in map(bytes_vocab.decode, b['response_a'])]
  assert b['preference'].tolist() == [float(x) for x in a_sorted]
  assert len(pipelines.make_eval_iterator(cfg, 'prompts', 4, ALL)) == 1


# Native tokenizers: the framing through Tokenizer.prompt_ids/response_ids is bitwise the framing from before.

def _framed_before(tok, text, limit):
  body = tok.encode(text)
  if len(body) + 2 <= limit:
    return [tok.bos_id] + body + [tok.sep_id]
  keep = max(limit - 2, 0)
  return [tok.bos_id] + (body[-keep:] if keep else []) + [tok.sep_id]


def _batch_before(tok, recs, cfg):
  """The batches as the encoder made them with the hard-coded [bos] text [sep] / text [eos] framing."""
  def pad(ids, n, left):
    row = np.full(n, tok.pad_id, np.int32)
    mask = np.zeros(n, bool)
    sl = slice(n - len(ids), n) if left else slice(0, len(ids))
    row[sl], mask[sl] = ids, True
    return row, mask

  out = {k: [] for k in ('prompt', 'prompt_mask', 'response_a', 'response_a_mask', 'response_b', 'response_b_mask',
                         'tokens', 'mask', 'loss_mask')}
  for r in recs:
    for key, value in zip(('prompt', 'prompt_mask'), pad(_framed_before(tok, r['prompt'], cfg.prompt_len),
                                                         cfg.prompt_len, True)):
      out[key].append(value)
    for field in ('response_a', 'response_b'):
      ids = (tok.encode(r[field]) + [tok.eos_id])[:cfg.response_len]
      for key, value in zip((field, field + '_mask'), pad(ids, cfg.response_len, False)):
        out[key].append(value)
    prompt = _framed_before(tok, r['prompt'], cfg.seq_len - 1)
    response = (tok.encode(r['response_a']) + [tok.eos_id])[:cfg.seq_len - len(prompt)]
    tokens, mask = pad(prompt + response, cfg.seq_len, False)
    loss = np.zeros(cfg.seq_len, np.float32)
    loss[len(prompt):len(prompt) + len(response)] = 1.0
    out['tokens'].append(tokens), out['mask'].append(mask), out['loss_mask'].append(loss)
  return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture(scope='module')
def sp_path(tmp_path_factory):
  from nlhf_jax.data.tokenizer import train_sentencepiece
  texts = [f'prompt {i} answer a{i} b{i} the quick brown fox' for i in range(200)]
  return train_sentencepiece(texts, vocab_size=300, model_prefix=str(tmp_path_factory.mktemp('sp') / 'tok'))


@pytest.mark.parametrize('which', ['bytes', 'sentencepiece'])
def test_native_framing_is_bitwise_as_before(which, sp_path):
  from nlhf_jax.data.tokenizer import load_tokenizer
  tok = load_tokenizer('bytes' if which == 'bytes' else sp_path)
  cfg = dataclasses.replace(CFG, seq_len=48, prompt_len=24, response_len=12)
  recs = _pairs(12, long_every=3)
  for i in (1, 5):
    recs[i]['response_a'] += ' and a much longer answer é 猫' * 3
  want = _batch_before(tok, recs, cfg)
  pairs = pipelines.from_records(recs, 'pairs', cfg, 0, 12, ALL, tokenizer=tok)._make_batch(np.arange(12))
  demos = [{'prompt': r['prompt'], 'response': r['response_a']} for r in recs]
  packed = pipelines.from_records(demos, 'demonstrations', cfg, 0, 12, ALL, tokenizer=tok,
                                  split_fields=False)._make_batch(np.arange(12))
  assert pairs['prompt'].dtype == packed['tokens'].dtype == np.int32 and packed['loss_mask'].dtype == np.float32
  for key in ('prompt', 'prompt_mask', 'response_a', 'response_a_mask', 'response_b', 'response_b_mask'):
    assert np.array_equal(pairs[key], want[key]) and pairs[key].dtype == want[key].dtype, key
  for key in ('tokens', 'mask', 'loss_mask'):
    assert np.array_equal(packed[key], want[key]) and packed[key].dtype == want[key].dtype, key
  assert pairs['prompt_mask'].all(axis=1).sum() == 4  # some prompts were truncated (and kept [bos] ... [sep])


def test_packed_demonstration_overflow_names_the_room_the_prompt_leaves(caplog):
  """A demonstration is packed into data.seq_len: an over-long response is measured against what is left after
  its prompt, and the messages say so (not as if that room were data.seq_len)."""
  recs = [{'prompt': 'x' * 48, 'response': 'y' * 20}] * 4  # 50 prompt ids ([bos] text [sep]), 21 response ids
  with caplog.at_level(logging.WARNING, logger='nlhf_jax.data.pipelines'):
    pipelines.from_records(recs, 'demonstrations', CFG, 0, 4, ALL, split_fields=False)
  assert ("records[train]: 4 of 4 examples do not fit and are truncated (data.overflow='truncate'), e.g. "
          "records[train] example 0: 'response' has 21 tokens > the 14 that data.seq_len=64 leaves after the "
          "50-token prompt;") in caplog.text
  strict = dataclasses.replace(CFG, overflow='error')
  with pytest.raises(DataError) as e:
    pipelines.from_records([{'prompt': 'x' * 80, 'response': 'y'}] * 4, 'demonstrations', strict, 0, 4, ALL,
                           split_fields=False)
  assert str(e.value) == ("records[train] example 0: field 'prompt' has 82 tokens, more than the 63 of "
                          "data.seq_len=64 a prompt may take (one is left for the response) (data.overflow='error'; "
                          "use 'truncate' or longer lengths)")
