"""Pure train steps: step(state, batch) -> (state, metrics).

A step is built from a loss function `loss_fn(model, batch, rng) -> (loss, metrics)` that sees a merged NNX
model; gradient accumulation splits the global batch into micro-batches and scans over them. With LoRA the state
holds the adapters and the step takes the frozen base weights as a third argument (the model merges both).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nlhf_jax.models import lora
from nlhf_jax.training.state import TrainState

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, accum_steps: int = 1):
  """The (unjitted) train step for `loss_fn`."""

  def loss_of_params(params, batch, rng, base):
    return loss_fn(nnx.merge(graphdef, lora.with_base(params, base)), batch, rng)

  grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)

  def grads_and_metrics(params, batch, rng, base):
    if accum_steps == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng, base)
      return loss, metrics, grads
    micro = jax.tree.map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

    def body(carry, inputs):
      i, mb = inputs
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i), base)
      return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, rng, base))
    zero = (zero[0][0], zero[0][1], zero[1])
    total, _ = jax.lax.scan(body, zero, (jnp.arange(accum_steps), micro))
    return jax.tree.map(lambda x: x / accum_steps, total)

  def train_step(state: TrainState, batch: dict, base: dict | None = None):
    loss, metrics, grads = grads_and_metrics(state.params, batch, state.step_key(), base)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=lr_schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
