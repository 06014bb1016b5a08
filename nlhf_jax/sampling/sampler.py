"""The sampler's entry points: `run` (any row groups), `sample` (the policy alone), `sample_pair` (y ~ policy and
y' ~ its token-level mixture with the reference, in one loop) and their standalone jitted forms.

Each call splits its models into graphdefs and parameters, builds a `Decoder` (sampling/decode.py) and runs it.
`run` names its instructions `SCOPE` in compiled programs (nlhf-compile reads the sampler's phase by it) and
decodes from `decode_weights`: a model computing in bfloat16 from float32 weights reads a bfloat16 copy of its
matrices, made once before the loop, and on GPU a scanned model decodes with its layers unrolled. Outputs are dicts of arrays: {'tokens' int32, 'mask' bool, 'logprobs'
float32}; the log-probabilities are those of the distribution each token was drawn from (docs/sampling.md).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from nlhf_jax.distributed.sharding import GPU_PLATFORMS, context_platform
from nlhf_jax.models import lora
from nlhf_jax.models.transformer import Transformer, unrolled
from nlhf_jax.sampling.config import SamplingConfig
from nlhf_jax.sampling.decode import Decoder
from nlhf_jax.sampling.mixture import Groups, pair_groups, row_keys

SCOPE = 'sample'


def decode_weights(model: nnx.Module | None, unroll: bool = True) -> nnx.Module | None:
  """`model` with its float32 weight matrices in bfloat16 when it computes in bfloat16: cast once, before the
  decode loop, instead of at every token (a float32 policy's weights read at every step are twice the bytes, and
  where the cast does not fuse into the matmul, as on GPUs, a float32 read plus a bfloat16 write and read). Every
  matrix is used through `models.layers.einsum`, which casts it to the bfloat16 activations' dtype, and the
  embedding lookup is cast after the lookup: the samples are the same bit for bit. Vectors (norm scales, biases)
  and, with scale_embeddings, the embedding (its scaling is computed in the weights' dtype), and LoRA adapters
  stay as they are. `unroll` (SamplingConfig.unroll_layers): on GPU, a scanned model as its unrolled twin."""
  if model is None:
    return model
  if unroll:
    model = _unrolled_on_gpu(model)
  if getattr(getattr(model, 'cfg', None), 'compute_dtype', '') != 'bfloat16':
    return model
  keep_embedding = model.cfg.scale_embeddings

  def cast(path, x):
    names = [str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path]
    adapter = any(n.endswith(('_lora_a', '_lora_b')) for n in names)  # LoRA computes its product in float32
    if x.dtype != jnp.float32 or x.ndim < 2 or adapter or (keep_embedding and 'embed' in names):
      return x
    return x.astype(jnp.bfloat16)
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(cast, state))


def _unrolled_on_gpu(model: nnx.Module) -> nnx.Module:
  """On GPU, a scanned Transformer as its unrolled twin (`models.transformer.unrolled`; a LoRA-adapted one's
  adapters split with its layers, `models.lora.unrolled`): in a scanned layer loop XLA's GPU compiler hands cuBLAS
  each layer's weights as a copy sliced out of the stack, at every token (three times the weights' bytes read a
  token), and copies each layer's KV cache out of the stacked cache. The split is made on the weights as they come
  (sharded: no gather), once a step. TPU and CPU read a slice inside the matmul and keep the stack."""
  cfg = getattr(model, 'cfg', None)
  if (not isinstance(model, Transformer) or not cfg.scan_layers or context_platform() not in GPU_PLATFORMS):
    return model
  return lora.unrolled(model) if lora.is_adapted(model) else unrolled(model)


def _split(model: nnx.Module | None) -> tuple[nnx.GraphDef | None, Any]:
  return (None, None) if model is None else nnx.split(model)


def run(policy: nnx.Module | None, ref: nnx.Module | None, batch: dict, keys_bg: jax.Array, cfg: SamplingConfig,
        groups: Groups, beta: float = 0.0, mesh: Mesh | None = None) -> dict:
  """Prefill, decode and finish: {'tokens', 'mask', 'logprobs'} of shape [B, G, T] for the row `groups` of each
  prompt (sampling/mixture.py), keys_bg [B, G] from `row_keys`. On a mesh, the loop runs per batch shard or as one
  GSPMD program (`Decoder.run`, sampling/sharded.py); the samples are the same."""
  with jax.named_scope(SCOPE):  # names the sampler's instructions in compiled programs (nlhf-compile's phases)
    policy, ref = (decode_weights(m, cfg.unroll_layers) for m in (policy, ref))
    (policy_def, policy_params), (ref_def, ref_params) = _split(policy), _split(ref)
    decoder = Decoder(policy_def, ref_def, cfg, groups, beta, mesh)
    return decoder.run((policy_params, ref_params), batch, keys_bg)


def _group(out: dict, g: int) -> dict:
  return {k: v[:, g] for k, v in out.items()}


def sample(graphdef: nnx.GraphDef, params: Any, batch: dict, key: jax.Array, cfg: SamplingConfig,
           mesh: Mesh | None = None) -> dict:
  """Samples one response per prompt from the model (graphdef, params).

  batch: 'prompt' int32 [B, Lp] left-padded, 'prompt_mask' bool [B, Lp], 'example_index' int32 [B] (global
  dataset indices). Returns {'tokens' int32, 'mask' bool, 'logprobs' float32}, each [B, max_new_tokens].
  """
  model = nnx.merge(graphdef, params)
  keys = row_keys(key, batch['example_index'], 1)
  return _group(run(model, None, batch, keys, cfg, Groups(n_policy=1), 0.0, mesh), 0)


def sample_pair(policy_graphdef: nnx.GraphDef, policy_params: Any, ref_graphdef: nnx.GraphDef | None,
                ref_params: Any, batch: dict, key: jax.Array, cfg: SamplingConfig, beta: float,
                mesh: Mesh | None = None) -> dict:
  """For each prompt, y ~ policy and y' ~ pi^beta (token-level geometric mixture with the reference), in one
  decode loop. y uses stream fold_in(key, 0) and y' stream fold_in(key, 1), so y equals
  `sample(policy, key=fold_in(key, 0))` and, at beta = 0 (1), y' equals `sample(policy (reference),
  key=fold_in(key, 1))`. `beta` is a static Python float; at beta = 0 the reference may be None.

  Returns {'policy': {...}, 'mixture': {...}}, each {'tokens', 'mask', 'logprobs'} of shape [B, T].
  """
  groups = pair_groups(beta)
  policy = nnx.merge(policy_graphdef, policy_params)
  ref = nnx.merge(ref_graphdef, ref_params) if groups.ref_rows else None
  keys = row_keys(key, batch['example_index'], 2)
  out = run(policy, ref, batch, keys, cfg, groups, beta, mesh)
  return {'policy': _group(out, 0), 'mixture': _group(out, 1)}


def jit_sample(graphdef: nnx.GraphDef, cfg: SamplingConfig, mesh: Mesh | None = None):
  """A standalone jitted `sample`: fn(params, batch, key) -> outputs (graphdef and config are static)."""
  return jax.jit(lambda params, batch, key: sample(graphdef, params, batch, key, cfg, mesh))


def jit_sample_pair(policy_graphdef: nnx.GraphDef, ref_graphdef: nnx.GraphDef | None, cfg: SamplingConfig,
                    beta: float, mesh: Mesh | None = None):
  """A standalone jitted `sample_pair`: fn(policy_params, ref_params, batch, key) -> outputs. The same program the
  online train step runs inside its jit (prefill, then the decode while_loop, whose caches XLA updates in place),
  so the sampling bench times what training runs."""
  return jax.jit(lambda policy_params, ref_params, batch, key: sample_pair(
      policy_graphdef, policy_params, ref_graphdef, ref_params, batch, key, cfg, beta, mesh))
