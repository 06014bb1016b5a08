"""The three record kinds of the data layer and their validation.

- prompts: {'prompt'}
- demonstrations: {'prompt', 'response'}
- pairs: {'prompt', 'response_a', 'response_b', 'preference'}, where `preference` is the probability that
  response_a is preferred (0/1 or soft). A pair may instead be written {'prompt', 'chosen', 'rejected'}, which
  reads as response_a=chosen, response_b=rejected, preference=1.

Bad input raises `DataError` naming the file, the line and the field, so that a broken data set is fixed at
the source instead of silently skipped.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Iterator

KINDS = ('prompts', 'demonstrations', 'pairs')
TEXT_FIELDS = {
    'prompts': ('prompt',),
    'demonstrations': ('prompt', 'response'),
    'pairs': ('prompt', 'response_a', 'response_b'),
}


class DataError(ValueError):
  """A data file or record that cannot be used, with where and why."""


def fields(kind: str) -> tuple[str, ...]:
  """The fields of a validated record of `kind`, in order."""
  check_kind(kind)
  return TEXT_FIELDS[kind] + (('preference',) if kind == 'pairs' else ())


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise DataError(f'unknown record kind {kind!r}; choose one of {", ".join(KINDS)}')


def _fail(where: str, message: str):
  raise DataError(f'{where}: {message}')


def _text(record: dict, field: str, where: str, allow_empty: bool) -> str:
  if field not in record:
    _fail(where, f'missing field {field!r}')
  value = record[field]
  if not isinstance(value, str):
    _fail(where, f'field {field!r} must be a string, got {type(value).__name__} {value!r:.40}')
  if not allow_empty and not value.strip():
    _fail(where, f'field {field!r} is empty')
  return value


def _preference(record: dict, where: str) -> float:
  if 'preference' not in record:
    _fail(where, "missing field 'preference'")
  value = record['preference']
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    _fail(where, f"field 'preference'={value!r:.40} must be a number in [0, 1]")
  if not math.isfinite(value) or not 0.0 <= value <= 1.0:
    _fail(where, f"field 'preference'={value!r} must be in [0, 1]")
  return float(value)


def _normalise_pair(record: dict, where: str) -> dict:
  """Maps the chosen/rejected spelling onto response_a/response_b/preference."""
  has_cr = 'chosen' in record or 'rejected' in record
  has_ab = 'response_a' in record or 'response_b' in record
  if has_cr and has_ab:
    _fail(where, "a pair has either 'response_a'/'response_b'/'preference' or 'chosen'/'rejected', not both")
  if not has_cr:
    return record
  if 'preference' in record:
    _fail(where, "field 'preference' is not allowed with 'chosen'/'rejected' (chosen is preferred)")
  out = {k: v for k, v in record.items() if k not in ('chosen', 'rejected')}
  out['response_a'] = _text(record, 'chosen', where, allow_empty=False)
  out['response_b'] = _text(record, 'rejected', where, allow_empty=False)
  out['preference'] = 1.0
  return out


def validate(record, kind: str, where: str = 'record') -> dict:
  """Returns the record of `kind` with exactly its fields; raises DataError naming `where` and the field.

  Prompts must be non-empty strings; responses must be non-empty (an empty response cannot be scored).
  """
  check_kind(kind)
  if not isinstance(record, dict):
    _fail(where, f'a record must be a JSON object, got {type(record).__name__}')
  if kind == 'pairs':
    record = _normalise_pair(record, where)
  out = {f: _text(record, f, where, allow_empty=False) for f in TEXT_FIELDS[kind]}
  if kind == 'pairs':
    out['preference'] = _preference(record, where)
  return out


def validate_all(records: Iterable, kind: str, name: str = 'records') -> list[dict]:
  """Validates in-memory records; errors name `name` and the record index."""
  return [validate(r, kind, f'{name} record {i}') for i, r in enumerate(records)]


def iter_jsonl(path: str) -> Iterator[tuple[str, dict]]:
  """Yields (where, object) for every non-blank line; `where` is 'FILE line N' (1-based)."""
  if not os.path.exists(path):
    raise DataError(f'{path}: no such file')
  name = os.path.basename(path)
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f'{name} line {n}'
      try:
        yield where, json.loads(line.rstrip('\r\n'))
      except json.JSONDecodeError as e:
        raise DataError(f'{where}: malformed JSON ({e.msg} at column {e.colno})') from None


def read_jsonl(path: str, kind: str, with_source: bool = False) -> list[dict]:
  """Reads and validates a JSONL file of `kind` records (one JSON object a line; blank lines are skipped).
  With `with_source` each record also has 'source': 'FILE line N' (kept by the TFDS builder)."""
  check_kind(kind)
  out = [dict(validate(obj, kind, where), **({'source': where} if with_source else {}))
         for where, obj in iter_jsonl(path)]
  if not out:
    raise DataError(f'{os.path.basename(path)}: no records')
  return out


def write_jsonl(path: str, records: Iterable[dict]) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')
