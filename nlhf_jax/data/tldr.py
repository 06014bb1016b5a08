"""Importer for the OpenAI summarize-from-feedback comparisons (TL;DR).

Each comparison looks like {'info': {'post': ..., 'title': ..., 'subreddit': ...}, 'summaries': [{'text': ...},
{'text': ...}], 'choice': 0 or 1}, where `choice` is the index of the preferred summary. It becomes a pair record
with response_a = summaries[0], response_b = summaries[1] and preference = 1 - choice (the probability that a is
preferred), keeping the order of the source so that position effects stay visible. Every comparison is checked
before failing; the error lists the first bad ones (readers.convert_all).
"""
from __future__ import annotations

import os

from nlhf_jax.data.readers import convert_all, iter_jsonl
from nlhf_jax.data.records import DataError, validate


def format_prompt(info: dict) -> str:
  """The summarisation prompt: subreddit and title when present, the post, then 'TL;DR:'."""
  parts = []
  if info.get('subreddit'):
    parts.append(f"SUBREDDIT: r/{info['subreddit']}")
  if info.get('title'):
    parts.append(f"TITLE: {info['title']}")
  parts.append(f"POST: {info['post']}")
  return '\n'.join(parts) + '\nTL;DR:'


def _require(obj, key, where: str, field: str, types):
  if not isinstance(obj, dict) or key not in obj:
    raise DataError(f'{where}: missing field {field!r}')
  value = obj[key]
  if not isinstance(value, types) or isinstance(value, bool):
    raise DataError(f'{where}: field {field!r} has the wrong type ({type(value).__name__})')
  return value


def comparison_to_pair(obj: dict, where: str = 'comparison') -> dict:
  """One TL;DR comparison -> one validated pair record."""
  info = _require(obj, 'info', where, 'info', dict)
  _require(info, 'post', where, 'info.post', str)
  summaries = _require(obj, 'summaries', where, 'summaries', list)
  if len(summaries) != 2:
    raise DataError(f"{where}: field 'summaries' must hold 2 summaries, got {len(summaries)}")
  texts = [_require(s, 'text', where, f'summaries[{i}].text', str) for i, s in enumerate(summaries)]
  choice = _require(obj, 'choice', where, 'choice', int)
  if choice not in (0, 1):
    raise DataError(f"{where}: field 'choice'={choice} must be 0 or 1")
  pair = {'prompt': format_prompt(info), 'response_a': texts[0].strip(), 'response_b': texts[1].strip(),
          'preference': float(1 - choice)}
  return validate(pair, 'pairs', where)


def read_comparisons(path: str, with_source: bool = False) -> list[dict]:
  """Reads a comparisons JSONL file (e.g. comparisons/batch*.json of summarize-from-feedback) into pairs
  (with 'source': 'FILE line N' when `with_source`)."""
  bad: list[str] = []
  convert = lambda obj, where: dict(comparison_to_pair(obj, where), **({'source': where} if with_source else {}))
  return convert_all(iter_jsonl(path, bad), convert, os.path.basename(path), bad)
