"""TFDS data sets of prompts, demonstrations or preference pairs, stored as array_record files.

Building and reading need no TensorFlow: the builder writes array_record shards plus dataset_info.json, and
readers open them as random-access data sources (`tfds.data_source(name, data_dir=...)` works too, as long
as `name` is not also the name of a data set in the TFDS catalogue). Configs refer to a data set by its
name and data_dir. Examples keep the order of the input within each split; the train/validation split is a
permutation seeded by `seed`.

Every text field is a Text feature. A conversation (a list of {'role', 'content'} messages) is stored as its
JSON text, and the per-example feature 'conversation_fields' names those fields (comma-separated, '' when
none); readers turn them back into message lists. Like 'source' (where the example came from), it is not a
field of the record kind. Data sets built before conversations existed have neither and read as before.

Building checks the options, the output folder and every record before it writes anything, writes the data set
into a temporary folder beside DATA_DIR/NAME/VERSION and renames it into place (nlhf_jax/outputs.py): an existing
data set is replaced only with `overwrite`, and only once the new one is complete; a failed or interrupted build
leaves what was there as it was.

Building is quiet: TFDS's "Downloading and preparing dataset ..." lines are not printed (nothing is downloaded;
the caller reports what was built) and no downloads/ folder is left in data_dir. Opening a data set that is not
there names the data sets that data_dir holds; one whose files are missing or unreadable is named as damaged, with the
command that builds it again.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import tempfile
from typing import Iterator

import numpy as np

from nlhf_jax import outputs
from nlhf_jax.data.records import DataError, TEXT_FIELDS, check_kind, validate_all
from nlhf_jax.logs import progress_bar

VERSION = '1.0.0'
INFO_FILE = 'dataset_info.json'
SOURCE = 'source'
CONVERSATION_FIELDS = 'conversation_fields'
BOOKKEEPING = (SOURCE, CONVERSATION_FIELDS)  # per-example features that are not fields of a record kind
_NAME = re.compile(r'^[a-z][a-z0-9_]*$')


def split_indices(num_examples: int, validation_fraction: float, seed: int) -> dict[str, np.ndarray]:
  """Deterministic train/validation split of range(num_examples), each in increasing order."""
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f'validation_fraction={validation_fraction} must be in [0, 1)')
  n_val = int(round(num_examples * validation_fraction))
  if validation_fraction > 0 and num_examples > 1:
    n_val = min(max(n_val, 1), num_examples - 1)
  perm = np.random.default_rng(seed).permutation(num_examples)
  splits = {'train': np.sort(perm[n_val:]), 'validation': np.sort(perm[:n_val])}
  return {k: v for k, v in splits.items() if len(v)}


def _features(kind: str):
  import tensorflow_datasets as tfds
  feats = {f: tfds.features.Text() for f in TEXT_FIELDS[kind]}
  if kind == 'pairs':
    feats['preference'] = tfds.features.Scalar(np.float32)
  feats[SOURCE] = tfds.features.Text()  # where the example came from ('pairs.jsonl line 17'), for messages
  feats[CONVERSATION_FIELDS] = tfds.features.Text()  # the text fields stored as JSON conversations
  return tfds.features.FeaturesDict(feats)


def _storable(record: dict) -> dict:
  """A validated record with its conversations as JSON text, named in CONVERSATION_FIELDS."""
  chats = [k for k, v in record.items() if isinstance(v, list)]
  out = {k: json.dumps(v, ensure_ascii=False) if k in chats else v for k, v in record.items()}
  out[CONVERSATION_FIELDS] = ','.join(chats)
  return out


def _builder_class(name: str, kind: str):
  """A GeneratorBasedBuilder named `name` that writes the in-memory splits it is given (not registered)."""
  import tensorflow_datasets as tfds

  class _RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(globals()['VERSION'])

    def __init__(self, *, splits: dict[str, list[dict]], **kwargs):
      self._splits = splits
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=_features(kind), disable_shuffling=True,
                                   description=f'nlhf_jax {kind} records')

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(recs) for split, recs in self._splits.items()}

    def _generate_examples(self, recs):
      for i, r in enumerate(progress_bar(recs, 'writing examples', total=len(recs), unit='example')):
        yield i, r

    def _log_download_bytes(self):  # "Downloading and preparing dataset Unknown size ...": nothing is downloaded
      pass

    def _log_download_done(self):
      pass

  return type(f'Builder_{name}', (_RecordsBuilder,), {'name': name}, skip_registration=True)


def dataset_dir(name: str, data_dir: str) -> str:
  return os.path.join(data_dir, name, VERSION)


def check_options(kind: str, name: str, data_dir: str, validation_fraction: float, seed: int) -> None:
  """Refuses options that `build` cannot use; cheap, so commands call it before reading any input."""
  check_kind(kind)
  if not _NAME.match(name):
    raise DataError(f'data set name {name!r} (--name) must be lower-case snake_case (letters, digits, _), starting '
                    'with a letter')
  if not data_dir:
    raise DataError('--data_dir is empty; give the folder that holds the data sets (data.data_dir in configs)')
  if not 0.0 <= validation_fraction < 1.0:
    raise DataError(f'--validation_fraction={validation_fraction} must be in [0, 1): the share of the examples '
                    'held out for validation')
  if seed < 0:
    raise DataError(f'--seed={seed} must be a non-negative integer')


def check_output(name: str, data_dir: str, overwrite: bool = False) -> str:
  """The folder that data set `name` will occupy, after refusing one that exists (unless `overwrite`) and a file
  where a folder is needed; cheap, so commands call it before reading any input."""
  target = dataset_dir(name, data_dir)
  for folder in (data_dir, os.path.dirname(target)):
    outputs.check_dir(folder)
  if os.path.lexists(target) and not os.path.isdir(target):
    raise outputs.OutputError(f'{target} is a file, not a data set folder; remove it, or choose another --name or '
                              '--data_dir')
  if os.path.lexists(target) and not overwrite:
    what = (f'data set {name!r} already exists in {data_dir}' if os.path.exists(os.path.join(target, INFO_FILE))
            else f'{target} already exists but holds no complete data set (no {INFO_FILE})')
    raise outputs.OutputError(f'{what}; pass --overwrite (overwrite=True) to replace it, or choose another --name')
  return target


def build(records: list[dict], kind: str, name: str, data_dir: str, validation_fraction: float = 0.1,
          seed: int = 0, overwrite: bool = False) -> dict[str, int]:
  """Validates the options, the output and every record, then writes TFDS data set `name` under `data_dir`;
  returns the count of each split.

  The data set is written whole into a temporary folder beside its place and renamed into place
  (nlhf_jax/outputs.py): an existing one (replaced only with `overwrite`) is removed after the new one is
  complete, and a build that fails or is interrupted leaves the old one as it was and no folder of its own.
  A record's optional 'source' field (as `readers.read_jsonl(..., with_source=True)` adds) is stored with it, so
  that errors found later (e.g. an over-long example) name the input file and line."""
  check_options(kind, name, data_dir, validation_fraction, seed)
  target = check_output(name, data_dir, overwrite)
  sources = [r.get(SOURCE) if isinstance(r, dict) else None for r in records]
  records = [_storable(dict(r, source=src or f'{name} input record {i}'))
             for i, (r, src) in enumerate(zip(validate_all(records, kind, name), sources))]
  splits = {s: [records[i] for i in idx] for s, idx in split_indices(len(records), validation_fraction,
                                                                      seed).items()}
  with _made_folders(data_dir, os.path.dirname(target)), outputs.building_dir(target) as tmp:
    _write(splits, kind, name, tmp)
  return {s: len(r) for s, r in splits.items()}


def _write(splits: dict[str, list[dict]], kind: str, name: str, folder: str) -> None:
  """Writes the data set's files (shards, dataset_info.json, features.json) straight into `folder`, an empty one."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # its bars would name the temporary folder; our own bar counts the examples
  scratch = os.path.join(folder, name)  # TFDS writes DATA_DIR/NAME/VERSION; DATA_DIR is `folder` here
  builder = _builder_class(name, kind)(splits=splits, data_dir=folder, file_format='array_record')
  with tempfile.TemporaryDirectory(prefix='nlhf_tfds_downloads_') as downloads:  # TFDS makes one; none is needed
    builder.download_and_prepare(download_dir=downloads)
  built = os.path.join(scratch, VERSION)
  for entry in os.listdir(built):
    os.replace(os.path.join(built, entry), os.path.join(folder, entry))
  shutil.rmtree(scratch)


@contextlib.contextmanager
def _made_folders(*folders: str) -> Iterator[None]:
  """Removes those of `folders` (outermost first in the arguments) that did not exist before and are empty after
  a failure, so that a failed build leaves nothing behind."""
  new = [f for f in folders if not os.path.exists(f)]
  try:
    yield
  except BaseException:
    for folder in reversed(new):
      with contextlib.suppress(OSError):
        os.rmdir(folder)
    raise


def _read_only_builder(name: str, data_dir: str):
  from tensorflow_datasets.core import read_only_builder
  if not os.path.exists(os.path.join(dataset_dir(name, data_dir), INFO_FILE)):
    raise DataError(f'no data set {name!r} in data_dir={data_dir!r} ({_holds(data_dir, name)}); build it with '
                    f'`nlhf-data build --kind=KIND --input=FILE.jsonl --name={name} --data_dir={data_dir}`')
  try:
    return read_only_builder.builder_from_files(name, data_dir=data_dir)
  except Exception as e:  # TFDS and protobuf raise their own kinds for unreadable metadata
    raise damaged(name, data_dir, e) from None


def damaged(name: str, data_dir: str, e: BaseException) -> DataError:
  """The error for a data set whose files are missing or unreadable."""
  reason = ' '.join(str(e).split())
  reason = reason if len(reason) <= 200 else reason[:200] + '...'
  return DataError(f'data set {name!r} in {data_dir} is damaged ({type(e).__name__}: {reason}); build it again with '
                   f'`nlhf-data build --name={name} --data_dir={data_dir} --overwrite ...`')


def available(data_dir: str) -> list[str]:
  """The names of the data sets (of this VERSION) built in `data_dir`, sorted."""
  if not data_dir or not os.path.isdir(data_dir):
    return []
  return sorted(n for n in os.listdir(data_dir) if os.path.exists(os.path.join(dataset_dir(n, data_dir), INFO_FILE)))


def _holds(data_dir: str, name: str) -> str:
  """What data_dir holds, for the error about a missing data set `name`."""
  if not data_dir:
    return 'config.data.data_dir is empty'
  if not os.path.isdir(data_dir):
    return 'that folder does not exist'
  names = available(data_dir)
  if not names and os.path.exists(os.path.join(data_dir, VERSION, INFO_FILE)):
    parent = os.path.dirname(os.path.abspath(data_dir))
    return (f'that folder is the data set {os.path.basename(os.path.abspath(data_dir))!r} itself: data_dir is the '
            f'folder above it, {parent}')
  if not names:
    return 'it holds no data sets'
  close = difflib.get_close_matches(name, names, n=1)
  return f'it holds {", ".join(names)}' + (f'; did you mean {close[0]!r}?' if close else '')


def kind_of(feature_names) -> str:
  """The record kind whose fields are exactly `feature_names`."""
  names = set(feature_names) - set(BOOKKEEPING)
  for kind in TEXT_FIELDS:
    if names == set(TEXT_FIELDS[kind]) | ({'preference'} if kind == 'pairs' else set()):
      return kind
  raise DataError(f'features {sorted(names)} match no record kind')


class SplitSource:
  """Random access to one split as validated-shape record dicts: text decoded to str, conversations to lists of
  messages, plus 'source'."""

  def __init__(self, name: str, data_dir: str, split: str):
    builder = _read_only_builder(name, data_dir)
    if split not in builder.info.splits:
      raise DataError(f'data set {name!r} has no split {split!r} (it has {", ".join(builder.info.splits)})')
    self.name = f'{name}[{split}]'
    self.kind = kind_of(builder.info.features.keys())
    self._where = (name, data_dir)
    missing = [os.path.basename(str(p)) for p in builder.info.splits[split].filepaths if not os.path.exists(p)]
    if missing:
      raise damaged(name, data_dir, FileNotFoundError(f'no shard file {", ".join(missing)}'))
    try:
      self._source = builder.as_data_source(split=split)
    except Exception as e:  # array_record raises RuntimeError for a shard it cannot open
      raise damaged(name, data_dir, e) from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitems__(self, indices) -> list[dict]:
    try:
      examples = self._source.__getitems__([int(i) for i in indices])
    except RuntimeError as e:  # a shard cut short or overwritten
      raise damaged(*self._where, e) from None
    return [_decode(r) for r in examples]

  def __getitem__(self, index: int) -> dict:
    return self.__getitems__([index])[0]


def _decode(example: dict) -> dict:
  out = {k: v.decode('utf-8') if isinstance(v, bytes) else float(v) for k, v in example.items()}
  chats = out.pop(CONVERSATION_FIELDS, '')
  for field in filter(None, chats.split(',')):
    out[field] = json.loads(out[field])
  return out


def read_split(name: str, data_dir: str, split: str, with_source: bool = False) -> list[dict]:
  """The whole split, in order (for inspection, tests and tokenizer training); the records' fields only,
  unless `with_source` (then also where each came from)."""
  src = SplitSource(name, data_dir, split)
  recs = src.__getitems__(range(len(src)))
  return recs if with_source else [{k: v for k, v in r.items() if k != SOURCE} for r in recs]


def split_counts(name: str, data_dir: str) -> dict[str, int]:
  return {s: int(info.num_examples) for s, info in _read_only_builder(name, data_dir).info.splits.items()}
