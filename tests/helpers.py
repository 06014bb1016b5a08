"""Shared test helpers: tiny experiment configs, meshes and the environment of subprocesses."""
import os

import jax

from xla_cpu import xla_flags

from experiments.configs import sft
from nlhf_jax.config import MeshConfig, from_config_dict
from nlhf_jax.distributed import make_mesh


def tiny_config(**overrides):
  """The validated `sft.py:tiny` config with dotted-key overrides, e.g. {'train.num_steps': 5}."""
  c = sft.get_config('tiny')
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return from_config_dict(c, num_devices=_devices_for(c))


def _devices_for(c):
  m = c.mesh
  sizes = [m.data, m.fsdp, m.tensor]
  return jax.device_count() if -1 in sizes else sizes[0] * sizes[1] * sizes[2]


def mesh(data=1, fsdp=1, tensor=1):
  n = data * fsdp * tensor
  return make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor), devices=jax.devices()[:n])


def subprocess_env(devices: int | None = 8) -> dict:
  """A minimal environment for a command under test: CPU, `devices` fake devices (None: one), and the session's
  compilation cache (tests/conftest.py)."""
  env = {'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin', 'XLA_FLAGS': xla_flags(devices)}
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    env['JAX_COMPILATION_CACHE_DIR'] = os.environ['JAX_COMPILATION_CACHE_DIR']
  return env
