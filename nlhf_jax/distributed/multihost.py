"""Multi-process helpers: initialisation and global arrays from per-process data."""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from nlhf_jax.config import DistributedConfig
from nlhf_jax.distributed.sharding import batch_spec

log = logging.getLogger(__name__)


def initialize(cfg: DistributedConfig) -> None:
  """Calls jax.distributed.initialize when the config asks for it. Empty fields are left to JAX, which reads
  them from the environment or detects them on TPU pods and Slurm."""
  if not cfg.initialize:
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs['coordinator_address'] = cfg.coordinator_address
  if cfg.num_processes > 0:
    kwargs['num_processes'] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs['process_id'] = cfg.process_id
  jax.distributed.initialize(**kwargs)
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def local_batch_rows(global_batch: int) -> slice:
  """The rows of a global batch that this process supplies."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f'global batch {global_batch} is not divisible by the {n} processes')
  per = global_batch // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def global_batch(mesh: Mesh, local: dict) -> dict:
  """Process-local numpy rows -> global jax.Arrays sharded over (data, fsdp)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec(x.ndim)), x)
  return jax.tree.map(put, local)
