"""Every config key at its default, as an ml_collections ConfigDict: the starting point of experiment files.

Experiment files (experiments/configs/*.py) start from `defaults()` and change what they need, so that every
key exists (and can be overridden from the command line) without repeating the schema.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from nlhf_jax.config.schema import ExperimentConfig
from nlhf_jax.models.presets import preset


def defaults(model_preset: str = 'tiny', **model_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dataclasses.asdict(ExperimentConfig()))
  c.model = preset(model_preset, **model_overrides)
  return c
