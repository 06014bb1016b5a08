"""Train state built sharded from the start: eval_shape -> shardings -> jit(init, out_shardings)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nlhf_jax.distributed import like_params, named, param_specs
from nlhf_jax.training.state import TrainState

ModelCtor = Callable[[nnx.Rngs], nnx.Module]
# The part of a params tree (pure dict) that is trained, e.g. LoRA's adapters; the rest stays out of the state.
Trainable = Callable[[dict], dict]


def _everything(tree: dict) -> dict:
  return tree


def abstract_model(make_model: ModelCtor) -> tuple[nnx.GraphDef, nnx.State]:
  """The model's graph definition and its parameters as ShapeDtypeStructs with logical-axis metadata."""
  return nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))


def init_params(make_model: ModelCtor, key: jax.Array) -> dict:
  return nnx.to_pure_dict(nnx.split(make_model(nnx.Rngs(params=key)))[1])


def state_shardings(mesh: Mesh, abstract_params: nnx.State, tx: optax.GradientTransformation,
                    extras_specs=None, trainable: Trainable | None = None) -> TrainState:
  """NamedShardings of every leaf of the train state, as the rule table implies."""
  trainable = trainable or _everything
  p_specs = trainable(param_specs(abstract_params))
  opt_shape = jax.eval_shape(tx.init, trainable(nnx.to_pure_dict(abstract_params)))
  specs = TrainState(step=P(), params=p_specs, opt_state=like_params(opt_shape, p_specs), rng=P(),
                     extras=extras_specs)
  return named(mesh, specs)


def state_initializer(make_model: ModelCtor, tx: optax.GradientTransformation, mesh: Mesh,
                      make_extras: Callable[[dict], object] | None = None, extras_specs=None,
                      trainable: Trainable | None = None):
  """(graphdef, init(seed) -> TrainState, shardings). Jit `init` with out_shardings=shardings so that no full
  copy of the parameters ever lives on one device (see `create_state`). With `trainable` the state holds only
  that part of the parameters (the rest is never materialised: dead code under jit)."""
  trainable = trainable or _everything
  graphdef, abstract_params = abstract_model(make_model)
  shardings = state_shardings(mesh, abstract_params, tx, extras_specs, trainable)

  def init(seed):
    root = jax.random.key(seed)
    params = trainable(init_params(make_model, jax.random.fold_in(root, 0)))
    extras = None if make_extras is None else make_extras(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(root, 1)), extras=extras)

  return graphdef, init, shardings


def state_from_params(tx: optax.GradientTransformation, make_extras: Callable[[dict], object] | None = None):
  """start(seed, params) -> TrainState: step 0, the given (e.g. restored) `params`, a fresh optimizer state, the
  rng of `state_initializer`'s init for the same seed and the extras built from the params. Jit it with
  out_shardings=shardings and donate_argnums=1: the parameters become the state's without a copy, and no random
  initialisation is computed."""
  def start(seed, params):
    root = jax.random.key(seed)
    extras = None if make_extras is None else make_extras(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(root, 1)), extras=extras)
  return start


def create_state(make_model: ModelCtor, tx: optax.GradientTransformation, mesh: Mesh, seed: int, **kwargs
                 ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, state, shardings): a fresh train state, sharded from the start."""
  graphdef, init, shardings = state_initializer(make_model, tx, mesh, **kwargs)
  return graphdef, jax.jit(init, out_shardings=shardings)(seed), shardings


def abstract_state(shardings: TrainState, state_shapes: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings, e.g. a restore target on a new mesh."""
  return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, state_shapes)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
