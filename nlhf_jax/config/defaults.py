"""Every config key at its default, as an ml_collections ConfigDict: the starting point of experiment files.

Experiment files (experiments/configs/*.py) start from `defaults()` and change what they need, so that every
key exists (and can be overridden from the command line) without repeating the schema.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import types

import ml_collections

from nlhf_jax.config.schema import ExperimentConfig
from nlhf_jax.config.presets import preset


def defaults(model_preset: str = 'tiny', **model_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dataclasses.asdict(ExperimentConfig()))
  c.model = preset(model_preset, **model_overrides)
  return c


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The experiment file `name`.py next to `config_file`, loaded once (no sys.path change).

  Config files are loaded by path, so `import nash_md` would only work with their folder on sys.path; this
  loads the sibling under a private module name that cannot clash with the user's modules.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  key = f'_nlhf_jax_configs.{os.path.abspath(path)}'
  if key not in sys.modules:
    if not os.path.exists(path):
      raise FileNotFoundError(f'{config_file} needs its sibling config {path}, which does not exist')
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
