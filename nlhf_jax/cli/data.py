"""`nlhf-data build`: JSONL, Parquet or Arrow records (or TL;DR comparisons) -> a TFDS array_record data set.

  python -m nlhf_jax.cli.data build --kind=pairs --input=pairs.jsonl --name=my_pairs --data_dir=DIR \
      [--validation_fraction=0.1] [--seed=0] [--format=auto|jsonl|parquet|arrow|tldr] [--split=train] [--overwrite]

--input is a JSONL file, a .parquet file, a directory of .parquet shards or a glob of them ('data/*.parquet',
quoted), or a folder written by the Hugging Face `datasets` library's `save_to_disk` (Arrow; of a DatasetDict the
split --split names is read, 'train' by default); --format=auto (the default) reads Arrow for a folder holding
state.json or dataset_dict.json, Parquet for the other folders, .parquet files and globs, and JSONL otherwise.
Text fields may be strings or conversations (lists of {role, content} messages; see nlhf_jax/data/records.py).

Nothing is written or deleted before the options, the output and every input record have been checked; the data
set is built in a temporary folder and renamed into place, so an existing one (replaced only with --overwrite)
survives a refused or interrupted build (nlhf_jax/outputs.py).
"""
from __future__ import annotations

import argparse
import sys

from nlhf_jax.cli import common
from nlhf_jax.data import readers, records, tfds_builders, tldr


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='nlhf-data', description='Build the data sets that configs refer to.')
  sub = parser.add_subparsers(dest='command', required=True)
  build = sub.add_parser('build', help='JSONL, Parquet or Arrow -> TFDS data set (train and validation splits)')
  build.add_argument('--kind', choices=records.KINDS, default='pairs')
  build.add_argument('--input', required=True,
                     help='a JSONL file (one record a line), a .parquet file, a directory or glob of .parquet files, '
                          'or a folder written by datasets save_to_disk')
  build.add_argument('--format', choices=('auto', 'jsonl', 'parquet', 'arrow', 'tldr'), default='auto',
                     help="'auto': Arrow for a save_to_disk folder (state.json or dataset_dict.json), Parquet for "
                          "other directories, .parquet files and globs, else JSONL; "
                          "'tldr': OpenAI summarize-from-feedback comparisons (implies --kind=pairs)")
  build.add_argument('--split', default=None,
                     help="the split of a save_to_disk DatasetDict folder to read (default 'train')")
  build.add_argument('--name', required=True, help='the TFDS name that configs use (data.name)')
  build.add_argument('--data_dir', required=True, help='the TFDS data directory (data.data_dir)')
  build.add_argument('--validation_fraction', type=float, default=0.1)
  build.add_argument('--seed', type=int, default=0, help='seeds the train/validation split')
  build.add_argument('--overwrite', action='store_true', help='rebuild a data set that already exists')
  return parser


def _format(args: argparse.Namespace) -> str:
  """The input's format: --format, or with 'auto' what the path is (readers.input_format)."""
  return readers.input_format(args.input) if args.format == 'auto' else args.format


def check(args: argparse.Namespace) -> None:
  """Everything that can be checked before the input is read: the options and the output folder."""
  if args.format == 'tldr' and args.kind != 'pairs':
    raise records.DataError('--format=tldr makes pairs; use --kind=pairs')
  if not args.input:
    raise records.DataError('--input is empty; give a JSONL file, a .parquet file, or a folder or glob of them')
  if args.split is not None and _format(args) != 'arrow':
    raise records.DataError(f'--split={args.split} names a split of a `datasets` save_to_disk folder, and --input='
                            f'{args.input} is not one; drop --split')
  tfds_builders.check_options(args.kind, args.name, args.data_dir, args.validation_fraction, args.seed)
  tfds_builders.check_output(args.name, args.data_dir, args.overwrite)


def build(args: argparse.Namespace) -> dict[str, int]:
  """Checks the options and the output, reads and validates every input record, then builds the data set (an
  existing one is replaced only with --overwrite, once the new one is complete)."""
  check(args)
  fmt = _format(args)
  if fmt == 'tldr':
    recs = tldr.read_comparisons(args.input, with_source=True)
  elif fmt == 'arrow':
    recs = readers.read_arrow(args.input, args.kind, with_source=True, split=args.split or 'train')
  elif fmt == 'parquet':
    recs = readers.read_parquet(args.input, args.kind, with_source=True)
  else:
    recs = readers.read_jsonl(args.input, args.kind, with_source=True)
  return tfds_builders.build(recs, args.kind, args.name, args.data_dir, args.validation_fraction, args.seed,
                             args.overwrite)


def main(argv: list[str] | None = None) -> int:
  """Exit status 0, 1 after `error: ...` for bad input (nlhf_jax/cli/common.py guard), 2 for bad arguments."""
  return common.guard(_main, _parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
  counts = build(args)
  total = sum(counts.values())
  print(f'built {args.kind} data set {args.name!r} in {args.data_dir} ({total} examples)')
  for split, n in counts.items():
    print(f'  {split}: {n}')
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
