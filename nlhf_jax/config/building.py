"""Building a typed config from a mapping: `build(cls, values)` turns a mapping (a ConfigDict's `to_dict()` or a
plain dict; `to_mapping` accepts either) into the frozen dataclass `cls`, section by section.

Every key is checked against the dataclass's fields and every scalar against its annotated type (an int is
accepted where a float is expected; a list becomes a tuple). An unknown key, and a key set at a place it has
moved from (`moved`), is refused with one line: a ConfigError naming the key, what is known or where it is now,
and the fix. The values themselves are checked afterwards (config/validate.py).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

from nlhf_jax.config import runs
from nlhf_jax.config.errors import ConfigError


def to_mapping(cfg: Any) -> Mapping[str, Any]:
  """A ConfigDict (its `to_dict()`) or a mapping, as a mapping; a ConfigError for anything else."""
  if hasattr(cfg, 'to_dict'):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return cfg
  raise ConfigError(f'expected a ConfigDict or a mapping, got {type(cfg).__name__}')


def _coerce(key: str, value: Any, field_type: Any) -> Any:
  """Checks one scalar value against its annotated type (ints are accepted where floats are expected)."""
  origin = typing.get_origin(field_type)
  if origin is typing.Union:  # Optional[X]
    args = [a for a in typing.get_args(field_type) if a is not type(None)]
    return None if value is None else _coerce(key, value, args[0])
  if field_type is bool:
    if not isinstance(value, bool):
      raise ConfigError(f'config.{key}={value!r}: expected true/false')
    return value
  if field_type is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f'config.{key}={value!r}: expected an integer')
    return value
  if field_type is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f'config.{key}={value!r}: expected a number')
    return float(value)
  if field_type is str:
    if not isinstance(value, str):
      raise ConfigError(f'config.{key}={value!r}: expected a string')
    return value
  if origin in (tuple, list):
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f'config.{key}={value!r}: expected a list')
    return tuple(value)
  return value


def moved(old: str, new: str) -> ConfigError:
  """The one error for a key set at its former place `old`, naming where it is now and the fix."""
  return ConfigError(f'config.{old} is now config.{new}: set config.{new} instead (--config.{new}=... on the '
                     'command line)')


def build(cls: type, values: Mapping[str, Any], prefix: str = '') -> Any:
  """Recursively builds dataclass `cls` from `values`, rejecting keys that `cls` does not have (a sampling
  option set beside the section's `sampling` field, its place before that section existed, is named with its new
  place)."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  for key in unknown:
    if key in runs.SAMPLING_KEYS and 'sampling' in names:
      raise moved(prefix + key, f'{prefix}sampling.{key}')
  if unknown:
    where = prefix.rstrip('.') or 'the top level'
    raise ConfigError(
        f'unknown config key config.{prefix}{unknown[0]} (known keys at {where}: {", ".join(sorted(names))})')
  kwargs = {}
  for name, value in values.items():
    field_type = hints[name]
    if dataclasses.is_dataclass(field_type):
      if not isinstance(value, Mapping):
        raise ConfigError(f'config.{prefix}{name} must be a section (a ConfigDict), got {value!r}')
      kwargs[name] = build(field_type, value, f'{prefix}{name}.')
    else:
      kwargs[name] = _coerce(prefix + name, value, field_type)
  return cls(**kwargs)
