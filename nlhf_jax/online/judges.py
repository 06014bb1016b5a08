"""Judges behind one interface: P(y > y' | x) for sampled pairs, inside the jitted train step.

Kinds (config.online.judge):
- 'preference_model': a frozen PreferenceModel checkpoint, P = sigmoid(f(x, y, y'));
- 'reward_model': a frozen RewardModel checkpoint used as sigmoid(r(x, y) - r(x, y'));
- 'oracle': a programmatic judge named by config.online.oracle (see nlhf_jax/online/oracles.py);
- 'prompted': a language model run asked which of the two responses is better, in both orders
  (nlhf_jax/online/prompted.py; built from the whole config by `prompted.plan`).
With config.online.binary_judgements the probability is replaced by a 0/1 judgement drawn from it (the paper's
model-free variant). Frozen parameters are sharded by the rule table and are never differentiated.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from nlhf_jax.config import ConfigError
from nlhf_jax.models.judges import PreferenceModel, RewardModel, pair_scorer
from nlhf_jax.training.checkpointing import load_frozen

JUDGE_KINDS = ('preference_model', 'reward_model', 'oracle', 'prompted')


def resolve_oracle(spec: str, key: str = 'config.online.oracle') -> Callable:
  """'package.module:function' or 'package.module:factory(arg, ...)' (literal Python arguments); errors name
  the config `key` that gave the spec."""
  match = re.fullmatch(r'([\w.]+):(\w+)(?:\((.*)\))?', spec or '')
  if not match:
    raise ConfigError(f"{key}={spec!r}: expected 'module:function' or 'module:factory(args)', "
                      "e.g. 'nlhf_jax.online.oracles:more_of(\"a\")'")
  module_name, attr, args = match.groups()
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f'{key}={spec!r}: cannot import it ({e})') from e
  if args is not None:
    fn = fn(*ast.literal_eval(f'({args},)')) if args.strip() else fn()
  return fn


def _on_host(fn: Callable) -> Callable:
  def call(*arrays):
    out_shape = jax.ShapeDtypeStruct(arrays[0].shape[:1], jnp.float32)
    host = lambda *xs: np.asarray(fn(*xs), np.float32)
    return jax.pure_callback(host, out_shape, *arrays, vmap_method='sequential')
  return call


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (holds arrays)
class Judge:
  """prob(params, prompt, prompt_mask, y, y_mask, y2, y2_mask) -> P(y > y2 | x), float32 [B]; for reward models
  also rewards(params, prompt, prompt_mask, y, y_mask, y2, y2_mask) -> (r(x, y), r(x, y2))."""
  kind: str
  params: Any  # frozen pytree (None for oracles): pass it to the jitted step as an argument
  _prob: Callable
  _rewards: Callable | None = None

  def prob(self, params, *texts):
    return self._prob(params, *texts)

  def rewards(self, params, *texts):
    if self._rewards is None:
      raise ConfigError(f"this objective needs a scalar reward; config.online.judge={self.kind!r} gives only "
                        "pairwise preferences: use judge='reward_model'")
    return self._rewards(params, *texts)


def make_judge(kind: str, mesh: Mesh, checkpoint: str = '', oracle: str = '', dtype: str = '') -> Judge:
  if kind == 'oracle':
    fn = resolve_oracle(oracle)
    fn = _on_host(fn) if getattr(fn, 'runs_on_host', False) else fn
    return Judge(kind, None, lambda params, *texts: fn(*texts).astype(jnp.float32))
  if kind not in JUDGE_KINDS:
    raise ConfigError(f'config.online.judge={kind!r}: choose one of {", ".join(JUDGE_KINDS)}')
  if not checkpoint:
    raise ConfigError(f"config.online.judge={kind!r} needs config.online.judge_checkpoint (the --workdir of the "
                      f"{kind} run)")
  if kind == 'prompted':
    raise ConfigError("config.online.judge='prompted' reads its template and answers from the config: build it "
                      'with nlhf_jax.online.prompted.plan(cfg, mesh)')
  frozen = load_frozen(checkpoint, PreferenceModel if kind == 'preference_model' else RewardModel, mesh, dtype)
  return model_judge(kind, frozen.graphdef, frozen.params)


def model_judge(kind: str, graphdef: nnx.GraphDef, params) -> Judge:
  """A judge from a preference or reward model's graphdef and (frozen) parameters: `score_pairs` of
  nlhf_jax/models/judges.py on the sampled texts (and, for a reward model, both rewards)."""
  score_pairs = pair_scorer(graphdef)
  prob = lambda p, x, xm, y, ym, y2, y2m: score_pairs(p, (x, xm), (y, ym), (y2, y2m))
  rewards = None
  if kind == 'reward_model':  # both rewards with the prompt read once
    rewards = lambda p, *texts: nnx.merge(graphdef, p).rewards(*texts)
  return Judge(kind, params, prob, rewards)


def binary_judgement(prob: jax.Array, key: jax.Array, example_index: jax.Array) -> jax.Array:
  """0/1 judgements drawn with probability `prob` [B] (the model-free variant). Row b's draw uses
  fold_in(key, example_index[b]), so it depends on the example, not on its position, the mesh or the process."""
  uniform = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(example_index)
  return (uniform < prob).astype(jnp.float32)
