"""Tokenizers: round trips, reserved ids, clear errors, and the training command."""
import json

import pytest

from nlhf_jax.cli import tokenizer as tokenizer_cli
from nlhf_jax.data import bytes_vocab
from nlhf_jax.data.tokenizer import (ByteTokenizer, SentencePieceTokenizer, TokenizerError, check_vocab,
                                     load_tokenizer, train_sentencepiece)

TEXTS = [f'the quick brown fox {i} jumps over the lazy dog, sorting {i * 7} words' for i in range(200)]


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
  return train_sentencepiece(TEXTS, vocab_size=320, model_prefix=str(tmp_path_factory.mktemp('sp') / 'tok'))


def test_byte_tokenizer_round_trip_matches_bytes_vocab():
  tok = load_tokenizer('bytes')
  assert isinstance(tok, ByteTokenizer)
  text = 'sort: ant bée 猫'
  assert tok.encode(text) == bytes_vocab.encode(text)
  assert tok.decode([tok.bos_id] + tok.encode(text) + [tok.eos_id]) == text
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.vocab_size) == (0, 1, 2, 3, 249)
  # The largest code point's UTF-8 form (F4 8F BF BF) holds the largest byte UTF-8 uses: every id fits vocab_size.
  assert max(tok.encode(chr(0x10FFFF) + 'ÿ' + chr(0xFFFD))) == tok.vocab_size - 1


def test_sentencepiece_round_trip_and_reserved_ids(sp_model):
  tok = load_tokenizer(sp_model)
  assert isinstance(tok, SentencePieceTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 4)
  for text in ['the lazy fox jumps', 'unseen text: Zebra é 猫 <sep>']:  # byte fallback covers unseen characters
    ids = tok.encode(text)
    assert tok.sep_id not in ids and max(ids) < tok.vocab_size
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text


def test_decode_skips_ids_past_the_vocabulary(sp_model):
  # A model's embedding table may have more rows than the tokenizer has pieces; sampled ids there decode to ''.
  sp, byte = load_tokenizer(sp_model), ByteTokenizer()
  ids = sp.encode('the lazy fox')
  assert sp.decode(ids + [sp.vocab_size, sp.vocab_size + 7]) == sp.decode(ids) == 'the lazy fox'
  assert byte.decode(byte.encode('fox') + [249, 255, 511]) == 'fox'


def test_load_tokenizer_errors(tmp_path):
  missing = str(tmp_path / 'missing.model')
  with pytest.raises(TokenizerError, match=f"{missing}.*no such file.*nlhf_jax.cli.tokenizer"):
    load_tokenizer(missing)
  with pytest.raises(TokenizerError, match="must be 'bytes' or the path"):
    load_tokenizer('bpe')


def test_check_vocab(sp_model):
  check_vocab(ByteTokenizer(), 249)
  with pytest.raises(TokenizerError, match=r'249 ids but config.model.vocab_size=131'):
    check_vocab(ByteTokenizer(), 131)
  check_vocab(load_tokenizer(sp_model), 320)


def test_tokenizer_cli_from_files(tmp_path, capsys):
  text = tmp_path / 'a.txt'
  text.write_text('\n'.join(TEXTS[:100]) + '\n')
  pairs = tmp_path / 'p.jsonl'
  pairs.write_text('\n'.join(json.dumps({'prompt': t, 'chosen': t[::-1], 'rejected': 'x'}) for t in TEXTS[100:]))
  assert tokenizer_cli.main([f'--input={text}', f'--input={pairs}', '--vocab_size=300',
                             f'--output={tmp_path}/out/tok']) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary['model'] == f'{tmp_path}/out/tok.model' and summary['sep_id'] == 4
  assert load_tokenizer(summary['model']).decode(load_tokenizer(summary['model']).encode('dog')) == 'dog'


def test_training_data_refuses_a_tokenizer_larger_than_the_model(sp_model):
  from nlhf_jax.trainer.tasks import get_task
  from tests.helpers import tiny_config
  n = load_tokenizer(sp_model).vocab_size
  cfg = tiny_config(**{'data.tokenizer': sp_model, 'model.vocab_size': n - 1})
  with pytest.raises(TokenizerError, match=f'{n} ids but config.model.vocab_size={n - 1}; set model.vocab_size >= {n}'):
    get_task('sft').make_data(cfg, slice(0, cfg.train.batch_size))


def test_tokenizer_cli_from_a_tfds_data_set(tmp_path, capsys):
  """--dataset: the texts of the data set's train split (every text field) train the model."""
  from nlhf_jax.data import tfds_builders
  recs = [{'prompt': t, 'response': 'quokka ' * (1 + i % 3)} for i, t in enumerate(TEXTS)]
  tfds_builders.build(recs, 'demonstrations', 'demos', str(tmp_path / 'tfds'), validation_fraction=0)
  assert tokenizer_cli.main(['--dataset=demos', f'--data_dir={tmp_path}/tfds', '--vocab_size=300',
                             f'--output={tmp_path}/tok']) == 0
  tok = load_tokenizer(json.loads(capsys.readouterr().out.strip().splitlines()[-1])['model'])
  assert len(tok.encode('quokka')) == 1  # a word only the responses hold is one piece
  assert tok.decode(tok.encode(TEXTS[3])) == TEXTS[3]


def test_tokenizer_cli_texts_include_message_contents_and_parquet(tmp_path, capsys):
  import pyarrow as pa
  import pyarrow.parquet as pq
  convs = [{'prompt': [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': f'question {i}'}],
            'chosen': [{'role': 'assistant', 'content': 'yes'}], 'rejected': 'no', 'preference_note': 'x'}
           for i in range(2)]
  jsonl = tmp_path / 'c.jsonl'
  jsonl.write_text('\n'.join(json.dumps(c) for c in convs))
  table = pa.Table.from_pylist([{'prompt': t, 'response': 'quokka'} for t in TEXTS])
  pq.write_table(table, str(tmp_path / 't.parquet'))
  args = tokenizer_cli._parser().parse_args([f'--input={jsonl}', '--output=x'])
  assert list(tokenizer_cli.texts(args)) == ['be brief', 'question 0', 'yes', 'no', 'x', 'be brief', 'question 1',
                                             'yes', 'no', 'x']
  args = tokenizer_cli._parser().parse_args([f'--input={tmp_path}/t.parquet', '--output=x'])
  assert list(tokenizer_cli.texts(args))[:4] == [TEXTS[0], 'quokka', TEXTS[1], 'quokka']
  assert tokenizer_cli.main([f'--input={tmp_path}/t.parquet', '--vocab_size=300', f'--output={tmp_path}/tok']) == 0
  tok = load_tokenizer(json.loads(capsys.readouterr().out)['model'])
  assert tok.decode(tok.encode('quokka ' + TEXTS[5])) == 'quokka ' + TEXTS[5]
