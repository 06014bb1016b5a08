"""The files that records come in: JSONL, Parquet and `datasets` save_to_disk folders (Arrow), read and validated
as the record kinds of data/records.py; and JSONL written by rename.

Every reader checks every record before failing: one bad record gives its message alone; several give one
DataError that counts them and lists the first MAX_LISTED, each with its line (JSONL, 1-based) or row (Parquet or
Arrow, 0-based), its message and the fields the record has.

Text files are UTF-8 (a leading byte-order mark is dropped): a line that is not UTF-8 is a bad record named by its
line and byte offset, with the fix (re-encode the file); a file that is UTF-16 (or starts with NUL bytes),
gzip-compressed or Parquet, or a folder where a file is wanted, is refused at once. A string that UTF-8 cannot
store (half of a surrogate pair, as a lone JSON escape such as \\ud83d gives) is a bad record too.

Inputs: a JSONL file; Parquet (a .parquet file, a folder of them searched recursively, or a glob); a folder that
the Hugging Face `datasets` library wrote with `save_to_disk` (read here with pyarrow alone): one split (state.json
listing its data-*.arrow files, Arrow IPC stream files) or a DatasetDict (dataset_dict.json listing its splits, one
such folder each), of which one split is read ('train' unless another is named). The columns are those of JSONL.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Iterable, Iterator

from nlhf_jax import outputs
from nlhf_jax.data.records import MAX_LISTED, DataError, check_kind, validate


_SIGNATURES = (  # what a file that is not text starts with, and what to do about it
    (b'\xff\xfe', 'is UTF-16 (it starts with a UTF-16 byte-order mark); re-encode it as UTF-8, e.g. '
                  '`iconv -f UTF-16 -t UTF-8 IN > OUT`'),
    (b'\xfe\xff', 'is UTF-16 (it starts with a UTF-16 byte-order mark); re-encode it as UTF-8, e.g. '
                  '`iconv -f UTF-16 -t UTF-8 IN > OUT`'),
    (b'\x1f\x8b', 'is gzip-compressed; decompress it first (`gunzip FILE`)'),
    (b'PAR1', 'is Parquet, not text; read it as Parquet (a .parquet name, or --format=parquet)'),
    (b'\xff\xff\xff\xff', 'is an Arrow stream (a data file of a `datasets` folder), not text; give the folder that '
                          '`save_to_disk` wrote, which holds it and its state.json'),
    (b'ARROW1', 'is an Arrow file, not text; write the records as JSONL or Parquet, or give the folder that '
                '`save_to_disk` wrote'),
)
_UTF8_BOM = b'\xef\xbb\xbf'


def _check_text_file(path: str, head: bytes) -> None:
  if os.path.isdir(path):
    raise DataError(f'{path} is a folder, not a file; give a JSONL or text file (a folder of .parquet files is read '
                    'as Parquet, a folder written by `datasets` save_to_disk as Arrow)')
  for signature, problem in _SIGNATURES:
    if head.startswith(signature):
      raise DataError(f'{path}: the file {problem}')
  if b'\x00' in head:
    raise DataError(f'{path}: the file holds NUL bytes, so it is not UTF-8 text (UTF-16 without a byte-order mark, '
                    'or a binary file); re-encode it as UTF-8, e.g. `iconv -f UTF-16LE -t UTF-8 IN > OUT`')


def not_utf8(where: str, raw: bytes, start: int, offset: int) -> str:
  """The message for a line whose byte `start` is not UTF-8 (`offset`: the line's byte offset in the file)."""
  return (f'{where}: not UTF-8 (byte 0x{raw[start]:02x} at column {start + 1}, byte offset {offset + start} of the '
          'file); re-encode the file as UTF-8 from its encoding, e.g. `iconv -f CP1252 -t UTF-8 IN > OUT`')


def display_name(path: str) -> str:
  """A file name as text, for messages and the stored 'source' (bytes of a name that are not UTF-8 become U+FFFD)."""
  return os.fsencode(path).decode('utf-8', 'replace')


def iter_lines(path: str, bad: list[str] | None = None) -> Iterator[tuple[str, str]]:
  """Yields ('FILE line N', text) for every line of a UTF-8 text file (N 1-based; the line ending removed; a UTF-8
  byte-order mark before the first line dropped). A line that is not UTF-8 raises DataError naming the line, its
  byte offset and the fix, or, when a `bad` list is given, has its message appended there and is skipped. A
  missing file, a folder, or a file that is UTF-16, gzip or Parquet raises DataError at once."""
  if not os.path.exists(path):
    raise DataError(f'{path}: no such file')
  name = display_name(os.path.basename(path))
  if os.path.isdir(path):
    _check_text_file(path, b'')
  with open(path, 'rb') as f:
    _check_text_file(path, f.read(8))
    f.seek(0)
    offset = 0
    for n, raw in enumerate(f, start=1):
      start = len(_UTF8_BOM) if n == 1 and raw.startswith(_UTF8_BOM) else 0
      try:
        text = raw[start:].decode('utf-8')
      except UnicodeDecodeError as e:
        message = not_utf8(f'{name} line {n}', raw, start + e.start, offset)
        if bad is None:
          raise DataError(message) from None
        bad.append(message)
        continue
      finally:
        offset += len(raw)
      yield f'{name} line {n}', text.rstrip('\r\n')


def iter_jsonl(path: str, bad: list[str] | None = None) -> Iterator[tuple[str, dict]]:
  """Yields (where, object) for every non-blank line; `where` is 'FILE line N' (1-based). A malformed line (bad
  JSON, or not UTF-8: see `iter_lines`) raises DataError, or, when a `bad` list is given, has its message appended
  there and is skipped."""
  for where, line in iter_lines(path, bad):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
      message = (f'{where}: malformed JSON ({e.msg} at column {e.colno})' if isinstance(e, json.JSONDecodeError)
                 else f'{where}: JSON nested too deeply to read (a record is an object of strings and messages)')
      if bad is None:
        raise DataError(message) from None
      bad.append(message)
      continue
    yield where, obj


def _with_fields(message: str, obj) -> str:
  if not isinstance(obj, dict):
    return message
  return f'{message} [fields: {", ".join(map(str, obj)) or "none"}]'


def bad_records_error(name: str, bad: list[str], total: int) -> DataError:
  """One error for the bad records of an input: a single one as its own message; several counted (of `total`),
  the first MAX_LISTED of them listed one a line."""
  if len(bad) == 1:
    return DataError(bad[0])
  shown = bad[:MAX_LISTED]
  which = f'the first {len(shown)}' if len(bad) > len(shown) else 'all of them'
  lines = '\n'.join(f'  {m}' for m in shown)
  return DataError(f'{name}: {len(bad)} of {total} records are bad ({which} below); fix them at the source\n{lines}')


def convert_all(items: Iterable[tuple[str, object]], convert, name: str, bad: list[str] | None = None) -> list:
  """[convert(obj, where) for every (where, obj)], checking them all: raises `bad_records_error` when any record
  (or, through the shared `bad` list, any line the reader skipped) is bad, 'NAME: no records' when there are none."""
  bad = [] if bad is None else bad
  out = []
  for where, obj in items:
    try:
      out.append(convert(obj, where))
    except DataError as e:
      bad.append(_with_fields(str(e), obj))
  if bad:
    raise bad_records_error(name, bad, len(out) + len(bad))
  if not out:
    raise DataError(f'{name}: no records (the input is empty or blank); give a file that holds records')
  return out


def _read(items: Iterable[tuple[str, dict]], kind: str, with_source: bool, name: str,
          bad: list[str] | None = None) -> list[dict]:
  check_kind(kind)
  convert = lambda obj, where: dict(validate(obj, kind, where), **({'source': where} if with_source else {}))
  return convert_all(items, convert, name, bad)


def read_jsonl(path: str, kind: str, with_source: bool = False) -> list[dict]:
  """Reads and validates a JSONL file of `kind` records (one JSON object a line; blank lines are skipped).
  With `with_source` each record also has 'source': 'FILE line N' (kept by the TFDS builder)."""
  check_kind(kind)
  bad: list[str] = []
  return _read(iter_jsonl(path, bad), kind, with_source, os.path.basename(path), bad)


def _is_glob(path: str) -> bool:
  return any(c in path for c in '*?[')


def is_parquet(path: str) -> bool:
  """Whether `path` names Parquet input: a .parquet file, a directory of them, or a glob pattern."""
  return path.endswith('.parquet') or os.path.isdir(path) or _is_glob(path)


def parquet_files(path: str) -> list[tuple[str, str]]:
  """(file, name used in messages) for a .parquet file, a directory (searched recursively) or a glob, sorted."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, '**', '*.parquet'), recursive=True))
    named = [(f, display_name(os.path.relpath(f, path))) for f in files]
  elif _is_glob(path):
    named = [(f, display_name(os.path.basename(f))) for f in sorted(glob.glob(path))]
  elif os.path.exists(path):
    named = [(path, display_name(os.path.basename(path)))]
  else:
    raise DataError(f'{path}: no such file')
  if not named:
    others = sorted(glob.glob(os.path.join(path, '*.json*'))) if os.path.isdir(path) else []
    hint = f'; a folder is read as Parquet shards: give a JSONL file itself, e.g. {others[0]}' if others else ''
    raise DataError(f'{path}: no .parquet files there{hint}')
  return named


def _table_rows(files, open_batches, what: str, fix: str) -> Iterator[tuple[str, dict]]:
  """(FILE row N, row) of every row of every (file, name) of `files`, whose record batches `open_batches(file)`
  gives (a context manager); an unreadable file is a DataError naming it, `what` it should be and the `fix`."""
  import pyarrow
  for file, name in files:
    n = 0
    try:
      with open_batches(file) as batches:
        for batch in batches:
          for row in batch.to_pylist():
            yield f'{name} row {n}', row
            n += 1
    except (pyarrow.ArrowException, OSError) as e:
      at = f' after row {n - 1}' if n else ''
      reason = ' '.join(str(e).split())
      raise DataError(f'{name}: not a readable {what} ({reason}){at}; {fix}') from None


def iter_parquet(path: str, batch_size: int = 1024) -> Iterator[tuple[str, dict]]:
  """Yields (where, row) for every row of the Parquet input; `where` is 'FILE row N' (0-based, per file).
  Lists of structs come back as lists of dicts."""
  import pyarrow.parquet as pq
  batches = lambda file: contextlib.nullcontext(pq.ParquetFile(file).iter_batches(batch_size=batch_size))
  return _table_rows(parquet_files(path), batches, 'Parquet file',
                     'the file is damaged or is not Parquet: download or write it again')


def read_parquet(path: str, kind: str, with_source: bool = False) -> list[dict]:
  """Reads and validates Parquet rows of `kind` (a file, a directory of shards or a glob); extra columns are
  dropped. With `with_source` each record also has 'source': 'FILE row N'."""
  check_kind(kind)
  return _read(iter_parquet(path), kind, with_source, path)


ARROW_STATE = 'state.json'  # what `datasets` save_to_disk writes beside a split's data-*.arrow files
ARROW_SPLITS = 'dataset_dict.json'  # and beside the split folders of a DatasetDict


def is_arrow(path: str) -> bool:
  """Whether `path` is a folder written by `datasets` save_to_disk: one split (state.json, dataset_info.json and
  data-*.arrow files) or a DatasetDict (dataset_dict.json and one such folder per split)."""
  return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in (ARROW_STATE, ARROW_SPLITS))


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f'{path}: not a readable {what} ({" ".join(str(e).split())}); save the data set again with '
                    '`save_to_disk`') from None
  if not isinstance(value, dict):
    raise DataError(f'{path}: not a readable {what} (a JSON object is expected); save the data set again')
  return value


def arrow_split_dir(path: str, split: str = 'train') -> str:
  """The folder of the split `split` of a save_to_disk folder: `path` itself for one split (whose name is not
  checked), PATH/SPLIT for a DatasetDict, whose dataset_dict.json must list `split`."""
  splits_file = os.path.join(path, ARROW_SPLITS)
  if not os.path.isfile(splits_file):
    return path
  splits = _read_json(splits_file, 'dataset_dict.json').get('splits')
  if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
    raise DataError(f"{splits_file}: 'splits' must be a list of split names; save the data set again")
  if split not in splits:
    raise DataError(f'{path}: no split {split!r} in this datasets folder (its splits: {", ".join(splits) or "none"});'
                    ' choose one with --split=NAME')
  folder = os.path.join(path, split)
  if not os.path.isfile(os.path.join(folder, ARROW_STATE)):
    raise DataError(f'{folder}: no {ARROW_STATE}, so the split {split!r} is missing or incomplete; save the data set '
                    'again with `save_to_disk`')
  return folder


def arrow_files(path: str, split: str = 'train') -> list[tuple[str, str]]:
  """(file, name used in messages) of the Arrow shards of a split of a save_to_disk folder, in the order its
  state.json lists them (the order `datasets` reads them in)."""
  if not os.path.exists(path):
    raise DataError(f'{path}: no such file')
  if not is_arrow(path):
    raise DataError(f'{path} is not a folder written by `datasets` save_to_disk (it holds no {ARROW_STATE} or '
                    f'{ARROW_SPLITS}); give that folder, or drop --format=arrow')
  folder = arrow_split_dir(path, split)
  state_file = os.path.join(folder, ARROW_STATE)
  files = _read_json(state_file, ARROW_STATE).get('_data_files')
  if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get('filename'), str)
                                            for f in files):
    raise DataError(f"{state_file}: '_data_files' must be a list of {{'filename': ...}}; save the data set again")
  named = []
  for entry in files:
    file = os.path.join(folder, entry['filename'])
    name = display_name(os.path.relpath(file, path))
    if not os.path.isfile(file):
      raise DataError(f'{path}: {name}, listed in {ARROW_STATE}, is missing; copy the whole folder that '
                      '`save_to_disk` wrote')
    named.append((file, name))
  if not named:
    raise DataError(f'{state_file} lists no data files; save the data set again with `save_to_disk`')
  return named


def iter_arrow(path: str, split: str = 'train') -> Iterator[tuple[str, dict]]:
  """Yields (where, row) for every row of a split of a save_to_disk folder (Arrow IPC stream files); `where` is
  'FILE row N' (0-based, per file, FILE relative to `path`). Lists of structs come back as lists of dicts."""
  import pyarrow

  @contextlib.contextmanager
  def batches(file):
    with pyarrow.OSFile(file, 'rb') as source, pyarrow.ipc.open_stream(source) as reader:
      yield reader
  return _table_rows(arrow_files(path, split), batches, 'Arrow stream file',
                     'the file is damaged or was not written by `save_to_disk`: write it again')


def read_arrow(path: str, kind: str, with_source: bool = False, split: str = 'train') -> list[dict]:
  """Reads and validates the rows of `kind` of a split of a save_to_disk folder (see `arrow_split_dir`); extra
  columns are dropped. With `with_source` each record also has 'source': 'FILE row N'."""
  check_kind(kind)
  return _read(iter_arrow(path, split), kind, with_source, path)


def input_format(path: str) -> str:
  """'arrow' for a save_to_disk folder, 'parquet' for Parquet input (`is_parquet`), else 'jsonl'."""
  return 'arrow' if is_arrow(path) else 'parquet' if is_parquet(path) else 'jsonl'


def read_records(path: str, kind: str, with_source: bool = False, split: str = 'train') -> list[dict]:
  """JSONL, Parquet or save_to_disk records, as `input_format(path)` says (`split`: a DatasetDict's split)."""
  fmt = input_format(path)
  if fmt == 'arrow':
    return read_arrow(path, kind, with_source, split)
  return (read_parquet if fmt == 'parquet' else read_jsonl)(path, kind, with_source)


def iter_objects(path: str) -> Iterator[tuple[str, dict]]:
  """(where, object) of every record of a JSONL, Parquet or save_to_disk input ('train' split), unvalidated."""
  fmt = input_format(path)
  return iter_arrow(path) if fmt == 'arrow' else iter_parquet(path) if fmt == 'parquet' else iter_jsonl(path)


def write_jsonl(path: str, records: Iterable[dict]) -> None:
  """One JSON object a line, in UTF-8, written by rename (nlhf_jax/outputs.py): an interrupted write leaves no half
  file."""
  with outputs.replacing_file(path, 'wb') as f:
    for r in records:
      f.write((json.dumps(r, ensure_ascii=False) + '\n').encode('utf-8'))
