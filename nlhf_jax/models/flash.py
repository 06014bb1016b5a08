"""Flash attention for training and scoring passes (config.model.attention_impl='flash'): JAX's Pallas Triton
kernel (`jax.experimental.pallas.ops.gpu.attention.mha`), which never writes the attention probabilities to memory.

`attention(q, k, v, key_mask, scale, offset)` is the causal attention of T queries over their own T keys, after
`offset` keys of a cache, with the padding mask `key_mask`, as models/attention.py computes it by position: the
kernel masks by index (a key after the query) and by segment (real tokens are segment 1, padding 0), which is the
same mask for every real token, since positions count the real tokens before (a real key before a real query has
the lower position). Padding queries attend padding keys instead of real ones; their outputs reach nothing that
real tokens read (their keys are masked), as everywhere in the models. The kernel's contract:
- kv heads are repeated to the query heads (the kernel has no groups);
- T is padded to a whole number of blocks (`padded_length`), padded keys in segment 0;
- under a mesh, the kernel runs per shard (`sharding.kernel_per_shard`): batch over the rule table's batch axes,
  heads over 'tensor' (GSPMD cannot split a custom call);
- on a GPU it is compiled by Triton (float32 inputs multiply in TF32, the default precision of XLA's own float32
  dots there too); on the CPU it runs in Pallas's interpreter (tests; slow), with the same blocks.
  TPU has no such kernel here: `check_platform` refuses it when the step is traced.

The compiled kernel is an opaque custom call, so `kernel_flops` gives the HLO reader (nlhf_jax/accelerators/hlo.py)
the FLOPs of each of its calls: the products of the blocks that the causal loops visit (blocks above the diagonal
are skipped), head_dim padded to a power of two as the kernel computes it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as pallas_attention

from nlhf_jax.config.errors import require
from nlhf_jax.distributed.sharding import context_platform, kernel_per_shard

BLOCK = 128  # the forward kernel's query and key block (the kernel's default)
BACKWARD_BLOCK = 32  # the backward kernel's blocks (the kernel's defaults)
_MIN_BLOCK = 16  # the smallest block Triton's dots take


def padded_length(t: int) -> int:
  """T rounded up to a whole number of forward blocks: a multiple of BLOCK, or below it the next power of two."""
  if t >= BLOCK:
    return -(-t // BLOCK) * BLOCK
  return max(_MIN_BLOCK, 1 << (t - 1).bit_length())


def _blocks(t: int) -> tuple[int, int]:
  """(forward block, backward block) for a padded length t."""
  return min(BLOCK, t), min(BACKWARD_BLOCK, t)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, scale: float,
              offset: int = 0) -> jax.Array:
  """Causal attention [B, T, H, D] of q [B, T, H, D] over k, v [B, S, KV, D], keys masked by key_mask [B, S].
  The queries are keys offset..offset+T-1 (a static offset: the continuation of a cache filled up to it, as the
  preference model's responses extend their prompt's cache); keys from offset+T on are not read. The kernel
  aligns queries with keys from the first, so `offset` rows of zeros go before the queries (their outputs are
  dropped)."""
  platform = context_platform()
  check_platform(platform)
  b, t, h, d = q.shape
  group = h // k.shape[2]
  n = offset + t
  k, v, key_mask = k[:, :n], v[:, :n], key_mask[:, :n]
  k, v = (jnp.repeat(x.astype(q.dtype), group, axis=2) if group > 1 else x.astype(q.dtype) for x in (k, v))
  segments = key_mask.astype(jnp.int32)
  tp = padded_length(n)
  pad = lambda x, before: jnp.pad(x, [(0, 0), (before, tp - n)] + [(0, 0)] * (x.ndim - 2))
  if tp != n or offset:
    q, k, v, segments = pad(q, offset), pad(k, 0), pad(v, 0), pad(segments, 0)
  forward, backward = _blocks(tp)
  blocks = pallas_attention.BlockSizes(block_q=forward, block_k=forward, block_q_dkv=backward,
                                       block_kv_dkv=backward, block_q_dq=backward, block_kv_dq=backward)
  interpret = platform == 'cpu'

  def kernel(q, k, v, segments):
    return pallas_attention.mha(q, k, v, segments, sm_scale=scale, causal=True, block_sizes=blocks,
                                interpret=interpret)
  rows = ('batch', None, 'heads', None)
  out = kernel_per_shard(kernel, (rows, rows, rows, ('batch', None)), rows)(q, k, v, segments)
  return out[:, offset:n]


def check_platform(platform: str) -> None:
  """Refuses TPU, which this kernel (Triton) does not compile for."""
  require(platform != 'tpu', "config.model.attention_impl='flash' is a GPU (Triton) kernel; on TPU use "
          "'dot_product' or 'einsum'")


def _triangle(n: int) -> int:
  return n * (n + 1) // 2


def kernel_flops(op_name: str, operand_dims: list[list[int]]) -> float | None:
  """FLOPs of one compiled call of the kernel, from its op_name and its operands' dimensions (the first is the
  queries [B, T, H, D], as run per device); None for a custom call that is not this kernel's."""
  if '/mha_forward/' in f'/{op_name}/':
    per_block = 4  # q k^T and p v: 2 * 2 block products per visited block
    block = _blocks(operand_dims[0][1])[0]
  elif '/mha_backward/' in f'/{op_name}/':
    per_block = 8 + 6  # dk, dv loop: q k^T, p^T do, do v^T, ds^T q; dq loop: q k^T, do v^T, ds k
    block = _blocks(operand_dims[0][1])[1]
  elif '/mha_preprocess_backward/' in f'/{op_name}/':
    return 0.0  # a row sum of o * do: no products
  else:
    return None
  b, t, h, d = operand_dims[0]
  head_dim = 1 << (d - 1).bit_length()
  return float(per_block * b * h * block * block * head_dim * _triangle(t // block))
