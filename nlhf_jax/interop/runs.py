"""The files of a run that other tools read: the tokenizer folder and the experiment config at the top level.

An imported run (nlhf-import) is laid out as every run is, so that any command accepts it:

  RUN/config.json          the experiment config (train.objective 'import'; model: the imported ModelConfig;
                           data.tokenizer: RUN/tokenizer)
  RUN/checkpoints/0/       Orbax items 'params' (the Transformer's parameters) and 'meta' (the same config)
  RUN/tokenizer/           the Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json, ...)
  RUN/hf_config.json       the original config.json, for reference
"""
from __future__ import annotations

import json
import os
import shutil

TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja',
                   'tokenizer.model', 'generation_config.json', 'added_tokens.json')


CORE_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer.model')


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


def write_json(path: str, value: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
