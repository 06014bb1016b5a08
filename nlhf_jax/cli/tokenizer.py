"""`nlhf-tokenizer`: trains a sentencepiece model (pad, bos, eos, '<sep>' reserved) for data.tokenizer.

  python -m nlhf_jax.cli.tokenizer --input=a.txt [--input=b.jsonl ...] --vocab_size=8000 --output=PREFIX
  python -m nlhf_jax.cli.tokenizer --dataset=NAME --data_dir=DIR --vocab_size=8000 --output=PREFIX

Text files (UTF-8) give one sentence a line; JSONL, Parquet and Arrow inputs (a .jsonl or .parquet file, a folder
or glob of .parquet files, a `datasets` save_to_disk folder: its 'train' split) and data sets give every line of every text field of every record (prompts and
responses; for conversations, the content of every message). Writes PREFIX.model (an --output that ends in
.model names the file itself).

Nothing is written before the options, the output and every input have been checked and read: an existing
PREFIX.model is replaced only with --overwrite, and the model is written under a temporary name and renamed into
place (nlhf_jax/outputs.py). Bad input ends in one `error:` line (exit status 1); a missing --input/--dataset in
exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator

from nlhf_jax import outputs
from nlhf_jax.cli import common
from nlhf_jax.data import readers, records, tfds_builders
from nlhf_jax.data.tokenizer import MIN_VOCAB_SIZE, SentencePieceTokenizer, TokenizerError, train_sentencepiece


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='nlhf-tokenizer', description=__doc__.split('\n')[0])
  parser.add_argument('--input', action='append', default=[],
                      help='a UTF-8 text file, a .jsonl or .parquet file, or a folder or glob of .parquet files '
                           '(repeatable)')
  parser.add_argument('--dataset', default='', help='a TFDS data set built by nlhf-data (its train split)')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--split', default='train')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--model_type', default='unigram', choices=('unigram', 'bpe'))
  parser.add_argument('--output', required=True, help='the model prefix: writes PREFIX.model')
  parser.add_argument('--overwrite', action='store_true', help='replace PREFIX.model when it exists')
  return parser


def model_path(output: str) -> str:
  """The file that --output names: PREFIX.model, or the value itself when it ends in .model."""
  if not output or output.endswith(('/', os.sep)):
    raise TokenizerError(f'--output={output!r} names a folder; give a prefix in it, e.g. '
                         f'--output={os.path.join(output or ".", "tok")} (writes {os.path.join(output, "tok")}.model)')
  return output if output.endswith('.model') else output + '.model'


def _is_structured(path: str) -> bool:
  return path.endswith('.jsonl') or readers.is_arrow(path) or readers.is_parquet(path)


def _check_input(path: str) -> None:
  if readers.is_arrow(path):
    readers.arrow_files(path)  # refuses a damaged folder or a missing shard
  elif readers.is_parquet(path):
    readers.parquet_files(path)  # refuses a missing file, or a folder or glob with no .parquet files
  elif not os.path.exists(path):
    raise records.DataError(f'{path}: no such file')
  elif os.path.isdir(path):
    raise records.DataError(f'{path} is a folder, not a file; give a text, .jsonl or .parquet file (a folder of '
                            '.parquet files is read as Parquet)')


def check(args: argparse.Namespace) -> str:
  """Checks the options, the output and that every input exists (before any input is read); returns the model
  file to write."""
  if args.vocab_size <= MIN_VOCAB_SIZE:
    raise TokenizerError(f'--vocab_size={args.vocab_size} leaves no room for pieces: {MIN_VOCAB_SIZE} ids are '
                         'reserved (pad, bos, eos, unk, <sep> and 256 byte pieces); use at least about 300')
  path = model_path(args.output)
  outputs.check_file(path, args.overwrite)
  for item in args.input:
    _check_input(item)
  if args.dataset:
    if not args.data_dir:
      raise records.DataError(f'--dataset={args.dataset} needs --data_dir (the folder that nlhf-data build wrote)')
    tfds_builders.SplitSource(args.dataset, args.data_dir, args.split)  # refuses a missing data set or split
  return path


def _value_texts(value) -> Iterator[str]:
  """A string, or the string contents of the messages of a conversation."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, list):
    yield from (m['content'] for m in value if isinstance(m, dict) and isinstance(m.get('content'), str))


def _record_texts(record: dict, where: str = '') -> Iterator[str]:
  """Every line of every text of a record (sentencepiece trains on sentences, a line each)."""
  for key, value in record.items():
    if key == 'preference':
      continue
    for text in _value_texts(value):
      if where:
        records.check_unicode(text, f'field {key!r}', where)
      yield from (line for line in text.splitlines() if line.strip())


def _file_texts(path: str) -> Iterator[str]:
  if _is_structured(path):
    for where, obj in readers.iter_objects(path):
      yield from _record_texts(obj, where) if isinstance(obj, dict) else ()
    return
  yield from (line for _, line in readers.iter_lines(path) if line.strip())


def texts(args: argparse.Namespace) -> Iterator[str]:
  for path in args.input:
    yield from _file_texts(path)
  if args.dataset:
    for record in tfds_builders.read_split(args.dataset, args.data_dir, args.split):
      yield from _record_texts(record)


def main(argv: list[str] | None = None) -> int:
  """Exit status 0, 1 after `error: ...` for bad input (nlhf_jax/cli/common.py guard), 2 for bad arguments."""
  args = _parser().parse_args(argv)
  if not args.input and not args.dataset:
    print('error: give --input=FILE (repeatable) or --dataset=NAME --data_dir=DIR', file=sys.stderr)
    return 2
  return common.guard(_main, args)


def _main(args: argparse.Namespace) -> int:
  path = check(args)
  corpus = list(texts(args))  # every input is read (and checked) before training starts
  path = train_sentencepiece(corpus, args.vocab_size, path[:-len('.model')], model_type=args.model_type)
  tok = SentencePieceTokenizer(path)
  print(json.dumps({'model': path, 'vocab_size': tok.vocab_size, 'pad_id': tok.pad_id, 'bos_id': tok.bos_id,
                    'eos_id': tok.eos_id, 'sep_id': tok.sep_id}))
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
