"""The rows one decode loop samples: groups of rows per prompt, the logits of each group, the keys of each row.

Every prompt owns G rows, in three groups: n_policy rows sampled from the policy, n_mix rows from the token-level
geometric mixture softmax((1 - beta) * logits_policy + beta * logits_ref), and n_ref rows from the reference. The
policy decodes n_policy + n_mix rows per prompt and the reference n_mix + n_ref (`Groups.decoders`); a model with
no rows is never run. Rows are laid out prompt-major ([B, G] flattened), so a batch sharded over ('data', 'fsdp')
keeps all rows of a prompt on the device that holds the prompt: repeating, mixing and splitting the groups is local.

Randomness: each group has its own stream key; row (b, g) uses fold_in(stream_key_g, example_index_b) (`row_keys`)
and token t of it fold_in(that, t). Samples therefore depend on the seed, the stream and the example only - not on
the batch composition, the position in the batch, the mesh or the number of processes.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

POLICY, REF = 'policy', 'ref'


class Groups(NamedTuple):
  """Rows per prompt: sampled from the policy, from the mixture, from the reference."""
  n_policy: int = 1
  n_mix: int = 0
  n_ref: int = 0

  @property
  def total(self) -> int:
    return self.n_policy + self.n_mix + self.n_ref

  @property
  def policy_rows(self) -> int:
    return self.n_policy + self.n_mix

  @property
  def ref_rows(self) -> int:
    return self.n_mix + self.n_ref

  def decoders(self) -> tuple[tuple[str, int, int], ...]:
    """(model, its first group, its rows per prompt) of each model that decodes rows, the policy first."""
    out = ((POLICY, 0, self.policy_rows), (REF, self.n_policy, self.ref_rows))
    return tuple(d for d in out if d[2])


def pair_groups(beta: float) -> Groups:
  """Row groups of the (y ~ policy, y' ~ mixture) pair: the mixture group degenerates to a policy group at
  beta = 0 (the reference is not run) and to a reference group at beta = 1 (the policy decodes B rows only)."""
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f'beta must be in [0, 1], got {beta}')
  if beta == 0.0:
    return Groups(n_policy=2)
  if beta == 1.0:
    return Groups(n_policy=1, n_ref=1)
  return Groups(n_policy=1, n_mix=1)


def mix_logits(policy_bgv: jax.Array | None, ref_bgv: jax.Array | None, groups: Groups, beta: float) -> jax.Array:
  """[B, G, V] logits of every row: policy rows, then mixture rows, then reference rows."""
  parts = []
  if groups.n_policy:
    parts.append(policy_bgv[:, :groups.n_policy])
  if groups.n_mix:
    parts.append((1.0 - beta) * policy_bgv[:, groups.n_policy:] + beta * ref_bgv[:, :groups.n_mix])
  if groups.n_ref:
    parts.append(ref_bgv[:, groups.n_mix:])
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def row_keys(key: jax.Array, example_index_b: jax.Array, num_groups: int) -> jax.Array:
  """[B, G] keys: fold_in(fold_in(key, g), example_index_b) for group g; one group uses `key` itself."""
  streams = [key] if num_groups == 1 else [jax.random.fold_in(key, g) for g in range(num_groups)]
  per_example = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(example_index_b)
  return jnp.stack([per_example(k) for k in streams], axis=1)


def as_rows(x_bg: jax.Array) -> jax.Array:
  """[B, G, ...] -> [B * G, ...] (prompt-major)."""
  return x_bg.reshape((-1,) + x_bg.shape[2:])


def as_groups(x_r: jax.Array, groups_per_prompt: int) -> jax.Array:
  """[B * G, ...] -> [B, G, ...]."""
  return x_r.reshape((-1, groups_per_prompt) + x_r.shape[1:])
