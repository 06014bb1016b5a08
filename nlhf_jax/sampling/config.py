"""`SamplingConfig`: how responses are sampled, built from a config section by one function.

Its option fields carry the names of a `sampling` section (max_new_tokens, temperature, top_k, top_p,
sharded_decode, decode_tensor, decode_segments, unroll_layers, kv_cache_dtype: config.online.sampling, config/schema.py's
SamplingOptions), so `SamplingConfig.from_section` builds it from config.online.sampling, from an evaluation's
config's `sampling` or from the pipeline's pairs stage's `sampling` alike (a section without an option leaves its
default). Every value is
checked by the one check of sampling options, `nlhf_jax.config.validate.check_sampling` (ConfigError, a
ValueError), which the config layer also runs on those sections before any work. The stop and pad ids come from
the tokenizer and the model, not from the section.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from nlhf_jax.config.validate import check_sampling


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample responses. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. A row ends at
  the first of `stop_ids` it samples (the tokenizer's eos and end-of-turn ids; none: every row runs to
  max_new_tokens)."""
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = (2,)
  pad_id: int = 0
  # Models larger than one device: keep the parameters sharded over 'fsdp' in the decode loop (each step gathers
  # a layer's weights as it needs them) instead of gathering them whole at the per-shard loop's boundary.
  sharded_decode: bool = False
  # The sampler's own layout on a mesh (sampling/sharded.py, `regroup`): N > 0 regroups the mesh's devices, in
  # their order, so that each N consecutive ones split every decoding model's heads, MLP and vocabulary (tensor
  # parallel: each device reads 1/N of the weights at every token) and the groups split the rows; -1: one group
  # of every device; 0: decode on the training mesh's own layout (rows over data and fsdp, weights gathered over
  # fsdp at the loop's boundary). The parameters move into the layout once a step; the samples are the same.
  decode_tensor: int = 0
  # The decode loop in this many parts (Decoder.segments): each part attends over the cache slots written by its
  # last step only, so that a step reads the filled part of the cache (up to 1/parts more) instead of every slot.
  # Each part is one more compiled copy of the loop's body. 1: one loop, every step over every written slot.
  decode_segments: int = 1
  # On GPU, decode a scanned model from an unrolled copy of its layers, split once a step (sampler.decode_weights:
  # in a scanned layer loop XLA's GPU compiler copies each layer's weights out of the stack at every token). The
  # copy costs the decoding weights' memory once more at their sharding (on one GPU, all of them); False keeps the
  # stack and that memory. TPU and CPU always keep the stack.
  unroll_layers: bool = True
  # dtype of the KV caches. '' (auto): the models' compute dtype, except float32 on a CPU backend, where XLA
  # rewrites each token's write into a bfloat16 cache as a float32 round trip of the whole cache and feeds the
  # attention matmuls a float32 copy of it (a bfloat16 cache made the CPU decode loop 1.4x slower). Or 'float32',
  # 'bfloat16'.
  kv_cache_dtype: str = ''

  def __post_init__(self):
    check_sampling(self, 'SamplingConfig.')
    ids = (self.stop_ids,) if isinstance(self.stop_ids, int) else self.stop_ids  # one id or several
    object.__setattr__(self, 'stop_ids', tuple(int(i) for i in ids))

  @classmethod
  def from_section(cls, section: Any, stop_ids: tuple[int, ...], pad_id: int) -> SamplingConfig:
    """The sampling options of `section`, a `sampling` section (config.online.sampling, a SamplingOptions, or the
    ConfigDict or dict `sampling` of an evaluation's or the pipeline's pairs stage's config), under their own
    names; options it lacks keep their defaults."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ('stop_ids', 'pad_id')]
    get = (lambda k: section[k]) if hasattr(section, 'keys') else (lambda k: getattr(section, k))
    has = (lambda k: k in section) if hasattr(section, 'keys') else (lambda k: hasattr(section, k))
    return cls(**{k: get(k) for k in names if has(k)}, stop_ids=stop_ids, pad_id=pad_id)

  def cache_dtype(self, compute_dtype, mesh: Mesh | None = None):
    """The dtype the caches are made in (see `kv_cache_dtype`) for models computing in `compute_dtype`."""
    if self.kv_cache_dtype:
      return jnp.dtype(self.kv_cache_dtype)
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return jnp.dtype(jnp.float32) if platform == 'cpu' else jnp.dtype(compute_dtype)

  def is_stop(self, tokens: jax.Array) -> jax.Array:
    """bool, the shape of `tokens`: which tokens end a response."""
    stop = jnp.zeros(tokens.shape, bool)
    for i in self.stop_ids:
      stop |= tokens == i
    return stop
