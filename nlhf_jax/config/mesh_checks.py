"""The checks that need the device count: the mesh filled and checked against the devices (`resolve_mesh_shape`),
the shapes that must divide the mesh axes they are sharded over (`check_against_mesh`) and the sampler's own
tensor-parallel group (`decode_tensor_size`).

They run once the number of devices is known (`from_config_dict(cfg, num_devices)`, the pipeline's stages, the
sampler); every error is a ConfigError naming the config key, its value and what would fix it.
"""
from __future__ import annotations

import math
from typing import Mapping

from nlhf_jax.config import schema
from nlhf_jax.config.errors import require


def resolve_mesh_shape(mesh: schema.MeshConfig, num_devices: int) -> dict[str, int]:
  """Fills a -1 axis and checks that the mesh uses exactly the available devices."""
  axes = {'data': mesh.data, 'fsdp': mesh.fsdp, 'tensor': mesh.tensor}
  fixed = math.prod(v for v in axes.values() if v != -1)
  fill = [k for k, v in axes.items() if v == -1]
  if fill:
    require(num_devices % fixed == 0,
            f'config.mesh.{fill[0]}=-1 cannot be filled: the other axes ({fixed} devices) do not divide the '
            f'{num_devices} devices; change config.mesh')
    axes[fill[0]] = num_devices // fixed
  require(math.prod(axes.values()) == num_devices,
          f'config.mesh (data={axes["data"]}, fsdp={axes["fsdp"]}, tensor={axes["tensor"]}) needs '
          f'{math.prod(axes.values())} devices but {num_devices} are available; set the axes so that their '
          f'product is {num_devices}, or make one of them -1')
  return axes


def check_against_mesh(cfg: schema.ExperimentConfig, axes: Mapping[str, int]) -> None:
  """Shapes that must divide the mesh axes they are sharded over (see distributed/sharding.py)."""
  m, t = cfg.model, cfg.train
  batch_shards = axes['data'] * axes['fsdp']
  micro = t.batch_size // t.grad_accum_steps
  require(micro % batch_shards == 0,
          f'config.train.batch_size={t.batch_size} (micro-batch {micro} with grad_accum_steps='
          f'{t.grad_accum_steps}) is not divisible by the data-parallel devices mesh.data*mesh.fsdp='
          f'{batch_shards}; use a multiple of {batch_shards}')
  for key, size, axis in [('model.d_model', m.d_model, 'fsdp'), ('model.vocab_size', m.vocab_size, 'tensor'),
                          ('model.num_heads', m.num_heads, 'tensor'), ('model.mlp_dim', m.mlp_dim, 'tensor'),
                          ('model.num_kv_heads', m.kv_heads, 'tensor')]:
    require(size % axes[axis] == 0,
            f'config.{key}={size} is not divisible by config.mesh.{axis}={axes[axis]}; '
            f'choose a mesh.{axis} that divides it')
  decode_tensor_size(cfg.online.sampling.decode_tensor, math.prod(axes.values()), m)


def decode_tensor_size(option: int, num_devices: int, m: schema.ModelConfig,
                       where: str = 'config.online.sampling.') -> int:
  """The devices that split each decoding model in the sampler's own layout (sampling.decode_tensor: -1 for
  all of them, 0 for none), checked: they must divide the devices and the model's heads, kv heads, MLP width and
  vocabulary."""
  n = num_devices if option == -1 else option
  if n <= 1:
    return n
  require(num_devices % n == 0, f'{where}decode_tensor={option}: {n} does not divide the {num_devices} devices; '
          'use a divisor of the device count (or -1 for all of them)')
  for key, size in [('num_heads', m.num_heads), ('num_kv_heads', m.kv_heads), ('mlp_dim', m.mlp_dim),
                    ('vocab_size', m.vocab_size)]:
    require(size % n == 0, f'{where}decode_tensor={option}: config.model.{key}={size} is not divisible by {n}; '
            f'use a decode_tensor that divides it')
  return n
