"""Where the sampler's rows and weights live on a mesh: sharding constraints by logical axis, and the decode loop
run per shard of the batch axes.

- `constrain` / `constrain_cache`: with_sharding_constraint through the rule table of distributed/sharding.py
  (rows over 'batch', kv heads over 'tensor'); no-ops without a mesh and inside the per-shard loop.
- `per_shard(fn, mesh, params, batch, keys_bg)`: fn under `jax.shard_map`, manual over the batch axes ('data',
  'fsdp'), automatic over the others. The parameters enter replicated over the manual axes (gathered over 'fsdp'
  once, at the boundary, not inside the loop); each shard decodes its own rows; 'tensor' stays with GSPMD (heads,
  MLP and vocabulary split). With tensor = 1 the body has no collective and each shard may leave its loop when its
  own rows are done; otherwise every device must enter the body's collectives equally often, so fn gets the manual
  axes to sum its stopping test over (`sync_axes`).
- `regroup(mesh, n, model)` / `to_layout(params, mesh)`: the sampler's own layout (SamplingConfig.decode_tensor):
  the same devices in the same order as a mesh whose 'tensor' axis is n consecutive devices and whose 'data' axis
  is the groups ('fsdp' 1), and the parameters constrained to the rule table's shardings on it. Each device then
  reads 1/n of every decoding model's weights at every token instead of all of them; between the layers the
  residual stream's rows are split over the group as well (models/transformer.DECODE_RESIDUAL), its partial sums
  reduce-scattered and its normalized rows all-gathered twice a layer.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.config import ModelConfig
from nlhf_jax.config.mesh_checks import decode_tensor_size
from nlhf_jax.distributed.sharding import LOGICAL_AXIS_RULES, logical_to_spec
from nlhf_jax.models.transformer import cache_batch_axis


def constrain(x: jax.Array, axes: tuple, mesh: Mesh | None = None) -> jax.Array:
  """with_sharding_constraint by logical axis names; a no-op when there is neither a mesh argument nor a mesh
  context (so the same code runs unsharded), and inside the per-shard loop (manual mesh axes)."""
  spec = logical_to_spec(axes)
  if mesh is not None:
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  context = jax.sharding.get_abstract_mesh()
  if not context.empty and not context.manual_axes:
    return jax.lax.with_sharding_constraint(x, spec)
  return x


def constrain_cache(cache: dict, mesh: Mesh | None) -> dict:
  """A model's KV cache (models/transformer.init_cache, and its 'prefix' cache if it has one) constrained layer by
  layer: rows over 'batch', kv heads over 'tensor'; a scanned stack's caches have the layer axis first."""
  out = {'mask': constrain(cache['mask'], ('batch', 'length'), mesh)}
  for name, layer in cache.items():
    if name == 'prefix':  # a prompt's cache, one row per prompt (models/attention.py)
      out[name] = constrain_cache(layer, mesh)
    elif name != 'mask':
      lead = ('layers',) * cache_batch_axis((name,))
      out[name] = {'k': constrain(layer['k'], lead + ('batch', 'kv_heads', 'length', 'head_dim'), mesh),
                   'v': constrain(layer['v'], lead + ('batch', 'kv_heads', 'length', 'head_dim'), mesh),
                   'pos': constrain(layer['pos'], lead + ('batch', 'length'), mesh)}
  return out


def _batch_axes() -> tuple[str, ...]:
  axes = LOGICAL_AXIS_RULES['batch']
  return (axes,) if isinstance(axes, str) else tuple(axes)


def batch_shards(mesh: Mesh | None) -> int:
  """How many shards the batch axis has on `mesh` (the rule table's mesh axes of 'batch')."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in _batch_axes()]))


def per_shard(fn: Callable[..., dict], mesh: Mesh, params: Any, batch: dict, keys_bg: jax.Array) -> dict:
  """fn(params, batch, keys_bg, sync_axes) -> outputs, run per shard of the batch axes (see the module's
  docstring); `params` replicated over them, `batch`, `keys_bg` and the outputs split by rows."""
  manual = set(_batch_axes())
  rows = logical_to_spec(('batch',))
  auto_axes = [a for a in mesh.axis_names if a not in manual and mesh.shape[a] > 1]
  sync_axes = tuple(a for a in mesh.axis_names if a in manual) if auto_axes else ()
  return jax.shard_map(lambda p, b, k: fn(p, b, k, sync_axes), mesh=mesh, in_specs=(P(), rows, rows),
                       out_specs=rows, axis_names=manual, check_vma=False)(params, batch, keys_bg)


def regroup(mesh: Mesh, option: int, model: ModelConfig) -> Mesh:
  """The decode mesh of `decode_tensor=option` (see the module's docstring): `mesh`'s devices in their order,
  reshaped to (groups, 1, n) over the same axis names; n is checked against the devices and the model."""
  n = decode_tensor_size(option, mesh.devices.size, model, 'sampling.')
  return Mesh(mesh.devices.reshape(-1, 1, n), mesh.axis_names, axis_types=mesh.axis_types)


def to_layout(params: Any, mesh: Mesh) -> Any:
  """Each parameter (an nnx.Variable with `logical_axes`; none: replicated) constrained to its rule-table sharding
  on `mesh`: inside a jit, XLA moves each weight into that layout once. With several groups, through a layout
  with 'embed' split over the groups ('data'): from weights split over every device by 'embed' (FSDP) that is an
  all-to-all within each group and then a gather across the groups, where a direct move would gather each weight
  whole on every device first."""
  staged = dict(LOGICAL_AXIS_RULES, embed='data') if mesh.shape['data'] > 1 else None

  def put(v):
    axes = v.get_metadata().get('logical_axes')
    x = v[...]
    if axes and staged and 'embed' in axes:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, staged)))
    spec = logical_to_spec(axes) if axes else P()
    return v.replace(jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec)))
  return jax.tree.map(put, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
