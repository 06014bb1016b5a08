"""How every command writes: check first, never replace what it did not make, and publish by rename.

The rule for each writing command (import, export, data, tokenizer, eval, plot, pipeline, training):
1. Validate every input and option before the first byte is written or deleted.
2. Never overwrite or delete a file or folder that the command did not make in this call unless the user passed
   `--overwrite` (commands that resume their own earlier work, training and the pipeline, say what they resume).
3. Write each file under a temporary name in the same folder and `os.replace` it into place, so that an
   interrupted write leaves either the old file or the new one, never half of one. A folder is built whole under a
   temporary name and renamed into place the same way; an old one that `--overwrite` replaces is removed only
   after the new one is complete.

`OutputError` is a user error (nlhf_jax.cli.common prints its message as one `error:` line).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator


class OutputError(Exception):
  """An output path that the command may not write (exists, is a file where a folder is wanted, ...)."""


def _tmp_name(path: str) -> str:
  head, tail = os.path.split(os.path.abspath(path))
  return os.path.join(head, f'.{tail}.tmp-{os.getpid()}')


def _check_ancestors(path: str) -> None:
  """Refuse a path below a file (its nearest existing ancestor must be a folder)."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise OutputError(f'{parent} is a file, not a folder; choose another path for {path}')


def check_file(path: str, overwrite: bool = False, flag: str = '--overwrite') -> None:
  """Refuse a file output that is a folder, that lies below a file, or that exists and `overwrite` is off."""
  if os.path.isdir(path):
    raise OutputError(f'{path} is a folder; give a file path for this output')
  _check_ancestors(path)
  if os.path.exists(path) and not overwrite:
    raise OutputError(f'{path} already exists; pass {flag} to replace it, or choose another path')


def check_dir(path: str, names: Iterable[str] = (), overwrite: bool = False, flag: str = '--overwrite',
              empty: bool = False) -> None:
  """Refuse a folder output that is a file or lies below one, or that holds one of `names` (or anything, with
  `empty`: hidden entries such as .git too, since a folder built whole replaces them) while `overwrite` is off.
  A missing folder is fine (it will be made)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputError(f'{path} is a file, not a folder; give a folder path for this output')
  _check_ancestors(path)
  if not os.path.isdir(path) or overwrite:
    return
  present = sorted(n for n in os.listdir(path) if empty or n in set(names))
  if present:
    shown = ', '.join(present[:5]) + (', ...' if len(present) > 5 else '')
    raise OutputError(f'{path} already holds {shown}; pass {flag} to replace them, or choose another folder')


@contextlib.contextmanager
def replacing_file(path: str, mode: str = 'w') -> Iterator[Any]:
  """Open a temporary file beside `path`; on success it replaces `path` in one rename, on error it is removed."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_name(path)
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """`text` into `path` by rename (see `replacing_file`)."""
  with replacing_file(path) as f:
    f.write(text)


def write_bytes(path: str, data: bytes) -> None:
  with replacing_file(path, 'wb') as f:
    f.write(data)


def write_json(path: str, value: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(value, indent=indent) + '\n')


@contextlib.contextmanager
def building_dir(path: str) -> Iterator[str]:
  """A fresh temporary folder beside `path` to write into; on success it becomes `path` (an old `path` is moved
  aside and removed only after the rename), on error it is removed and `path` is untouched.

  The caller checks `path` first (`check_dir`): this replaces whatever is there."""
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=parent)
  try:
    yield tmp
    old = None
    if os.path.lexists(path):
      old = tempfile.mkdtemp(prefix=f'.{os.path.basename(path)}.old-', dir=parent)
      os.rmdir(old)
    publish(tmp, path, old)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: str, path: str, old: str | None) -> None:
  """Renames the complete `tmp` to `path`. An existing `path` is first renamed to `old` (a free name beside it),
  put back when the second rename fails, and removed only once `tmp` is in place. Its hidden entries (names that
  start with a dot: a clone's .git and .gitattributes) that the new folder lacks are moved into it first: an
  output replaces what it writes, not the version control around it."""
  if old is None or not os.path.lexists(path):
    os.replace(tmp, path)
    return
  os.replace(path, old)
  try:
    os.replace(tmp, path)
  except BaseException:
    os.replace(old, path)
    raise
  if os.path.isdir(old) and not os.path.islink(old):
    for name in os.listdir(old):
      if name.startswith('.') and not os.path.lexists(os.path.join(path, name)):
        os.replace(os.path.join(old, name), os.path.join(path, name))
    shutil.rmtree(old)
  else:
    os.remove(old)
