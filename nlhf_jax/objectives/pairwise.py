"""Pairwise objectives: the preference model's binary cross-entropy and the Bradley-Terry reward-model loss.

Both models output a pair logit f (P(a > b) = sigmoid(f)): f = g(x, a, b) - g(x, b, a) for the preference model,
f = r(x, a) - r(x, b) for the reward model. With a soft label p = P(a > b) the loss is the binary cross-entropy
-(p log sigmoid(f) + (1 - p) log sigmoid(-f)); for the reward model this is exactly the Bradley-Terry loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.objectives.registry import register_loss

CALIBRATION_BINS = 10


def binary_cross_entropy(logit: jax.Array, label: jax.Array) -> jax.Array:
  """Per-example -(p log sigmoid(f) + (1 - p) log sigmoid(-f)), stable for any f."""
  return -(label * jax.nn.log_sigmoid(logit) + (1.0 - label) * jax.nn.log_sigmoid(-logit))


def calibration_error(prob: jax.Array, label: jax.Array, bins: int = CALIBRATION_BINS) -> jax.Array:
  """Expected calibration error: sum over equal-width bins of predicted P(a > b) of
  (bin size / N) * |mean prediction - mean label|."""
  idx = jnp.clip((prob * bins).astype(jnp.int32), 0, bins - 1)
  onehot = jax.nn.one_hot(idx, bins, dtype=jnp.float32)  # [N, bins]
  count = onehot.sum(0)
  gap = jnp.abs(onehot.T @ prob - onehot.T @ label)  # per bin: |sum pred - sum label|
  return jnp.sum(jnp.where(count > 0, gap, 0.0)) / prob.shape[0]


def pair_metrics(logit: jax.Array, label: jax.Array) -> dict:
  """Accuracy (on pairs whose label is not a tie), log-loss and calibration error."""
  prob = jax.nn.sigmoid(logit)
  decided = (label != 0.5).astype(jnp.float32)
  correct = ((logit > 0) == (label > 0.5)).astype(jnp.float32) * decided
  return {'accuracy': correct.sum() / jnp.maximum(decided.sum(), 1.0),
          'log_loss': binary_cross_entropy(logit, label).mean(),
          'calibration_error': calibration_error(prob, label)}


def pair_loss(model, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
  """Loss of a PreferenceModel or RewardModel on a pairs batch (label: batch['preference'] = P(a > b))."""
  del rng
  label = batch['preference'].astype(jnp.float32)
  logit = model(batch)
  return binary_cross_entropy(logit, label).mean(), pair_metrics(logit, label)


register_loss('pairwise', 'supervised', pair_loss)


def swap_pairs(batch: dict) -> dict:
  """The same pairs with a and b exchanged (and the label complemented)."""
  out = dict(batch)
  for field in ('response', 'response_mask'):
    a, b = field.replace('response', 'response_a'), field.replace('response', 'response_b')
    out[a], out[b] = batch[b], batch[a]
  out['preference'] = 1.0 - batch['preference']
  return out


def antisymmetry_error(model, batch: dict) -> jax.Array:
  """max |P(a > b) + P(b > a) - 1| over the batch, both computed by forward passes."""
  return jnp.max(jnp.abs(jax.nn.sigmoid(model(batch)) + jax.nn.sigmoid(model(swap_pairs(batch))) - 1.0))


def evaluate_pairs(graphdef, params, batches) -> dict:
  """Held-out metrics of a preference or reward model over evaluation batches (rows with valid=False skipped):
  accuracy, log-loss, calibration error and the antisymmetry error measured with swapped pairs."""
  @jax.jit
  def logits(params, batch):
    model = nnx.merge(graphdef, params)
    return model(batch), model(swap_pairs(batch))

  fwd, bwd, labels = [], [], []
  for batch in batches:
    valid = np.asarray(batch.pop('valid', np.ones(len(batch['preference']), bool)))
    f, b = jax.device_get(logits(params, batch))
    fwd.append(f[valid]), bwd.append(b[valid]), labels.append(np.asarray(batch['preference'])[valid])
  f, b, y = (jnp.asarray(np.concatenate(v)) for v in (fwd, bwd, labels))
  out = {k: float(v) for k, v in pair_metrics(f, y).items()}
  out['antisymmetry_error'] = float(jnp.max(jnp.abs(jax.nn.sigmoid(f) + jax.nn.sigmoid(b) - 1.0)))
  out['num_pairs'] = int(f.shape[0])
  return out
