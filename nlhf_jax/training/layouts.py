"""Parameter layouts and dtypes across checkpoints: a params-only restore reads a checkpoint in the layout and
dtype it was written with and returns it in the target's.

A Transformer's parameters (at the top of a language model's tree, under 'backbone' in a judge's) are unrolled
(`layer_0` ... `layer_{L-1}`) or stacked (one 'layers' subtree with a leading layer axis, config.model.scan_layers).
`saved_target(target, saved_stacked)` is the restore target in the checkpoint's own layout (the target's dtypes
and shardings, with or without the leading layer axis; Orbax casts to those dtypes as it reads, e.g. a float32
SFT checkpoint into a bfloat16 frozen reference) and `to_target(params, target)` converts the restored arrays
to the target's layout, placed on its shardings. A conversion holds both layouts of the parameters at once for a
moment (sharded as the target).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from nlhf_jax.models.transformer import STACK, stack_layers, unstack_layers


def _is_model(tree) -> bool:
  return isinstance(tree, dict) and 'embed' in tree and (STACK in tree or 'layer_0' in tree)


def _num_layers(tree: dict) -> int:
  if STACK in tree:
    return jax.tree.leaves(tree[STACK])[0].shape[0]
  return sum(1 for k in tree if k.startswith('layer_'))


def _map_models(fn, tree):
  """fn on every Transformer parameter tree inside `tree` (the tree itself or a judge's 'backbone')."""
  if _is_model(tree):
    return fn(tree)
  if isinstance(tree, dict):
    return {k: _map_models(fn, v) for k, v in tree.items()}
  return tree


def is_stacked(tree) -> bool | None:
  """Whether the (first) Transformer in `tree` is stacked; None when `tree` holds none."""
  found = []
  _map_models(lambda t: found.append(STACK in t) or t, tree)
  return found[0] if found else None


def _with_spec(x, spec: P, shape) -> jax.ShapeDtypeStruct:
  sharding = x.sharding
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, spec)
  return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)


def _stack_abstract(tree: dict) -> dict:
  n = _num_layers(tree)
  add = lambda x: _with_spec(x, P(None, *x.sharding.spec), (n,) + x.shape)
  out = {k: v for k, v in tree.items() if not k.startswith('layer_')}
  out[STACK] = jax.tree.map(add, tree['layer_0'])
  return out


def _unstack_abstract(tree: dict) -> dict:
  drop = lambda x: _with_spec(x, P(*x.sharding.spec[1:]), x.shape[1:])
  out = {k: v for k, v in tree.items() if k != STACK}
  layer = jax.tree.map(drop, tree[STACK])
  out.update({f'layer_{i}': layer for i in range(_num_layers(tree))})
  return out


def saved_target(target: Any, saved_stacked: bool | None) -> Any:
  """The restore target in the checkpoint's layout (`saved_stacked`; None: the target's own)."""
  if saved_stacked is None or saved_stacked == is_stacked(target):
    return target
  return _map_models(_stack_abstract if saved_stacked else _unstack_abstract, target)


def to_target(params: Any, target: Any) -> Any:
  """Restored `params` in the target's layout, dtypes and shardings."""
  wanted = is_stacked(target)
  if wanted is not None and is_stacked(params) != wanted:
    convert = lambda t: stack_layers(t, _num_layers(t)) if wanted else unstack_layers(t, _num_layers(t))
    params = _map_models(convert, params)

  def place(x, t):
    if x.dtype == t.dtype and getattr(x, 'sharding', None) == t.sharding:
      return x
    return jax.device_put(jnp.asarray(x, t.dtype), t.sharding)
  return jax.tree.map(place, params, target)
