"""The three record kinds of the data layer and their validation (the files they come in: data/readers.py).

- prompts: {'prompt'}
- demonstrations: {'prompt', 'response'}
- pairs: {'prompt', 'response_a', 'response_b', 'preference'}, where `preference` is the probability that
  response_a is preferred (0/1 or soft). A pair may instead be written {'prompt', 'chosen', 'rejected'}, which
  reads as response_a=chosen, response_b=rejected, preference=1.

A text field is a string or a conversation: a non-empty list of messages {'role', 'content'} (role one of
system, user, assistant, tool; content a string; other keys of a message are dropped). A response that is a
conversation starts with an assistant message. Conversations may also come in these forms:
- pairs with no 'prompt' (the implicit-prompt form): chosen/rejected (or response_a/response_b) are whole
  conversations; the prompt is their longest common run of leading messages (non-empty), each response is the
  rest (non-empty, starting with an assistant message). Responses that start with a non-assistant message are
  whole conversations even when a 'prompt' is given too; that prompt must then be their shared start (as
  messages, or as the text of its last user message).
- demonstrations with 'messages' instead of prompt/response: the last message (an assistant one) is the response,
  the messages before it the prompt; 'completion' may stand for 'response'.

Validated records hold exactly their fields: strings, or lists of {'role', 'content'} dicts. Bad input raises
`DataError` naming the file, the line (JSONL, 1-based) or row (Parquet or Arrow, 0-based), the field and, for a
message, its index, so that a broken data set is fixed at the source instead of silently skipped. The file readers
(data/readers.py) check every record before failing and list the first MAX_LISTED bad ones.
"""
from __future__ import annotations

import math
from typing import Iterable


KINDS = ('prompts', 'demonstrations', 'pairs')
TEXT_FIELDS = {
    'prompts': ('prompt',),
    'demonstrations': ('prompt', 'response'),
    'pairs': ('prompt', 'response_a', 'response_b'),
}
RESPONSE_FIELDS = ('response', 'response_a', 'response_b', 'chosen', 'rejected')
ROLES = ('system', 'user', 'assistant', 'tool')
MAX_LISTED = 10  # bad records a reader's error lists


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


def check_unicode(text: str, at: str, where: str) -> None:
  """Refuses a string that UTF-8 cannot store: half of a surrogate pair, as a JSON escape such as \\ud83d alone
  gives."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    _fail(where, f'{at} holds {text[e.start]!r} at character {e.start}, half of a UTF-16 surrogate pair, which is not '
                 'text; write the character itself or its full pair of escapes (e.g. \\ud83d\\ude00) at the source')


def _message(value, field: str, index: int, where: str) -> dict:
  at = f'field {field!r} message {index}'
  if not isinstance(value, dict):
    _fail(where, f"{at} must be an object with 'role' and 'content', got {type(value).__name__} {value!r:.40}")
  for key in ('role', 'content'):
    if value.get(key) is None:
      _fail(where, f'{at}: missing {key!r}')
  role, content = value['role'], value['content']
  if role not in ROLES:
    _fail(where, f'{at}: role {role!r:.40} must be one of {", ".join(ROLES)}')
  if not isinstance(content, str):
    _fail(where, f"{at}: 'content' must be a string, got {type(content).__name__} {content!r:.40}")
  check_unicode(content, f'{at} content', where)
  return {'role': role, 'content': content}


def conversation(value, field: str, where: str) -> list[dict]:
  """The messages of a conversation field, each with exactly role and content."""
  if not value:
    _fail(where, f'field {field!r} is an empty conversation (a conversation has at least one message)')
  return [_message(m, field, i, where) for i, m in enumerate(value)]


def _check_response(messages: list[dict], field: str, where: str, offset: int = 0) -> None:
  if messages[0]['role'] != 'assistant':
    _fail(where, f"field {field!r} message {offset}: a response starts with an assistant message, got role "
                 f"{messages[0]['role']!r}")


def _text(record: dict, field: str, where: str, allow_empty: bool):
  if record.get(field) is None:
    _fail(where, f'missing field {field!r}')
  value = record[field]
  if isinstance(value, list):
    value = conversation(value, field, where)
    if field in RESPONSE_FIELDS:
      _check_response(value, field, where)
    if not allow_empty and not any(m['content'].strip() for m in value):
      _fail(where, f'field {field!r} is empty (every message has empty content)')
    return value
  if not isinstance(value, str):
    _fail(where, f'field {field!r} must be a string, got {type(value).__name__} {value!r:.40} (or a conversation: '
                 "a list of {'role', 'content'} messages)")
  if not allow_empty and not value.strip():
    _fail(where, f'field {field!r} is empty')
  check_unicode(value, f'field {field!r}', where)
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


def _common_prefix(a: list[dict], b: list[dict]) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def _starts_whole(value) -> bool:
  """Whether a response field holds a whole conversation (it starts with a message that is not the assistant's)."""
  return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and value[0].get('role') != 'assistant'


def _same_prompt(given, shared: list[dict], where: str) -> bool:
  if isinstance(given, list):
    return conversation(given, 'prompt', where) == shared
  users = [m['content'] for m in shared if m['role'] == 'user']
  return isinstance(given, str) and bool(users) and users[-1].strip() == given.strip()


def _implicit_prompt(record: dict, where: str) -> dict:
  """Pairs whose chosen/rejected (or response_a/response_b) are whole conversations sharing their start: the
  prompt is that start. A prompt field given as well must be that start (or the text of its last user message)."""
  names = ('chosen', 'rejected') if 'chosen' in record or 'rejected' in record else ('response_a', 'response_b')
  given = record.get('prompt')
  if not all(isinstance(record.get(f), list) for f in names):
    return record
  if given is not None and not all(_starts_whole(record[f]) for f in names):
    return record  # the explicit-prompt form
  convs = [conversation(record[f], f, where) for f in names]
  n = _common_prefix(*convs)
  if n == 0:
    lead = "no field 'prompt', and " if given is None else ''
    _fail(where, f'{lead}fields {names[0]!r} and {names[1]!r} do not start with the same message (an implicit '
                 'prompt is the messages both conversations start with); add a prompt field')
  for f, conv in zip(names, convs):
    if len(conv) == n:
      _fail(where, f'field {f!r} has no messages after the prompt it shares with the other response (its '
                   f'{n} messages are all shared)')
    _check_response(conv[n:], f, where, offset=n)
  if given is not None and not _same_prompt(given, convs[0][:n], where):
    _fail(where, f"field 'prompt' does not match the {n} messages that {names[0]!r} and {names[1]!r} start with; "
                 'drop the prompt field, or keep only the responses in them')
  return dict(record, prompt=convs[0][:n], **{f: conv[n:] for f, conv in zip(names, convs)})


def _normalise_pair(record: dict, where: str) -> dict:
  """Maps the chosen/rejected spelling onto response_a/response_b/preference."""
  has_cr = 'chosen' in record or 'rejected' in record
  has_ab = 'response_a' in record or 'response_b' in record
  if has_cr and has_ab:
    _fail(where, "a pair has either 'response_a'/'response_b'/'preference' or 'chosen'/'rejected', not both")
  record = _implicit_prompt(record, where)
  if not has_cr:
    return record
  if 'preference' in record:
    _fail(where, "field 'preference' is not allowed with 'chosen'/'rejected' (chosen is preferred)")
  out = {k: v for k, v in record.items() if k not in ('chosen', 'rejected')}
  out['response_a'] = _text(record, 'chosen', where, allow_empty=False)
  out['response_b'] = _text(record, 'rejected', where, allow_empty=False)
  out['preference'] = 1.0
  return out


def _normalise_demonstration(record: dict, where: str) -> dict:
  """Maps 'messages' (a whole conversation) and 'completion' onto prompt/response."""
  if 'completion' in record:
    if 'response' in record:
      _fail(where, "a demonstration has either 'response' or 'completion', not both")
    record = dict({k: v for k, v in record.items() if k != 'completion'}, response=record['completion'])
  if 'messages' not in record:
    return record
  if 'prompt' in record or 'response' in record:
    _fail(where, "a demonstration has either 'messages' or 'prompt'/'response', not both")
  value = record['messages']
  if not isinstance(value, list):
    _fail(where, f"field 'messages' must be a list of messages, got {type(value).__name__} {value!r:.40}")
  messages = conversation(value, 'messages', where)
  if messages[-1]['role'] != 'assistant' or len(messages) < 2:
    _fail(where, f"field 'messages' message {len(messages) - 1}: the last message is the response, so it must be "
                 'an assistant message after at least one other message')
  return dict(record, prompt=messages[:-1], response=messages[-1:])


def validate(record, kind: str, where: str = 'record') -> dict:
  """Returns the record of `kind` with exactly its fields; raises DataError naming `where` and the field.

  Prompts must be non-empty; responses must be non-empty (an empty response cannot be scored).
  """
  check_kind(kind)
  if not isinstance(record, dict):
    _fail(where, f'a record must be a JSON object, got {type(record).__name__}')
  if kind == 'pairs':
    record = _normalise_pair(record, where)
  elif kind == 'demonstrations':
    record = _normalise_demonstration(record, where)
  out = {f: _text(record, f, where, allow_empty=False) for f in TEXT_FIELDS[kind]}
  if kind == 'pairs':
    out['preference'] = _preference(record, where)
  return out


def validate_all(records: Iterable, kind: str, name: str = 'records') -> list[dict]:
  """Validates in-memory records; errors name `name` and the record index."""
  return [validate(r, kind, f'{name} record {i}') for i, r in enumerate(records)]
