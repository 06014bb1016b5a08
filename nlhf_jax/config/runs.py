"""Configs that take their model (and tokenizer) from an earlier run, by path.

A run directory holds its experiment config as RUN/config.json (written by nlhf-train and nlhf-import). With
`config.model.preset='from_run'` the model section is that of the run named by `config.init_checkpoint` (or, when
that is empty, `config.online.reference_checkpoint`), so an imported model's shape is never copied by hand; the
fields that say how to run it (KEPT_MODEL_FIELDS: compute and parameter dtypes, scanned layers, remat, attention
implementation, vocabulary chunks, LoRA) keep the config's values. `config.data.tokenizer='from_run'` likewise takes the run's
tokenizer. The resolution happens before validation, so every later check sees the concrete values.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from etils import epath

from nlhf_jax.config.validate import ConfigError

FROM_RUN = 'from_run'
RUN_CONFIG = 'config.json'
# The config's own values win over the run's: how to run the model, not what it is.
KEPT_MODEL_FIELDS = ('compute_dtype', 'scan_layers', 'remat', 'param_dtype', 'attention_impl', 'logits_chunk',
                     'lora')


def run_config_path(run: str) -> epath.Path:
  path = epath.Path(run)
  return path if path.name == RUN_CONFIG else path / RUN_CONFIG


def read_saved_config(run: str, key: str) -> dict:
  """The experiment config that the run at `run` saved; errors name the config `key` that gave the path."""
  path = run_config_path(run)
  if not path.exists():
    raise ConfigError(f'{key}={run}: no {RUN_CONFIG} there; give the --workdir of an nlhf-train or nlhf-import run '
                      f'(runs written before {RUN_CONFIG} existed need config.model set by hand)')
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f'{key}={run}: cannot read {path} ({e})') from None


def _source(values: Mapping[str, Any]) -> tuple[str, str]:
  if values.get('init_checkpoint'):
    return 'config.init_checkpoint', values['init_checkpoint']
  for section in ('online', 'offline'):
    reference = values.get(section, {}).get('reference_checkpoint', '')
    if reference:
      return f'config.{section}.reference_checkpoint', reference
  raise ConfigError(f"'{FROM_RUN}' in config.model.preset or config.data.tokenizer needs a run to read them "
                    'from: set config.init_checkpoint (or config.online.reference_checkpoint) to its --workdir')


def resolve(values: Mapping[str, Any]) -> Mapping[str, Any]:
  """`values` (a config as nested dicts) with 'from_run' model and tokenizer fields replaced by the run's."""
  model, data = dict(values.get('model', {})), dict(values.get('data', {}))
  if model.get('preset') != FROM_RUN and data.get('tokenizer') != FROM_RUN:
    return values
  key, run = _source(values)
  saved = read_saved_config(run, key)
  out = dict(values)
  if model.get('preset') == FROM_RUN:
    out['model'] = {**saved.get('model', {}), **{k: model[k] for k in KEPT_MODEL_FIELDS if k in model}}
  if data.get('tokenizer') == FROM_RUN:
    out['data'] = {**data, 'tokenizer': saved.get('data', {}).get('tokenizer', 'bytes')}
  return out
