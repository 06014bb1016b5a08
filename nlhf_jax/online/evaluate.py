"""Quick online evaluation: the judge's win rate of the policy against the reference on a batch of prompts."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.online.judges import Judge
from nlhf_jax.sampling.sampler import SamplingConfig, sample_pair


def win_rate(graphdef: nnx.GraphDef, policy_params, ref_params, judge: Judge, judge_params, batch: dict,
             key: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Mean P(y > y' | x) with y ~ policy and y' ~ reference (one sample each per prompt); jittable."""
  out = sample_pair(graphdef, policy_params, graphdef, ref_params, batch, key, cfg, 1.0)
  y, y2 = out['policy'], out['mixture']
  p = judge.prob(judge_params, batch['prompt'], batch['prompt_mask'], y['tokens'], y['mask'], y2['tokens'],
                 y2['mask'])
  return jnp.mean(p)
