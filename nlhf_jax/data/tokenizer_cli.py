"""`nlhf-tokenizer`: trains a sentencepiece model (pad, bos, eos, '<sep>' reserved) for data.tokenizer.

  python -m nlhf_jax.data.tokenizer_cli --input=a.txt [--input=b.jsonl ...] --vocab_size=8000 --output=PREFIX
  python -m nlhf_jax.data.tokenizer_cli --dataset=NAME --data_dir=DIR --vocab_size=8000 --output=PREFIX

Text files give one sentence a line; JSONL and Parquet files (.jsonl, .parquet) and data sets give every text
field of every record (prompts and responses; for conversations, the content of every message). Writes
PREFIX.model.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator

from nlhf_jax.data import records, tfds_builders
from nlhf_jax.data.tokenizer import TokenizerError, load_tokenizer, train_sentencepiece


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='nlhf-tokenizer', description=__doc__.split('\n')[0])
  parser.add_argument('--input', action='append', default=[],
                      help='a text, .jsonl or .parquet file (repeatable)')
  parser.add_argument('--dataset', default='', help='a TFDS data set built by nlhf-data (its train split)')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--split', default='train')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--model_type', default='unigram', choices=('unigram', 'bpe'))
  parser.add_argument('--output', required=True, help='the model prefix: writes PREFIX.model')
  return parser


def _value_texts(value) -> Iterator[str]:
  """A string, or the string contents of the messages of a conversation."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, list):
    yield from (m['content'] for m in value if isinstance(m, dict) and isinstance(m.get('content'), str))


def _record_texts(record: dict) -> Iterator[str]:
  for key, value in record.items():
    if key != 'preference':
      yield from _value_texts(value)


def _file_texts(path: str) -> Iterator[str]:
  if path.endswith('.jsonl') or path.endswith('.parquet'):
    for _, obj in records.iter_objects(path):
      yield from _record_texts(obj) if isinstance(obj, dict) else ()
    return
  with open(path, encoding='utf-8') as f:
    yield from (line.rstrip('\n') for line in f if line.strip())


def texts(args: argparse.Namespace) -> Iterator[str]:
  for path in args.input:
    yield from _file_texts(path)
  if args.dataset:
    for record in tfds_builders.read_split(args.dataset, args.data_dir, args.split):
      yield from _record_texts(record)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if not args.input and not args.dataset:
    print('error: give --input=FILE (repeatable) or --dataset=NAME --data_dir=DIR', file=sys.stderr)
    return 2
  try:
    path = train_sentencepiece(texts(args), args.vocab_size, args.output, model_type=args.model_type)
    tok = load_tokenizer(path)
  except (records.DataError, TokenizerError, RuntimeError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps({'model': path, 'vocab_size': tok.vocab_size, 'pad_id': tok.pad_id, 'bos_id': tok.bos_id,
                    'eos_id': tok.eos_id, 'sep_id': tok.sep_id}))
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
