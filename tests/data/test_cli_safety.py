"""nlhf-data and nlhf-tokenizer against bad input: one `error:` line, and nothing that was there is lost.

Every case checks the whole command (`main`, through the guard that prints the error line) and that the data set
or model that existed before is still there byte for byte.
"""
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nlhf_jax.cli import data as data_cli
from nlhf_jax.cli import tokenizer as tokenizer_cli
from nlhf_jax.data import hf_tokenizer, records, tfds_builders
from nlhf_jax.data.tokenizer import TokenizerError, load_tokenizer, train_sentencepiece
from tests.helpers import subprocess_env

PAIRS = [{'prompt': f'prompt {i}', 'chosen': f'good {i}', 'rejected': f'bad {i}'} for i in range(8)]
TEXTS = [f'the quick brown fox {i} jumps over the lazy dog, sorting {i * 7} words' for i in range(100)]


def _jsonl(path: Path, rows) -> Path:
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return path


def _tree(root: Path) -> dict:
  """Every file and folder under root (hidden ones included) with its bytes."""
  return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob('*'))}


def _error(capsys) -> str:
  """The one `error:` line a failed command printed (no traceback)."""
  err = capsys.readouterr().err
  assert 'Traceback' not in err, err
  lines = [line for line in err.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, err
  return lines[0]


def _build(tmp_path, *flags, name='kept', input_path=None):
  input_path = input_path or _jsonl(tmp_path / 'pairs.jsonl', PAIRS)
  return data_cli.main(['build', '--kind=pairs', f'--input={input_path}', f'--name={name}',
                   f'--data_dir={tmp_path}/data', *flags])


@pytest.fixture
def built(tmp_path, capsys):
  """A data set 'kept' in tmp_path/data, and a snapshot of the data folder."""
  assert _build(tmp_path) == 0
  capsys.readouterr()
  return _tree(tmp_path / 'data')


# nlhf-data build

@pytest.mark.parametrize('flags, message', [
    (['--validation_fraction=1.5'], r'--validation_fraction=1.5 must be in \[0, 1\)'),
    (['--validation_fraction=nan'], r'--validation_fraction=nan must be in \[0, 1\)'),
    (['--seed=-1'], '--seed=-1 must be a non-negative integer'),
    (['--format=tldr', '--kind=demonstrations'], '--format=tldr makes pairs'),
])
def test_an_invalid_option_with_overwrite_keeps_the_data_set(tmp_path, capsys, built, flags, message):
  assert _build(tmp_path, '--overwrite', *flags) == 1
  assert re.search(message, _error(capsys))
  assert _tree(tmp_path / 'data') == built


def test_bad_records_with_overwrite_keep_the_data_set(tmp_path, capsys, built):
  bad = _jsonl(tmp_path / 'bad.jsonl', PAIRS + [{'prompt': 'p', 'chosen': 'c'}])
  assert _build(tmp_path, '--overwrite', input_path=bad) == 1
  assert "bad.jsonl line 9: missing field 'rejected'" in _error(capsys)
  assert _tree(tmp_path / 'data') == built


def test_an_existing_data_set_is_refused_before_the_input_is_read(tmp_path, capsys, built):
  assert _build(tmp_path, input_path=tmp_path / 'absent.jsonl') == 1
  assert _error(capsys) == (f"error: data set 'kept' already exists in {tmp_path}/data; pass --overwrite "
                            '(overwrite=True) to replace it, or choose another --name')
  assert _tree(tmp_path / 'data') == built


class _Interrupted(Exception):
  pass


def _fail_midway(monkeypatch, after: int):
  """Makes the builder raise after writing `after` examples of a split."""
  def examples(recs, *args, **kwargs):
    for i, r in enumerate(recs):
      if i == after:
        raise _Interrupted('the disk filled up')
      yield r
  monkeypatch.setattr(tfds_builders, 'progress_bar', examples)


def test_an_interrupted_rebuild_keeps_the_old_data_set(tmp_path, monkeypatch, built):
  _fail_midway(monkeypatch, after=3)
  new = [records.validate(dict(r, prompt=r['prompt'] + ' new'), 'pairs') for r in PAIRS]
  with pytest.raises(Exception, match='the disk filled up'):
    tfds_builders.build(new, 'pairs', 'kept', str(tmp_path / 'data'), 0.25, overwrite=True)
  assert _tree(tmp_path / 'data') == built  # no temporary folder left either
  monkeypatch.undo()
  tfds_builders.build(new, 'pairs', 'kept', str(tmp_path / 'data'), 0.25, overwrite=True)
  assert sorted(p.name for p in (tmp_path / 'data' / 'kept').iterdir()) == ['1.0.0']
  assert tfds_builders.read_split('kept', str(tmp_path / 'data'), 'train')[0]['prompt'].endswith(' new')


def test_an_interrupted_first_build_leaves_nothing(tmp_path, monkeypatch):
  _fail_midway(monkeypatch, after=2)
  with pytest.raises(Exception, match='the disk filled up'):
    tfds_builders.build(PAIRS, 'pairs', 'fresh', str(tmp_path / 'data'), 0.25)
  assert not (tmp_path / 'data').exists()


@pytest.mark.parametrize('setup, message', [
    (lambda d: d.write_text('x'), '{d} is a file, not a folder'),
    (lambda d: (d.mkdir(), (d / 'kept').write_text('x')), '{d}/kept is a file, not a folder'),
    (lambda d: (d.mkdir(), (d / 'kept').mkdir(), (d / 'kept' / '1.0.0').write_text('x')),
     '{d}/kept/1.0.0 is a file, not a data set folder'),
    (lambda d: (d.mkdir(), (d / 'kept').mkdir(), (d / 'kept' / '1.0.0').mkdir(), (d / 'kept/1.0.0/x').touch()),
     '{d}/kept/1.0.0 already exists but holds no complete data set'),
])
def test_a_file_or_a_half_data_set_in_the_way_is_refused(tmp_path, capsys, setup, message):
  setup(tmp_path / 'data')
  before = _tree(tmp_path / 'data') if (tmp_path / 'data').is_dir() else (tmp_path / 'data').read_bytes()
  assert _build(tmp_path) == 1
  assert message.format(d=tmp_path / 'data') in _error(capsys)
  after = _tree(tmp_path / 'data') if (tmp_path / 'data').is_dir() else (tmp_path / 'data').read_bytes()
  assert after == before


def test_a_jsonl_file_that_is_not_utf8(tmp_path, capsys):
  path = tmp_path / 'latin.jsonl'
  lines = [json.dumps(r).encode() for r in PAIRS[:3]]
  lines[1] = lines[1].replace(b'good 1', b'caf\xe9 1')
  path.write_bytes(b'\n'.join(lines) + b'\n')
  assert _build(tmp_path, input_path=path) == 1
  column = lines[1].index(b'\xe9') + 1
  offset = len(lines[0]) + 1 + column - 1
  assert _error(capsys) == (f'error: latin.jsonl line 2: not UTF-8 (byte 0xe9 at column {column}, byte offset '
                            f'{offset} of the file); re-encode the file as UTF-8 from its encoding, e.g. '
                            '`iconv -f CP1252 -t UTF-8 IN > OUT`')
  assert not (tmp_path / 'data').exists()


@pytest.mark.slow
def test_the_installed_command_ends_a_file_that_is_not_utf8_in_one_line(tmp_path):
  """nlhf-data's console script itself: exit status 1, one error line, no traceback, nothing written. (nlhf-tokenizer
  goes through the same guard: the in-process cases below.)"""
  (tmp_path / 'latin.jsonl').write_bytes(json.dumps(PAIRS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
  args = ['build', f'--input={tmp_path}/latin.jsonl', '--name=x', f'--data_dir={tmp_path}/d']
  out = subprocess.run([sys.executable, '-c', 'from nlhf_jax.cli.data import run; run()', *args], capture_output=True,
                       text=True, timeout=120, cwd=Path(__file__).parents[2], env=subprocess_env(None))
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.splitlines() == ['error: latin.jsonl line 2: not UTF-8 (byte 0xe9 at column 16, byte offset '
                                     f'{len(json.dumps(PAIRS[0])) + 16} of the file); re-encode the file as UTF-8 '
                                     'from its encoding, e.g. `iconv -f CP1252 -t UTF-8 IN > OUT`']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['latin.jsonl']


def test_lines_that_are_not_utf8_are_counted_with_the_other_bad_lines(tmp_path, capsys):
  path = tmp_path / 'mixed.jsonl'
  path.write_bytes(b'{"prompt": "\xff", "chosen": "c", "rejected": "r"}\n{"prompt"\n' +
                   json.dumps(PAIRS[0]).encode() + b'\n')
  assert _build(tmp_path, input_path=path) == 1
  err = capsys.readouterr().err.splitlines()
  assert err[0] == 'error: mixed.jsonl: 2 of 3 records are bad (all of them below); fix them at the source'
  assert err[1].startswith('  mixed.jsonl line 1: not UTF-8 (byte 0xff at column 13, byte offset 12 of the file)')
  assert err[2].startswith('  mixed.jsonl line 2: malformed JSON')


def test_a_utf8_byte_order_mark_and_crlf_lines_are_read(tmp_path, capsys):
  path = tmp_path / 'windows.jsonl'
  path.write_bytes(b'\xef\xbb\xbf' + b''.join(json.dumps(r).encode() + b'\r\n' for r in PAIRS))
  assert _build(tmp_path, '--validation_fraction=0', input_path=path) == 0
  assert tfds_builders.read_split('kept', str(tmp_path / 'data'), 'train')[0]['prompt'] == 'prompt 0'


@pytest.mark.parametrize('content, message', [
    ('\n'.join(json.dumps(r) for r in PAIRS).encode('utf-16'), 'the file is UTF-16'),
    (gzip.compress(json.dumps(PAIRS[0]).encode(), mtime=0), 'the file is gzip-compressed; decompress it first'),
    (b'PAR1\x00\x00', 'the file is Parquet, not text; read it as Parquet'),
    (json.dumps(PAIRS[0]).encode('utf-16-le'), 'the file holds NUL bytes, so it is not UTF-8 text'),
])
def test_a_jsonl_file_in_another_format_is_named(tmp_path, capsys, content, message):
  path = tmp_path / 'other.jsonl'
  path.write_bytes(content)
  assert _build(tmp_path, input_path=path) == 1
  assert f'{path}: {message}' in _error(capsys)


def test_json_nested_too_deeply_is_a_bad_line(tmp_path, capsys):
  path = tmp_path / 'deep.jsonl'
  path.write_text('{"prompt": ' + '[' * 100_000 + ']' * 100_000 + '}\n' + json.dumps(PAIRS[0]) + '\n')
  assert _build(tmp_path, input_path=path) == 1
  assert _error(capsys) == ('error: deep.jsonl line 1: JSON nested too deeply to read (a record is an object of '
                            'strings and messages)')


def test_half_a_surrogate_pair_is_a_bad_record_not_a_crash(tmp_path, capsys):
  path = tmp_path / 'escapes.jsonl'
  path.write_text('{"prompt": "smile \\ud83d", "chosen": "c", "rejected": "r"}\n')
  assert _build(tmp_path, input_path=path) == 1
  assert _error(capsys) == ("error: escapes.jsonl line 1: field 'prompt' holds '\\ud83d' at character 6, half of a "
                            'UTF-16 surrogate pair, which is not text; write the character itself or its full pair '
                            'of escapes (e.g. \\ud83d\\ude00) at the source [fields: prompt, chosen, rejected]')
  assert not (tmp_path / 'data').exists()


def test_a_folder_where_a_file_is_expected(tmp_path, capsys):
  folder = tmp_path / 'raw'
  folder.mkdir()
  _jsonl(folder / 'pairs.jsonl', PAIRS)
  assert _build(tmp_path, input_path=folder) == 1
  assert (f'{folder}: no .parquet files there; a folder is read as Parquet shards: give a JSONL file itself, e.g. '
          f'{folder}/pairs.jsonl') in _error(capsys)
  assert _build(tmp_path, '--format=jsonl', input_path=folder) == 1
  assert f'{folder} is a folder, not a file' in _error(capsys)


def test_damaged_parquet_files(tmp_path, capsys):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  good = tmp_path / 'good.parquet'
  pq.write_table(pa.Table.from_pylist(PAIRS * 50), str(good), row_group_size=100)
  data = good.read_bytes()
  cut = tmp_path / 'cut.parquet'
  cut.write_bytes(data[:len(data) // 2])
  assert _build(tmp_path, input_path=cut) == 1
  assert _error(capsys).startswith('error: cut.parquet: not a readable Parquet file (Parquet magic bytes not found')
  (tmp_path / 'empty.parquet').write_bytes(b'')
  assert _build(tmp_path, input_path=tmp_path / 'empty.parquet') == 1
  assert 'the file is damaged or is not Parquet: download or write it again' in _error(capsys)
  assert not (tmp_path / 'data').exists()


def _cut(path: Path, size: int) -> None:
  path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize('damage, reason', [
    (lambda d: _cut(d / 'dataset_info.json', 100), 'ParseError: Failed to load JSON'),
    (lambda d: (d / 'kept-train.array_record-00000-of-00001').unlink(),
     'FileNotFoundError: no shard file kept-train.array_record-00000-of-00001'),
    (lambda d: _cut(d / 'kept-train.array_record-00000-of-00001', 300), 'RuntimeError: ArrayRecord file'),
    (lambda d: (d / 'features.json').unlink(), 'DatasetNotFoundError'),
])
def test_a_damaged_data_set_is_named_with_the_command_that_rebuilds_it(tmp_path, capsys, built, damage, reason):
  damage(tmp_path / 'data' / 'kept' / '1.0.0')
  data_dir = tmp_path / 'data'
  with pytest.raises(records.DataError, match=f"data set 'kept' in {data_dir} is damaged \\({reason}"):
    tfds_builders.read_split('kept', str(data_dir), 'train')
  assert _train(tmp_path, '--dataset=kept', f'--data_dir={data_dir}', f'--output={tmp_path}/tok') == 1
  assert _error(capsys).endswith(f'; build it again with `nlhf-data build --name=kept --data_dir={data_dir} '
                                 '--overwrite ...`')


def test_a_data_dir_that_is_a_data_set_itself_names_the_folder_above(tmp_path, built):
  with pytest.raises(records.DataError, match=f"no data set 'kept' in data_dir='{tmp_path}/data/kept' \\(that folder "
                                              f"is the data set 'kept' itself: data_dir is the folder above it, "
                                              f"{tmp_path}/data\\)"):
    tfds_builders.SplitSource('kept', str(tmp_path / 'data' / 'kept'), 'train')


# nlhf-tokenizer

def _train(tmp_path, *flags, inputs=None):
  """nlhf-tokenizer on `inputs` (default: a corpus of TEXTS, unless the flags give an --input)."""
  (tmp_path / 'corpus.txt').write_text('\n'.join(TEXTS) + '\n')
  if inputs is None:
    inputs = [] if any(f.startswith('--input') for f in flags) else [tmp_path / 'corpus.txt']
  return tokenizer_cli.main([*(f'--input={p}' for p in inputs), '--vocab_size=300', *flags])


def test_an_existing_model_is_replaced_only_with_overwrite(tmp_path, capsys):
  assert _train(tmp_path, f'--output={tmp_path}/tok') == 0
  capsys.readouterr()
  model = (tmp_path / 'tok.model').read_bytes()
  assert _train(tmp_path, f'--output={tmp_path}/tok', '--model_type=bpe') == 1
  assert _error(capsys) == (f'error: {tmp_path}/tok.model already exists; pass --overwrite to replace it, or '
                            'choose another path')
  assert (tmp_path / 'tok.model').read_bytes() == model
  assert _train(tmp_path, f'--output={tmp_path}/tok.model', '--model_type=bpe', '--overwrite') == 0  # PREFIX.model
  assert json.loads(capsys.readouterr().out)['model'] == f'{tmp_path}/tok.model'
  assert (tmp_path / 'tok.model').read_bytes() != model
  assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus.txt', 'tok.model']


def test_a_bad_input_with_overwrite_keeps_the_model(tmp_path, capsys):
  assert _train(tmp_path, f'--output={tmp_path}/tok') == 0
  model = (tmp_path / 'tok.model').read_bytes()
  (tmp_path / 'latin.txt').write_bytes(b'the fox\ncaf\xe9 au lait\n')
  assert _train(tmp_path, f'--output={tmp_path}/tok', '--overwrite',
                inputs=[tmp_path / 'corpus.txt', tmp_path / 'latin.txt']) == 1
  assert _error(capsys).startswith('error: latin.txt line 2: not UTF-8 (byte 0xe9 at column 4, byte offset 11 of '
                                   'the file); re-encode the file as UTF-8')
  assert (tmp_path / 'tok.model').read_bytes() == model


def test_a_model_write_cut_short_keeps_the_old_model(tmp_path, monkeypatch):
  assert _train(tmp_path, f'--output={tmp_path}/tok') == 0
  model = (tmp_path / 'tok.model').read_bytes()
  real_open = open

  class _DiskFull:
    """A binary file that takes half of what it is given, then fails as a full disk does."""
    def __init__(self, f):
      self._f = f
    def write(self, data):
      self._f.write(data[:len(data) // 2])
      raise OSError(28, 'No space left on device')
    def __getattr__(self, name):
      return getattr(self._f, name)
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      return self._f.__exit__(*exc)

  def full_disk_open(path, mode='r', *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    return _DiskFull(f) if 'w' in mode and 'tok' in str(path) else f
  monkeypatch.setattr('builtins.open', full_disk_open)
  with pytest.raises(OSError, match='No space left on device'):
    train_sentencepiece(TEXTS, 300, str(tmp_path / 'tok'), model_type='bpe')
  monkeypatch.undo()
  assert (tmp_path / 'tok.model').read_bytes() == model
  assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus.txt', 'tok.model']


@pytest.mark.parametrize('make, flags, message', [
    (None, ['--output={t}/out/'], "--output='{t}/out/' names a folder; give a prefix in it"),
    (None, ['--output={t}/corpus.txt/tok'], '{t}/corpus.txt is a file, not a folder'),
    (None, ['--output={t}/tok', '--vocab_size=100'], '--vocab_size=100 leaves no room for pieces: 261 ids are '
                                                     'reserved'),
    (None, ['--output={t}/tok', '--vocab_size=270'],  # one piece per character (space included), bytes, specials
     f"vocab_size=270 is smaller than the {len(set(''.join(TEXTS))) + 261} pieces this corpus needs"),
    (None, ['--output={t}/tok', '--input={t}/absent.jsonl'], '{t}/absent.jsonl: no such file'),
    (lambda t: (t / 'folder').mkdir(), ['--output={t}/tok', '--input={t}/folder/'], '{t}/folder/: no .parquet files'),
    (lambda t: (t / 'blank.txt').write_text('\n \n'), ['--output={t}/tok', '--input={t}/blank.txt'],
     'no text to train a tokenizer on'),
    (None, ['--output={t}/tok', '--dataset=demos'], '--dataset=demos needs --data_dir'),
    (None, ['--output={t}/tok', '--dataset=demos', '--data_dir={t}'], "no data set 'demos' in data_dir="),
    (lambda t: (t / 'h.jsonl').write_text('{"prompt": "\\udc00"}\n'), ['--output={t}/tok', '--input={t}/h.jsonl'],
     "h.jsonl line 1: field 'prompt' holds '\\udc00' at character 0, half of a UTF-16 surrogate pair"),
])
def test_tokenizer_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, make, flags, message):
  if make:
    make(tmp_path)
  before = _tree(tmp_path)
  assert _train(tmp_path, *(f.format(t=tmp_path) for f in flags)) == 1
  assert message.format(t=tmp_path) in _error(capsys)
  after = _tree(tmp_path)
  assert {k: v for k, v in after.items() if k != 'corpus.txt'} == {k: v for k, v in before.items()
                                                                    if k != 'corpus.txt'}


def test_lines_longer_than_sentencepieces_limit_are_trained_on(tmp_path, capsys):
  """sentencepiece skips sentences over 4192 bytes by default; a corpus of long lines used to train on nothing."""
  long = [' '.join([f'quokka{i % 3}'] * 700) for i in range(30)]  # 30 lines of about 5600 bytes
  (tmp_path / 'long.txt').write_text('\n'.join(long) + '\n')
  assert _train(tmp_path, f'--output={tmp_path}/tok', inputs=[tmp_path / 'long.txt']) == 0
  tok = load_tokenizer(json.loads(capsys.readouterr().out)['model'])
  assert len(tok.encode('quokka1')) <= 2


def test_jsonl_texts_give_a_sentence_a_line(tmp_path):
  path = _jsonl(tmp_path / 'm.jsonl', [{'prompt': 'line one\nline two\n\n', 'response': 'three'}])
  args = tokenizer_cli._parser().parse_args([f'--input={path}', '--output=x'])
  assert list(tokenizer_cli.texts(args)) == ['line one', 'line two', 'three']


# tokenizers of the wrong kind

def test_a_file_that_is_not_a_sentencepiece_model(tmp_path):
  (tmp_path / 'tok.model').write_text('{"not": "a model"}')
  with pytest.raises(TokenizerError, match=f'{tmp_path}/tok.model: not a sentencepiece model \\(.*could not parse '
                                           "ModelProto.*\\); give a .model file written by sentencepiece"):
    load_tokenizer(str(tmp_path / 'tok.model'))


def test_tokenizer_directory_files_that_are_not_utf8(tmp_path):
  (tmp_path / 'tokenizer_config.json').write_bytes(b'{"eos_token": "\xe9"}')
  with pytest.raises(TokenizerError, match=r'tokenizer_config.json: not UTF-8 \(byte 0xe9 at byte offset 15\); '
                                           're-encode it as UTF-8'):
    hf_tokenizer.read_json(str(tmp_path / 'tokenizer_config.json'))
  (tmp_path / 'generation_config.json').mkdir()
  with pytest.raises(TokenizerError, match='generation_config.json is a folder, not a file'):
    hf_tokenizer.read_json(str(tmp_path / 'generation_config.json'))


def test_an_empty_chat_template_file_is_refused(tmp_path):
  (tmp_path / 'chat_template.jinja').write_text('\n')
  with pytest.raises(TokenizerError, match='chat_template.jinja is empty .every prompt would render to nothing.; '
                                           'write the template there, or delete the file'):
    hf_tokenizer.load_template(str(tmp_path), {'chat_template': '{{ messages }}'})
