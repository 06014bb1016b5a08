"""Configs that take their model (and tokenizer) from an earlier run, by path.

A run directory holds its experiment config as RUN/config.json (written by nlhf-train and nlhf-import). With
`config.model.preset='from_run'` the model section is that of the run named by `config.init_checkpoint` (or, when
that is empty, the objective's reference checkpoint: `warm_start` below), so an imported model's shape is never
copied by hand; the fields that say how to run it (KEPT_MODEL_FIELDS: compute and parameter dtypes, scanned
layers, remat, attention implementation, vocabulary chunks, LoRA) keep the config's values.
`config.data.tokenizer='from_run'` likewise takes the run's tokenizer. The resolution happens before validation,
so every later check sees the concrete values.

The runs a config names (RUN_PATHS: the init, reference and judge checkpoints) and a tokenizer given as a local
path are made absolute at the same time (`~` expanded; URLs such as gs://... kept as they are), so a run records
where its inputs are whatever the current folder of a later command (nlhf-export of a LoRA run reads its base
from the path its config recorded).

The one precedence rule for the runs a config starts from (`reference`, `warm_start`, `lora_base`; each takes an
ExperimentConfig or the same config as nested dicts, as a run saved it, and gives (config key, path), ('', '')
for none). Only the reference checkpoint of the objective's own kind counts (online.reference_checkpoint for the
online objectives, offline.reference_checkpoint for the offline ones; supervised objectives have none):
- the reference mu: that reference checkpoint, else the warm start (config.init_checkpoint), else none (the
  policy's initial parameters, drawn from the seed);
- the warm start: config.init_checkpoint, else the reference (a policy starts from mu unless told otherwise);
- the LoRA base (the weights the adapters sit on): the reference, so a LoRA policy is mu plus adapters and, for
  sft, the warm start (validation refuses a LoRA config whose init and reference checkpoints differ).
The model and tokenizer of `from_run` come from the warm start.

Configs saved before config.online.sampling existed hold the sampling options as flat keys of config.online:
`upgrade` moves them under online.sampling (`nest_sampling`), and every reader of a saved config gets it upgraded
(`read_saved_config` here, the checkpoints' meta in training/run.py and training/checkpointing.py), so a run made
before the move is resumed, evaluated, exported and named by later configs as one made after it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from etils import epath

from nlhf_jax.config import objectives, schema
from nlhf_jax.config.errors import ConfigError

FROM_RUN = 'from_run'
RUN_CONFIG = 'config.json'
# The config's own values win over the run's: how to run the model, not what it is.
KEPT_MODEL_FIELDS = ('compute_dtype', 'scan_layers', 'remat', 'param_dtype', 'attention_impl', 'logits_chunk',
                     'lora')
# Config fields that name another run's folder: (section or '' for the top level, key).
RUN_PATHS = (('', 'init_checkpoint'), ('online', 'reference_checkpoint'), ('online', 'judge_checkpoint'),
             ('offline', 'reference_checkpoint'))
# The sampling options, the keys of a `sampling` section (config.online.sampling, an evaluation's, the pipeline's).
SAMPLING_KEYS = tuple(f.name for f in dataclasses.fields(schema.SamplingOptions))


def nest_sampling(section: Mapping[str, Any]) -> Mapping[str, Any]:
  """`section` (a dict) with the sampling options it holds as flat keys (SAMPLING_KEYS, as configs written before
  the `sampling` sections existed held them) moved under its `sampling` section; `section` itself when it holds
  none."""
  flat = {k: section[k] for k in SAMPLING_KEYS if k in section}
  if not flat:
    return section
  out = {k: v for k, v in section.items() if k not in flat}
  out['sampling'] = {**flat, **(section.get('sampling') or {})}
  return out


def upgrade(values: Mapping[str, Any]) -> Mapping[str, Any]:
  """A saved experiment config (nested dicts) in the current layout: config.online's flat sampling options moved
  under config.online.sampling (`nest_sampling`). A config already in that layout is returned as it is."""
  online = values.get('online') if isinstance(values, Mapping) else None
  if not isinstance(online, Mapping):
    return values
  nested = nest_sampling(online)
  return values if nested is online else {**values, 'online': nested}


def run_config_path(run: str) -> epath.Path:
  path = epath.Path(run)
  return path if path.name == RUN_CONFIG else path / RUN_CONFIG


def read_saved_config(run: str, key: str) -> dict:
  """The experiment config that the run at `run` saved (`upgrade`d); errors name the config `key` that gave the
  path."""
  path = run_config_path(run)
  if not path.exists():
    raise ConfigError(f'{key}={run}: no {RUN_CONFIG} there; give the --workdir of an nlhf-train or nlhf-import run '
                      f'(runs written before {RUN_CONFIG} existed need config.model set by hand)')
  try:
    saved = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f'{key}={run}: cannot read {path} ({e})') from None
  return upgrade(saved)


def _get(node: Any, key: str) -> Any:
  return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _field(values: Any, section: str, key: str) -> str:
  node = _get(values, section) if section else values
  return (_get(node, key) if node is not None else '') or ''


def _kind(values: Any) -> str:
  """'supervised', 'online' or 'offline': the kind of the config's objective ('supervised' for an unknown one and
  for an imported run)."""
  spec = objectives.OBJECTIVES.get(_field(values, 'train', 'objective'))
  return spec.kind if spec is not None else 'supervised'


def reference(values: Any) -> tuple[str, str]:
  """(key, path) of the reference mu: the objective's own reference checkpoint, else config.init_checkpoint."""
  kind = _kind(values)
  if kind in ('online', 'offline') and _field(values, kind, 'reference_checkpoint'):
    return f'config.{kind}.reference_checkpoint', _field(values, kind, 'reference_checkpoint')
  if _field(values, '', 'init_checkpoint'):
    return 'config.init_checkpoint', _field(values, '', 'init_checkpoint')
  return '', ''


def warm_start(values: Any) -> tuple[str, str]:
  """(key, path) of the run the trained model starts from: config.init_checkpoint, else the reference."""
  if _field(values, '', 'init_checkpoint'):
    return 'config.init_checkpoint', _field(values, '', 'init_checkpoint')
  return reference(values)


def lora_base(values: Any) -> tuple[str, str]:
  """(key, path) of the run whose weights LoRA adapters sit on: the reference (for sft, the warm start)."""
  return reference(values)


def source_runs(values: Any) -> list[str]:
  """The runs a config starts from, nearest first: the warm start, then the reference (each once)."""
  return list(dict.fromkeys(p for _, p in (warm_start(values), reference(values)) if p))


def _source(values: Mapping[str, Any]) -> tuple[str, str]:
  key, run = warm_start(values)
  if not run:
    raise ConfigError(f"'{FROM_RUN}' in config.model.preset or config.data.tokenizer needs a run to read them "
                      'from: set config.init_checkpoint (or config.online.reference_checkpoint) to its --workdir')
  return key, run


def absolute_path(path: str) -> str:
  """A local path made absolute (`~` expanded); '' and URLs (gs://...) as they are."""
  if not isinstance(path, str) or not path or '://' in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _tokenizer_path(spec: Any) -> Any:
  """data.tokenizer made absolute when it names a local file or folder (not 'bytes' or 'from_run')."""
  if not isinstance(spec, str) or spec in ('bytes', FROM_RUN, '') or '://' in spec:
    return spec
  if os.sep in spec or spec.endswith('.model') or os.path.exists(os.path.expanduser(spec)):
    return absolute_path(spec)
  return spec


def absolute_paths(values: Mapping[str, Any]) -> Mapping[str, Any]:
  """`values` with the RUN_PATHS fields and a local data.tokenizer path made absolute."""
  out = dict(values)
  for section, key in RUN_PATHS:
    node = out if not section else out.get(section)
    if isinstance(node, Mapping) and node.get(key):
      if section:
        node = out[section] = dict(node)
      node[key] = absolute_path(node[key])
  if isinstance(out.get('data'), Mapping) and 'tokenizer' in out['data']:
    out['data'] = {**out['data'], 'tokenizer': _tokenizer_path(out['data']['tokenizer'])}
  return out


def resolve(values: Mapping[str, Any]) -> Mapping[str, Any]:
  """`values` (a config as nested dicts) with the run paths made absolute (`absolute_paths`) and 'from_run'
  model and tokenizer fields replaced by the run's."""
  values = absolute_paths(values)
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
