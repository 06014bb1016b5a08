"""Logical axis names -> mesh axes, by one rule table, and the shardings that follow from it."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# The one table. A logical axis not listed here is replicated.
LOGICAL_AXIS_RULES: Mapping[str, Any] = {
    'batch': ('data', 'fsdp'),
    'decode_rows': ('data', 'fsdp', 'tensor'),  # a decoded position's residual rows (models/transformer.py)
    'vocab': 'tensor',
    'embed': 'fsdp',
    'mlp': 'tensor',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'layers': None,
    'length': None,
    'norm': None,
}


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, Any] = LOGICAL_AXIS_RULES) -> P:
  """PartitionSpec for an array whose dimensions carry the logical names `axes`."""
  return P(*(rules.get(a) if a is not None else None for a in axes))


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def param_specs(abstract_params) -> Any:
  """PartitionSpecs of an nnx.State of parameters (from `logical_axes` metadata), as a pure dict."""
  def spec(v):
    axes = v.get_metadata().get('logical_axes')
    return logical_to_spec(axes) if axes is not None else P()
  return nnx.to_pure_dict(jax.tree.map(spec, abstract_params, is_leaf=_is_var))


def named(mesh: Mesh, specs) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def like_params(tree, params_specs) -> Any:
  """Specs for a tree (e.g. an optimizer state) whose sub-trees mirror the params: a leaf whose key path ends
  with a parameter's path and has that parameter's rank gets its spec; anything else (counters, factored
  second moments) is replicated."""
  flat = {path: spec for path, spec in jax.tree_util.tree_flatten_with_path(
      params_specs, is_leaf=lambda x: isinstance(x, P))[0]}
  by_path = {tuple(_key(k) for k in path): spec for path, spec in flat.items()}
  longest = max((len(p) for p in by_path), default=0)

  def spec_of(path, leaf):
    keys = tuple(_key(k) for k in path)
    for n in range(min(longest, len(keys)), 0, -1):
      spec = by_path.get(keys[-n:])
      if spec is not None and len(spec) == getattr(leaf, 'ndim', -1):
        return spec
    return P()
  return jax.tree_util.tree_map_with_path(spec_of, tree)


def _key(k) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def batch_spec(ndim: int) -> P:
  """Batches are split over (data, fsdp) on their leading dimension."""
  return logical_to_spec(('batch',) + (None,) * (ndim - 1))


def constrain_activations(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """x constrained to the rule table's sharding of the logical `axes`, on the mesh of the surrounding
  `within_mesh` (none: x unchanged). Mesh axes that are manual here (inside a shard_map over them) are left out.

  Used on the Transformer's residual stream: without it, GSPMD propagates the parameters' sharding ('embed' over
  fsdp) into the activations and keeps every sequence of the batch on every device (an all-reduce per matmul).
  Where the rule table leaves every dimension whole on a mesh with a split axis (the residual stream on the
  sampler's tensor-parallel mesh), x is constrained to be replicated: left free, GSPMD split its rows over
  'tensor' and moved the KV cache to match at every layer.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = P(*(_split_axes(mesh, a) or None for a in axes))
  manual = set(getattr(mesh, 'manual_axes', ()))
  if all(e is None for e in spec) and all(mesh.shape[a] == 1 for a in mesh.axis_names if a not in manual):
    return x
  return jax.lax.with_sharding_constraint(x, spec)  # all None: replicated over the mesh (e.g. 'tensor')


def _split_axes(mesh, name: str | None) -> tuple[str, ...]:
  """The mesh axes that the rule table maps the logical axis `name` to and that split it on `mesh`: present,
  automatic (not manual, as inside a shard_map over them) and of size > 1."""
  rule = LOGICAL_AXIS_RULES.get(name) if name is not None else None
  names = (rule,) if isinstance(rule, str) else tuple(rule or ())
  manual = set(getattr(mesh, 'manual_axes', ()))
  return tuple(a for a in names if a in mesh.axis_names and a not in manual and mesh.shape[a] > 1)


def context_shards(name: str) -> int:
  """How many ways the rule table splits the logical axis `name` on the mesh in context (1 without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else int(np.prod([mesh.shape[a] for a in _split_axes(mesh, name)]))


GPU_PLATFORMS = ('gpu', 'cuda', 'rocm')  # the names JAX gives a GPU platform (compile-only devices' included)


def context_platform() -> str:
  """The platform of the mesh in context (compile-only devices included), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, 'abstract_device', None)
  return getattr(device, 'platform', None) or jax.default_backend()


def kernel_per_shard(fn, in_axes: Sequence[Sequence[str | None]], out_axes: Sequence[str | None]):
  """fn under `jax.shard_map` over the mesh in context, manual over the mesh axes that the rule table splits the
  logical `in_axes` (one tuple of names per argument) into; its one output has the logical axes `out_axes`. For
  an opaque kernel (a Pallas call), which GSPMD cannot split and would otherwise run on gathered arrays. Without
  such axes (no mesh, or every one of them trivial or manual already) fn itself."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn
  spec = lambda axes: P(*(_split_axes(mesh, a) or None for a in axes))
  names = {m for axes in in_axes for a in axes for m in _split_axes(mesh, a)}
  if not names:
    return fn
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(a) for a in in_axes), out_specs=spec(out_axes),
                       axis_names=names, check_vma=False)


def within_mesh(fn, mesh):
  """fn traced with `mesh` as the abstract mesh in context, so that `constrain_activations` applies inside it
  (wrap a step before jax.jit)."""
  if mesh is None:
    return fn

  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped
