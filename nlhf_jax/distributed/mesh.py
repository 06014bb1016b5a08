"""The device mesh: axes (data, fsdp, tensor), built from config."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from nlhf_jax.config import MeshConfig, resolve_mesh_shape

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
