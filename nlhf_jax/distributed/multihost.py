"""Multi-process helpers: initialisation, this process's rows of a global batch, and global arrays from them.

A run on several processes (TPU pod hosts, Slurm tasks, or several processes on one machine) calls
`jax.distributed.initialize`; each argument comes from the command-line flags, else the environment
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), else the config, and otherwise from JAX's own
detection (Cloud TPU, Slurm, Open MPI, Kubernetes).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from nlhf_jax.config import DistributedConfig
from nlhf_jax.distributed.sharding import batch_spec

log = logging.getLogger(__name__)

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'


def resolve_launch(cfg: DistributedConfig, flags: dict | None = None, environ=None) -> DistributedConfig:
  """The launch settings: command-line flags over the environment over the config.

  `flags` holds the given --coordinator_address / --num_processes / --process_id (None: not given); the
  environment is JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Any setting, from wherever it
  comes, implies initialize; with none of them, `cfg.initialize` alone asks JAX to detect the rest.
  """
  env = os.environ if environ is None else environ
  from_env = {'coordinator_address': env.get(ENV_COORDINATOR) or None,
              'num_processes': int(env[ENV_NUM_PROCESSES]) if env.get(ENV_NUM_PROCESSES) else None,
              'process_id': int(env[ENV_PROCESS_ID]) if env.get(ENV_PROCESS_ID) else None}
  resolved = dataclasses.replace(cfg, **{k: v for k, v in from_env.items() if v is not None})
  resolved = dataclasses.replace(resolved, **{k: v for k, v in (flags or {}).items() if v is not None})
  wanted = (resolved.initialize or bool(resolved.coordinator_address) or resolved.num_processes > 0
            or resolved.process_id >= 0)
  return dataclasses.replace(resolved, initialize=wanted)


def initialize(cfg: DistributedConfig) -> None:
  """Calls jax.distributed.initialize with the settings of `cfg` (see `resolve_launch`) when cfg.initialize;
  non-zero processes then log warnings and errors only."""
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
  if jax.process_index() != 0:
    logging.getLogger('nlhf_jax').setLevel(logging.WARNING)
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def local_batch_rows(global_batch: int, mesh: Mesh | None = None) -> slice:
  """The rows of a global batch that this process supplies.

  With a mesh, these are the rows that this process's devices hold under the batch sharding (all rows when the
  mesh has none of this process's devices, e.g. a sub-mesh in tests); without one, an even split by process.
  """
  if mesh is None:
    return _even_rows(global_batch)
  sharding = NamedSharding(mesh, batch_spec(1))
  if global_batch % _batch_shards(mesh):
    raise ValueError(f'global batch {global_batch} is not divisible by the {_batch_shards(mesh)} batch shards')
  index = sharding.addressable_devices_indices_map((global_batch,))
  if not index:
    return slice(0, global_batch)
  rows = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in index.values()})
  for (_, stop), (start, _) in zip(rows, rows[1:]):
    if start != stop:
      raise ValueError(f'process {jax.process_index()} holds non-contiguous batch rows {rows}; order the mesh '
                       'devices by process')
  return slice(rows[0][0], rows[-1][1])


def _batch_shards(mesh: Mesh) -> int:
  spec = batch_spec(1)[0]
  axes = spec if isinstance(spec, tuple) else (() if spec is None else (spec,))
  return int(np.prod([mesh.shape[a] for a in axes]))


def _even_rows(global_batch: int) -> slice:
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


def global_batch_spec(mesh: Mesh, batch: dict) -> dict:
  """The ShapeDtypeStructs (with `global_batch`'s shardings) of a whole global batch given as numpy arrays."""
  def spec(x):
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, batch_spec(x.ndim)))
  return jax.tree.map(spec, batch)


def to_host(x) -> np.ndarray:
  """The whole value of a (global) array as numpy on every process: an all-gather when it spans processes."""
  if jax.process_count() == 1 or getattr(x, 'is_fully_addressable', True):
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def smallest_over_processes(value: float) -> float:
  """The smallest of every process's `value` (each process passes its own; all get the same answer), so that a
  decision taken on it, such as refusing a step that does not fit, is taken by every process alike."""
  if jax.process_count() == 1:
    return value
  return float(np.min(multihost_utils.process_allgather(np.asarray([value], np.float64))))


def is_leader() -> bool:
  """True on the process that writes shared files (process 0)."""
  return jax.process_index() == 0


def local_rows_of(batch: dict, mesh: Mesh) -> dict:
  """This process's rows of a host batch that every process holds whole (e.g. evaluation prompts)."""
  n = len(next(iter(batch.values())))
  rows = local_batch_rows(n, mesh)
  return {k: np.asarray(v)[rows] for k, v in batch.items()}
