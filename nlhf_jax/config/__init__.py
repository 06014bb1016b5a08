"""Experiment configuration: frozen dataclasses and their validation."""
from nlhf_jax.config.schema import (DataConfig, DistributedConfig, ExperimentConfig, LoraConfig, MeshConfig,
                                    ModelConfig, OfflineConfig, OnlineConfig, OptimConfig, SamplingOptions,
                                    TrainConfig)
from nlhf_jax.config.errors import ConfigError
from nlhf_jax.config.building import build
from nlhf_jax.config.mesh_checks import check_against_mesh, resolve_mesh_shape
from nlhf_jax.config.validate import from_config_dict

__all__ = [
    'DataConfig',
    'DistributedConfig',
    'ExperimentConfig',
    'LoraConfig',
    'MeshConfig',
    'ModelConfig',
    'OfflineConfig',
    'OnlineConfig',
    'OptimConfig',
    'SamplingOptions',
    'TrainConfig',
    'ConfigError',
    'build',
    'check_against_mesh',
    'from_config_dict',
    'resolve_mesh_shape',
]
