"""The device mesh: axes (data, fsdp, tensor), built from config."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from nlhf_jax.config import ConfigError, MeshConfig, resolve_mesh_shape

MESH_AXES = ('data', 'fsdp', 'tensor')


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """A mesh over all (or the given) devices. Axes are Auto: jit propagates shardings (classic GSPMD), and the
  code annotates only its inputs, outputs and a few constraints."""
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(cfg, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  if devices == jax.devices():
    return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,tensor=4' -> {'data': 2, 'fsdp': 1, 'tensor': 4}; a clear error for anything else."""
  axes = {'data': 1, 'fsdp': 1, 'tensor': 1}
  for item in text.split(','):
    name, sep, size = (part.strip() for part in item.partition('='))
    if not sep or name not in axes or not size.lstrip('-').isdigit():
      raise ConfigError(f'--mesh={text!r}: expected AXIS=SIZE pairs separated by commas, with AXIS one of data, '
                        'fsdp, tensor (e.g. --mesh=data=2,tensor=4)')
    axes[name] = int(size)
  return axes
