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

Building is quiet: TFDS's "Downloading and preparing dataset ..." lines are not printed (nothing is downloaded;
the caller reports what was built) and no downloads/ folder is left in data_dir. Opening a data set that is not
there names the data sets that data_dir holds.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from nlhf_jax.data.records import DataError, TEXT_FIELDS, check_kind, validate_all
from nlhf_jax.logs import progress_bar

VERSION = '1.0.0'
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


def build(records: list[dict], kind: str, name: str, data_dir: str, validation_fraction: float = 0.1,
          seed: int = 0, overwrite: bool = False) -> dict[str, int]:
  """Validates `records`, writes TFDS data set `name` under `data_dir`; returns the count of each split.

  A record's optional 'source' field (as `records.read_jsonl(..., with_source=True)` adds) is stored with it, so
  that errors found later (e.g. an over-long example) name the input file and line."""
  check_kind(kind)
  if not _NAME.match(name):
    raise DataError(f'data set name {name!r} must be lower-case snake_case (letters, digits, _)')
  sources = [r.get(SOURCE) if isinstance(r, dict) else None for r in records]
  records = [_storable(dict(r, source=src or f'{name} input record {i}'))
             for i, (r, src) in enumerate(zip(validate_all(records, kind, name), sources))]
  target = dataset_dir(name, data_dir)
  if os.path.exists(target):
    if not overwrite:
      raise DataError(f'{target} already exists; pass overwrite=True (--overwrite) to rebuild it')
    shutil.rmtree(target)
  splits = {s: [records[i] for i in idx] for s, idx in split_indices(len(records), validation_fraction,
                                                                      seed).items()}
  builder = _builder_class(name, kind)(splits=splits, data_dir=data_dir, file_format='array_record')
  with tempfile.TemporaryDirectory(prefix='nlhf_tfds_downloads_') as downloads:  # TFDS makes one; none is needed
    builder.download_and_prepare(download_dir=downloads)
  return {s: len(r) for s, r in splits.items()}


def _read_only_builder(name: str, data_dir: str):
  from tensorflow_datasets.core import read_only_builder
  if not os.path.exists(os.path.join(dataset_dir(name, data_dir), 'dataset_info.json')):
    raise DataError(f'no data set {name!r} in data_dir={data_dir!r} ({_holds(data_dir, name)}); build it with '
                    f'`nlhf-data build --kind=KIND --input=FILE.jsonl --name={name} --data_dir={data_dir}`')
  return read_only_builder.builder_from_files(name, data_dir=data_dir)


def available(data_dir: str) -> list[str]:
  """The names of the data sets (of this VERSION) built in `data_dir`, sorted."""
  if not data_dir or not os.path.isdir(data_dir):
    return []
  return sorted(n for n in os.listdir(data_dir) if os.path.exists(os.path.join(dataset_dir(n, data_dir),
                                                                               'dataset_info.json')))


def _holds(data_dir: str, name: str) -> str:
  """What data_dir holds, for the error about a missing data set `name`."""
  if not data_dir:
    return 'config.data.data_dir is empty'
  if not os.path.isdir(data_dir):
    return 'that folder does not exist'
  names = available(data_dir)
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
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitems__(self, indices) -> list[dict]:
    return [_decode(r) for r in self._source.__getitems__([int(i) for i in indices])]

  def __getitem__(self, index: int) -> dict:
    return _decode(self._source[int(index)])


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
