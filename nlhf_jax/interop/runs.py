"""The files of a run that other tools read, how import and export publish their folders, and where a run's
original Hugging Face files are.

An imported run (nlhf-import) is laid out as every run is (training/run.py), so that any command accepts it:

  RUN/config.json                    the experiment config (train.objective 'import'; model: the imported
                                     ModelConfig; data.tokenizer: RUN/tokenizer)
  RUN/checkpoints/0/                 Orbax items 'params' (the Transformer's parameters) and 'meta' (the same config)
  RUN/tokenizer/                     the Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json, ...)
  RUN/hf_config.json                 the original config.json, byte for byte
  RUN/hf_generation_config.json      the original generation_config.json, byte for byte (when there is one)

nlhf-export starts its config.json and generation_config.json from these originals (`originals`), found by
following a trained run's init / reference checkpoints back to the import, so every key the run did not change
keeps its JSON value.

`staging(path)` is where import and export build their output: a temporary folder beside `path` with a name fixed
by `path` (every process of a multi-host run writes to the same one), renamed into place once complete; an old
`path` (replaced under --overwrite) is removed only after that.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterator

import jax

from nlhf_jax import outputs
from nlhf_jax.config import runs
from nlhf_jax.distributed import barrier
from nlhf_jax.training.run import Run

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja',
                   'tokenizer.model', 'generation_config.json', 'added_tokens.json')
CORE_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer.model')
# The original files an import keeps, under the names the run holds them by.
ORIGINALS = {'config.json': 'hf_config.json', 'generation_config.json': 'hf_generation_config.json'}


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
  """Copies the tokenizer files that `src` has into `dst` (nothing when it has no tokenizer.json or
  tokenizer.model); returns their names."""
  if not any(os.path.exists(os.path.join(src, n)) for n in CORE_TOKENIZER_FILES):
    return []
  names = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(src, n))]
  os.makedirs(dst, exist_ok=True)
  for n in names:
    shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
  return names


def keep_originals(hf_dir: str, run: str) -> None:
  """Copies hf_dir's config.json and generation_config.json into the run, byte for byte (ORIGINALS)."""
  for name, kept in ORIGINALS.items():
    if os.path.isfile(os.path.join(hf_dir, name)):
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(run, kept))


def write_json(path: str, value: dict) -> None:
  outputs.write_json(path, value)


def inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies inside it (both made absolute, links resolved)."""
  path, folder = os.path.realpath(os.path.expanduser(path)), os.path.realpath(os.path.expanduser(folder))
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_writable(path: str, flag: str) -> None:
  """The nearest existing folder above `path` (where `staging` builds it) can be written into (OutputError naming
  `flag` if not)."""
  folder = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
    raise outputs.OutputError(f'{flag}={path}: {folder} is not writable; choose a folder you can write into')


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def run_config(run: str) -> dict:
  """The config of a run folder (`Run.config`; {} when it has none or it cannot be read)."""
  try:
    return Run(run).config
  except Exception:  # noqa: BLE001 - a run that cannot be read has no originals to give
    return {}


def source_runs(config: dict) -> list[str]:
  """The runs a run's experiment config started from, nearest first (config/runs.py's one rule: the warm start,
  then the reference)."""
  return runs.source_runs(config)


def originals(run: str, config: dict | None = None, depth: int = 16) -> dict[str, dict]:
  """{'config.json': ..., 'generation_config.json': ...}: the original files of the import that `run` descends
  from (the first run with hf_config.json along its source runs), {} when there is none."""
  seen, todo = set(), [(os.path.abspath(run), config)]
  while todo and len(seen) < depth:
    path, cfg = todo.pop(0)
    if path in seen or '://' in path:
      continue
    seen.add(path)
    found = {name: _read_json(os.path.join(path, kept)) for name, kept in ORIGINALS.items()}
    if found['config.json'] is not None:
      return {name: value for name, value in found.items() if value is not None}
    cfg = run_config(path) if cfg is None else cfg
    todo.extend((os.path.abspath(p), None) for p in source_runs(cfg))
  return {}


def _leader() -> bool:
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  barrier(name)


@contextlib.contextmanager
def staging(path: str, tag: str) -> Iterator[str]:
  """A fresh folder `.NAME.TAG-tmp` beside `path` to build into; on success it becomes `path` (an old `path` is
  moved aside and removed after the rename); on error it is removed and `path` is untouched. Process 0 makes,
  renames and removes; every process must enter and leave it. The caller checks `path` first."""
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  tmp, old = os.path.join(parent, f'.{name}.{tag}-tmp'), os.path.join(parent, f'.{name}.{tag}-old')
  if _leader():
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(old) and not os.path.lexists(path):  # killed between publish's two renames: put it back
      os.replace(old, path)
    for leftover in (tmp, old):  # an earlier call that was killed
      if os.path.lexists(leftover):
        shutil.rmtree(leftover) if os.path.isdir(leftover) else os.remove(leftover)
    os.makedirs(tmp)
  _barrier(f'nlhf_{tag}_staging')
  try:
    yield tmp
    _barrier(f'nlhf_{tag}_written')
    if _leader():
      outputs.publish(tmp, path, old)  # the old `path` is put back if the rename fails
    _barrier(f'nlhf_{tag}_published')
  finally:
    if _leader() and os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
