"""Flash attention (config.model.attention_impl='flash'): kernels that never write the attention probabilities to
memory.

`attention(q, k, v, key_mask, scale, offset)`, for passes of several positions (training, scoring, a prefill), is
JAX's Pallas Triton kernel (`jax.experimental.pallas.ops.gpu.attention.mha`): the causal attention of T queries
over their own T keys, after `offset` keys of a cache, with the padding mask `key_mask`, as models/attention.py
computes it by position: the kernel masks by index (a key after the query) and by segment (real tokens are
segment 1, padding 0), which is the same mask for every real token, since positions count the real tokens before
(a real key before a real query has the lower position). Padding queries attend padding keys instead of real ones;
their outputs reach nothing that real tokens read (their keys are masked), as everywhere in the models. Its
contract:
- kv heads are repeated to the query heads (the kernel has no groups);
- T is padded to a whole number of blocks (`padded_length`), padded keys in segment 0;
- under a mesh, the kernel runs per shard (`sharding.kernel_per_shard`): batch over the rule table's batch axes,
  heads over 'tensor' (GSPMD cannot split a custom call);
- on a GPU it is compiled by Triton (float32 inputs multiply in TF32, the default precision of XLA's own float32
  dots there too); on the CPU it runs in Pallas's interpreter (tests; slow), with the same blocks.
  TPU has no such kernel here: `check_platform` refuses it when the step is traced.

`decode(q, k, v, allowed, scale, span, prefix)`, for one decoded position over a KV cache, is a Pallas Triton
kernel of this module: one program per (prompt, kv head) streams the prompt's prefix cache once for all the
prompt's rows and query heads, then each row's own slots, keeping the softmax's running maximum and sum on chip
(the einsum form writes the float32 logits, reads them back for the softmax and writes the probabilities). It
reads the cache where it lies: the whole layer's buffers are its operands and a static `span` says how many of
the rows' own slots it reads (a slice would be copied for the call). The mask is the einsum form's, as an
additive bias; a query that may attend no key gets zeros, where the einsum form averages the values (no decoded
row has none: it attends its own slot). Queries of one program (the prompt's rows times the kv head's group) are
padded to a power of two of at least 16, the smallest block Triton's dots take; a row's own slots are read
against all of them, other rows' queries masked. Float32 operands multiply in float32 (not TF32), as the einsum
form's products do.

The compiled kernels are opaque custom calls, so `kernel_costs` gives the HLO reader
(nlhf_jax/accelerators/hlo.py) the FLOPs of each call (the products of the blocks that the loops visit: above the
causal diagonal none, head_dim padded to a power of two as the kernel computes it) and, for `decode`, the bytes it
reads (its own slots up to `span`, not the whole buffers it is handed).
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
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


_NEG = -1e30
DECODE_BLOCK = 64  # slots a decode program reads at a time (at most)


def decode_block(head_dim: int, length: int) -> int | None:
  """The decode kernel's block for a run of `length` slots (the rows' span, or the prefix's width): of the powers
  of two from 16 (Triton's smallest dot) up to DECODE_BLOCK and `length`, the one that reads the fewest slots
  (`_slots_read`), the largest of those; None when there is none, or head_dim is not a power of two (a Triton
  block is): the einsum form decodes then."""
  if head_dim & (head_dim - 1) or head_dim < _MIN_BLOCK or length < _MIN_BLOCK:
    return None
  blocks = [b for b in (DECODE_BLOCK, DECODE_BLOCK // 2, DECODE_BLOCK // 4) if _MIN_BLOCK <= b <= length]
  return min(blocks, key=lambda b: _slots_read(length, b))


def decodable(head_dim: int, span: int, width: int) -> bool:
  """Whether `decode` takes these: a block for the rows' span and for the prefix's width (0: none)."""
  return decode_block(head_dim, span) is not None and (not width or decode_block(head_dim, width) is not None)


def _slots_read(length: int, block: int) -> int:
  """Slots a decode program reads of `length`: whole blocks, the last one ending at `length` (overlapping the one
  before it, whose slots it masks) when `length` is not a multiple of the block."""
  return -(-length // block) * block


def _decode_kernel(q_ref, k_ref, v_ref, bias_ref, pk_ref, pv_ref, pbias_ref, o_ref, *, scale: float, rows: int,
                   group: int, span: int, block: int, width: int, prefix_block: int):
  """One (prompt, kv head): queries [M, D] (the prompt's rows x the group, padded) over the prefix's `width`
  slots, then each row's first `span` own slots; the online softmax of flash attention, in float32. A length that
  is not a whole number of blocks ends with the block that ends at it, its slots already read masked."""
  p, h = pl.program_id(0), pl.program_id(1)
  q = q_ref[...]
  m, d = q.shape
  exact = False if q.dtype == jnp.float32 else None  # float32 products in float32, not TF32, as the einsum form's
  state = (jnp.full((m,), _NEG, jnp.float32), jnp.zeros((m,), jnp.float32), jnp.zeros((m, d), jnp.float32))

  def update(state, k, v, bias, queries=None, fresh=None):
    top, total, acc = state
    if fresh is not None:  # the last block's slots that the block before has read
      bias = jnp.where(fresh, bias, _NEG)
    k, v = k.astype(q.dtype), v.astype(q.dtype)  # a narrower cache's block, widened on chip
    s = plgpu.dot(q, k, trans_b=True, allow_tf32=exact).astype(jnp.float32) * scale + bias[None, :]
    if queries is not None:  # another row's slots: not these queries' keys
      s = jnp.where(queries[:, None], s, _NEG)
    new_top = jnp.maximum(top, s.max(axis=-1))
    e = jnp.where(s > 0.5 * _NEG, jnp.exp(s - new_top[:, None]), 0.0)
    rescale = jnp.exp(top - new_top)
    return (new_top, rescale * total + e.sum(axis=-1),
            rescale[:, None] * acc + plgpu.dot(e.astype(v.dtype), v, allow_tf32=exact).astype(jnp.float32))

  def stream(state, length, block, read):  # read(slots) -> (k, v, bias[, queries]) of a block of slots
    state = jax.lax.fori_loop(0, length // block, lambda j, state: update(state, *read(pl.ds(j * block, block))),
                              state)
    if length % block:
      fresh = jnp.arange(block) >= block - length % block
      state = update(state, *read(pl.ds(length - block, block)), fresh=fresh)
    return state

  if width:
    state = stream(state, width, prefix_block, lambda at: (pk_ref[p, h, at, :], pv_ref[p, h, at, :],
                                                           pbias_ref[p, at]))
  row_of = jnp.arange(m) // group
  for r in range(rows):
    b, mine = p * rows + r, (row_of == r if rows > 1 else None)

    def read(at, b=b, mine=mine):
      return k_ref[b, h, at, :], v_ref[b, h, at, :], bias_ref[b, at], mine
    state = stream(state, span, block, read)
  _, total, acc = state
  o_ref[...] = (acc / jnp.maximum(total, 1e-30)[:, None]).astype(o_ref.dtype)


def _queries(rows: int, group: int) -> int:
  """A decode program's query rows: the prompt's rows x the group, padded to a power of two of at least 16."""
  return max(_MIN_BLOCK, 1 << (rows * group - 1).bit_length())


def decode(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, scale: float, span: int,
           prefix: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """Attention [B, H, D] of one decoded position's queries q [B, H, D] over the first `span` slots of k, v
  [B, KV, S, D] (a layer's cache buffers, head-major), after the prefix's keys and values (pk, pv [P, KV, W, D]:
  each run of B / P consecutive rows' prompt, read once for the run) if given. allowed [B, W + span]: the keys a
  query may attend, the prefix's slots first (the same for every row of a run). Computed in the wider of q's
  and the cache's dtypes (a narrower cache's blocks widened on chip), returned in q's. The block comes from
  `decode_block`, one for the span and one for the prefix (`decodable`: the caller's test)."""
  platform = context_platform()
  check_platform(platform)
  width = 0 if prefix is None else prefix[0].shape[2]
  if not decodable(q.shape[-1], span, width) or span > k.shape[2] or allowed.shape != (q.shape[0], width + span) \
      or (prefix is not None and q.shape[0] % prefix[0].shape[0]):
    raise ValueError(f'flash.decode: span {span} of {k.shape[2]} slots, prefix width {width}, allowed '
                     f'{allowed.shape}, {q.shape[0]} rows: no block, or shapes that do not fit')
  block, prefix_block = decode_block(q.shape[-1], span), (decode_block(q.shape[-1], width) if width else 0)
  bias = jnp.where(allowed, 0.0, _NEG).astype(jnp.float32)

  def kernel(q, k, v, bias, *prefix):
    b, hq, d = q.shape
    kv = k.shape[1]
    group = hq // kv
    if prefix:
      pk, pv = prefix
      runs, own = pk.shape[0], bias[:, width:]
      pbias = bias[::b // runs, :width]
    else:  # no prefix: the loop over it runs no block; its operands are the rows' own
      pk, pv, runs, own, pbias = k, v, b, bias, bias
    rows = b // runs
    m = _queries(rows, group)
    q = q.astype(jnp.promote_types(q.dtype, k.dtype)).reshape(runs, rows, kv, group, d)
    q = jnp.pad(q.transpose(0, 2, 1, 3, 4).reshape(runs, kv, -1, d), [(0, 0), (0, 0), (0, m - rows * group), (0, 0)])
    body = functools.partial(_decode_kernel, scale=scale, rows=rows, group=group, span=span, block=block,
                             width=width, prefix_block=prefix_block)
    whole = pl.BlockSpec(memory_space=pl.ANY)  # read in place, block by block, by the kernel itself
    out = pl.pallas_call(
        body, grid=(runs, kv), name=f'decode_attention_span{span}_block{block}_width{width}_block{prefix_block}',
        in_specs=[pl.BlockSpec((None, None, m, d), lambda i, j: (i, j, 0, 0))] + [whole] * 6,
        out_specs=pl.BlockSpec((None, None, m, d), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((runs, kv, m, d), q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2), interpret=platform == 'cpu',
    )(q, k, v, own, pk, pv, pbias)
    out = out[:, :, :rows * group].reshape(runs, kv, rows, group, d).transpose(0, 2, 1, 3, 4)
    return out.reshape(b, hq, d)
  cache = ('batch', 'kv_heads', None, None)
  queries = ('batch', 'heads', None)
  args = (q, k, v, bias) + (() if prefix is None else tuple(prefix))
  axes = (queries, cache, cache, ('batch', None)) + (() if prefix is None else (cache, cache))
  return kernel_per_shard(kernel, axes, queries)(*args).astype(q.dtype)


def _triangle(n: int) -> int:
  return n * (n + 1) // 2


def kernel_costs(op_name: str, operands: list[tuple[list[int], float]]) -> tuple[float, float | None] | None:
  """(FLOPs, bytes or None) of one compiled call of a kernel of this module, from its op_name and its operands'
  (dimensions, itemsize), as run per device; bytes None: what its operands and output hold (the reader's own
  count). None for a custom call that is not one of these kernels."""
  name = f'/{op_name}/'
  decoding = re.search(r'/decode_attention_span(\d+)_block(\d+)_width(\d+)_block(\d+)/', name)
  if decoding:
    span, block, width, prefix_block = (int(g) for g in decoding.groups())
    ((runs, kv, m, d), q_size), ((b, *_), cache_size) = operands[:2]
    slots = b // runs * _slots_read(span, block) + (_slots_read(width, prefix_block) if width else 0)  # a program's
    flops = 4.0 * runs * kv * m * d * slots  # q k^T and p v over each slot read, for all m queries
    read = runs * kv * slots * (2 * d * cache_size + 4)  # a program's keys, values and float32 bias
    return flops, 2.0 * runs * kv * m * d * q_size + read  # + the queries and the output
  if '/mha_forward/' in name:
    per_block = 4  # q k^T and p v: 2 * 2 block products per visited block
    block = _blocks(operands[0][0][1])[0]
  elif '/mha_backward/' in name:
    per_block = 8 + 6  # dk, dv loop: q k^T, p^T do, do v^T, ds^T q; dq loop: q k^T, do v^T, ds k
    block = _blocks(operands[0][0][1])[1]
  elif '/mha_preprocess_backward/' in name:
    return 0.0, None  # a row sum of o * do: no products
  else:
    return None
  b, t, h, d = operands[0][0]
  head_dim = 1 << (d - 1).bit_length()
  return float(per_block * b * h * block * block * head_dim * _triangle(t // block)), None
