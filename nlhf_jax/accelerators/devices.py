"""Compile-only devices: a target's chips as JAX devices that compile programs but hold no memory and run nothing.

The compilers are the accelerators' own (libtpu for TPU; jax's CUDA plugin for NVIDIA GPUs), installed by
`make install` into a folder of their own (COMPILERS_DIR: `.venv/compilers`, from requirements-compilers.lock),
not into the environment: on a machine without the hardware, libtpu prints warnings at every `import jax` and the
CUDA plugin makes JAX's start-up fail unless JAX_PLATFORMS=cpu. Only `nlhf-compile` puts that folder on
sys.path (`use_compilers`), before JAX starts its backends, with JAX_PLATFORMS=cpu (the process itself computes
on the CPU) and TPU_SKIP_MDS_QUERY=1 (libtpu does not ask a metadata server for a TPU VM it is not on). Every other
command is unchanged by the compilers' presence.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from nlhf_jax.accelerators.targets import Target
from nlhf_jax.config import ConfigError

ENV_DIR = 'NLHF_COMPILERS_DIR'


class CompilerMissing(ConfigError):
  """The compilers' folder is missing or lacks the target's compiler."""


def compilers_dir() -> str:
  """$NLHF_COMPILERS_DIR, else the `compilers` folder beside the running Python's environment (.venv/compilers)."""
  return os.environ.get(ENV_DIR) or os.path.join(sys.prefix, 'compilers')


def use_compilers() -> str:
  """Puts the compilers' folder on sys.path and sets the environment they need; before JAX starts its backends.
  Returns the folder. Raises CompilerMissing when it does not exist."""
  folder = compilers_dir()
  if not os.path.isdir(folder):
    raise CompilerMissing(f'the accelerator compilers are not installed in {folder}; run `make install` (it installs '
                          f'requirements-compilers.lock there) or set {ENV_DIR} to a folder made by `pip install '
                          '--target=FOLDER -r requirements-compilers.lock`')
  os.environ['JAX_PLATFORMS'] = 'cpu'  # read when jax is imported
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # compile-only: no chip to guard, several may compile
  os.environ['JAX_ENABLE_COMPILATION_CACHE'] = 'false'  # executables for devices this process cannot load
  if 'jax' in sys.modules:  # imported already (a test): its backends must not have started
    import jax
    import jax._src.xla_bridge as xb
    if xb.backends_are_initialized() and folder not in sys.path:
      raise RuntimeError('the compilers must be put on sys.path before JAX starts its backends')
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_enable_compilation_cache', False)
  if folder not in sys.path:
    sys.path.insert(0, folder)
  return folder


def _check_compiler(target: Target) -> None:
  module = 'libtpu' if target.platform == 'tpu' else 'jax_plugins.xla_cuda12'
  if importlib.util.find_spec(module.split('.')[0]) is None or importlib.util.find_spec(module) is None:
    raise CompilerMissing(f'{target.name} needs the {module} compiler, which is not in {compilers_dir()}; run '
                          '`make install`')


def target_devices(target: Target) -> list:
  """The compile-only devices of `target`, ordered by process (host), then by device within it."""
  from jax.experimental import topologies
  _check_compiler(target)
  if target.platform == 'tpu':
    topology = topologies.get_topology_desc(platform='tpu', topology_name=target.topology)
  else:
    layout = f'1x{target.hosts}x{target.devices_per_host}'  # partitions x hosts x devices per host
    config = target.card.target_config(target.memory_bytes, target.hbm_bandwidth)
    topology = topologies.get_topology_desc(platform='cuda', target_config=config, topology=layout)
  return sorted(topology.devices, key=lambda d: (d.process_index, d.id))


def process_count(devices) -> int:
  return len({d.process_index for d in devices})
