"""`DecodeState`: the decode loop's carry, a frozen pytree (flax.struct) with one typed field per part.

B prompts, G rows per prompt (sampling/mixture.py), T = max_new_tokens. `t` counts the tokens sampled so far;
token t of every row is written at `tokens[:, :, t]` and `logprobs[:, :, t]` (pad and 0 once a row is done), and
`done` turns true at a row's first stop id. `caches` maps each decoding model ('policy', 'ref') to its KV cache
of Lp + T slots: the prompt's Lp once per prompt (its 'prefix'), then T per sampled row. `prompt_width` (Lp,
static) places token t at slot Lp + t - 1.
The state is replaced, never mutated: `record` returns the next one.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from nlhf_jax.sampling.config import SamplingConfig


@flax.struct.dataclass
class DecodeState:
  t: jax.Array  # int32 []: tokens sampled so far
  tokens: jax.Array  # int32 [B, G, T]
  logprobs: jax.Array  # float32 [B, G, T]
  done: jax.Array  # bool [B, G]
  keys: jax.Array  # [B, G] row keys
  prompt_len: jax.Array  # int32 [B]: real (unpadded) prompt tokens
  caches: dict[str, Any]  # model name -> its KV cache
  prompt_width: int = flax.struct.field(pytree_node=False)  # Lp, the prompts' padded width

  @classmethod
  def start(cls, prompt_mask: jax.Array, keys_bg: jax.Array, caches: dict[str, Any], cfg: SamplingConfig
            ) -> DecodeState:
    """Before the first token: nothing sampled, no row done."""
    b, g = keys_bg.shape[:2]
    return cls(t=jnp.zeros((), jnp.int32),
               tokens=jnp.full((b, g, cfg.max_new_tokens), cfg.pad_id, jnp.int32),
               logprobs=jnp.zeros((b, g, cfg.max_new_tokens), jnp.float32),
               done=jnp.zeros((b, g), bool), keys=keys_bg, prompt_len=prompt_mask.sum(axis=1).astype(jnp.int32),
               caches=caches, prompt_width=prompt_mask.shape[1])

  def last_tokens(self) -> jax.Array:
    """[B, G] the tokens sampled at step t - 1."""
    return jax.lax.dynamic_index_in_dim(self.tokens, self.t - 1, axis=2, keepdims=False)

  def running(self) -> jax.Array:
    """int32 []: rows not done."""
    return jnp.sum(~self.done, dtype=jnp.int32)

  def record(self, tokens_bg: jax.Array, logp_bg: jax.Array, cfg: SamplingConfig) -> DecodeState:
    """Writes step t's tokens (pad once a row is done), updates `done` and moves to step t + 1."""
    tokens_bg = jnp.where(self.done, cfg.pad_id, tokens_bg)
    logp_bg = jnp.where(self.done, 0.0, logp_bg)
    write = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[..., None].astype(buf.dtype), self.t, axis=2)
    return self.replace(tokens=write(self.tokens, tokens_bg), logprobs=write(self.logprobs, logp_bg),
                        done=self.done | cfg.is_stop(tokens_bg), t=self.t + 1)
