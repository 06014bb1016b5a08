"""The memory and speed switches of the Transformer change no numbers (docs/architecture.md, "Memory at size"):
scanned layers equal unrolled ones, remat equals no remat, dot_product_attention equals the einsum attention
(sliding windows and padding included), bfloat16 storage is what it says, and checkpoints convert between the
layouts and dtypes on restore."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from nlhf_jax.config import ModelConfig
from nlhf_jax.models import Transformer, init_cache
from nlhf_jax.models.transformer import stack_layers, unstack_layers
from nlhf_jax.training import checkpointing
from tests.helpers import mesh

# Grouped-query attention, a local layer between global ones with its own rope base: every per-layer difference.
CFG = ModelConfig(num_layers=3, num_kv_heads=2, sliding_window=3, layer_types=('local', 'global', 'local'),
                  rope_local_theta=100.0, rope_scaling='linear', rope_factor=2.0)
TOKENS = jax.random.randint(jax.random.key(1), (2, 9), 4, 256)
MASK = jnp.ones((2, 9), bool).at[0, :3].set(False)  # row 0 left-padded


@pytest.fixture(scope='module')
def unrolled():
  graphdef, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))
  return graphdef, nnx.to_pure_dict(params)


def _graphdef(cfg):
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]


def _loss_and_grads(graphdef, params):
  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(TOKENS, MASK)
    return jnp.sum(jnp.where(MASK[..., None], jax.nn.log_softmax(logits), 0.0) ** 2) * 1e-4, logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def _cached_logits(graphdef, params, cfg):
  """Prefill 9 tokens, then decode one more with the cache: the last logits."""
  @jax.jit
  def run(p):
    model = nnx.merge(graphdef, p)
    cache = init_cache(cfg, 2, 10)
    cache['mask'] = cache['mask'].at[:, :9].set(MASK)
    positions = jnp.maximum(jnp.cumsum(MASK, axis=1) - 1, 0)
    _, cache = model(TOKENS, MASK, positions, cache, 0)
    cache['mask'] = cache['mask'].at[:, 9].set(True)
    return model(TOKENS[:, :1], jnp.ones((2, 1), bool), positions[:, -1:] + 1, cache, 9)[0]
  return run(params)


def test_scanned_layers_equal_unrolled_ones(unrolled):
  graphdef, params = unrolled
  scfg = dataclasses.replace(CFG, scan_layers=True)
  stacked = stack_layers(params, CFG.num_layers)
  (loss_u, logits_u), grads_u = _loss_and_grads(graphdef, params)
  (loss_s, logits_s), grads_s = _loss_and_grads(_graphdef(scfg), stacked)
  np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits_u), atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0),
               unstack_layers(grads_s, CFG.num_layers), grads_u)
  np.testing.assert_allclose(np.asarray(_cached_logits(_graphdef(scfg), stacked, scfg)),
                             np.asarray(_cached_logits(graphdef, params, CFG)), atol=1e-6, rtol=0)
  assert init_cache(scfg, 2, 10)['layers']['k'].shape == (3, 2, 2, 10, CFG.head_dim)
  jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked, CFG.num_layers), params)


def test_a_scanned_model_unrolled_for_decoding_is_the_same_model(unrolled):
  """models.transformer.unrolled (the sampler's decode form on GPU): every layer's parameters its own arrays,
  equal to the stack's slices; the same logits with and without the cache."""
  from nlhf_jax.models.transformer import unrolled as unroll
  graphdef, params = unrolled
  scfg = dataclasses.replace(CFG, scan_layers=True)
  scanned = nnx.merge(_graphdef(scfg), stack_layers(params, CFG.num_layers))
  model = unroll(scanned)
  assert not model.cfg.scan_layers and scanned.cfg.scan_layers
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)), params)
  np.testing.assert_allclose(np.asarray(model(TOKENS, MASK)[0]), np.asarray(scanned(TOKENS, MASK)[0]), atol=1e-6)
  g, p = nnx.split(model)
  np.testing.assert_allclose(np.asarray(_cached_logits(g, nnx.to_pure_dict(p), model.cfg)),
                             np.asarray(_cached_logits(graphdef, params, CFG)), atol=1e-6, rtol=0)


def test_the_sampler_unrolls_a_scanned_model_on_gpu_only_and_only_when_asked(unrolled, monkeypatch):
  """sampler.decode_weights: on GPU a scanned model decodes unrolled unless online.sampling.unroll_layers is
  false (the copy's memory kept); elsewhere the stack stays."""
  from nlhf_jax.sampling import sampler
  _, params = unrolled
  scfg = dataclasses.replace(CFG, scan_layers=True)
  scanned = nnx.merge(_graphdef(scfg), stack_layers(params, CFG.num_layers))
  assert sampler.decode_weights(scanned).cfg.scan_layers  # CPU: kept
  monkeypatch.setattr(sampler, 'context_platform', lambda: 'gpu')
  assert not sampler.decode_weights(scanned).cfg.scan_layers
  assert sampler.decode_weights(scanned, unroll=False).cfg.scan_layers


def test_one_decoded_position_keeps_its_projections_apart(unrolled):
  """For one position (off TPU) the q, k, v and the gate and up matmuls take their input through an optimization
  barrier (XLA's dot merger would concatenate their weights at every token); several positions take it as is."""
  graphdef, params = unrolled
  model = nnx.merge(graphdef, params)

  def barriers(t):
    cache = init_cache(CFG, 2, 10)
    jaxpr = jax.make_jaxpr(lambda x: model(x, jnp.ones(x.shape, bool), None, cache, 0)[0])(TOKENS[:, :t])
    return sum(e.primitive.name == 'optimization_barrier' for e in jaxpr.jaxpr.eqns)
  assert barriers(1) == 2 * CFG.num_layers and barriers(4) == 0


def test_scanned_decoding_writes_only_the_new_slots_into_the_carried_stack(unrolled):
  """One decode step over a stacked cache: the layer loop carries the stack (no output sequence of caches, which
  XLA's GPU compiler made into a new stack at every token) and writes each layer's new slot in place (no copy of a
  whole layer's cache)."""
  scfg = dataclasses.replace(CFG, scan_layers=True)
  stacked = stack_layers(unrolled[1], CFG.num_layers)
  cache = init_cache(scfg, 2, 10)

  def decode(p, cache):
    return nnx.merge(_graphdef(scfg), p)(TOKENS[:, :1], jnp.ones((2, 1), bool), jnp.full((2, 1), 9), cache, 9)
  jaxpr = jax.make_jaxpr(decode)(stacked, cache).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  assert len(scans) == 1
  loop = scans[0]
  carried = loop.outvars[:loop.params['num_carry']]
  stack = {name: a.shape for name, a in cache['layers'].items()}
  assert sorted(v.aval.shape for v in carried) == sorted([(2, 1, CFG.d_model), *stack.values()])  # x and the stack
  assert all(v.aval.shape not in stack.values() for v in loop.outvars[loop.params['num_carry']:])
  writes = [e for e in loop.params['jaxpr'].jaxpr.eqns if e.primitive.name == 'dynamic_update_slice']
  updates = sorted(e.invars[1].aval.shape for e in writes)
  assert updates == sorted([(1, 2, 2, 1, CFG.head_dim)] * 2 + [(1, 2, 1)]), updates


@pytest.mark.parametrize('policy', ['dots_saveable', 'full'])
def test_remat_equals_no_remat(unrolled, policy):
  graphdef, params = unrolled
  (_, logits), grads = _loss_and_grads(graphdef, params)
  for cfg in (dataclasses.replace(CFG, remat=policy), dataclasses.replace(CFG, remat=policy, scan_layers=True)):
    p = stack_layers(params, CFG.num_layers) if cfg.scan_layers else params
    (_, logits_r), grads_r = _loss_and_grads(_graphdef(cfg), p)
    grads_r = unstack_layers(grads_r, CFG.num_layers) if cfg.scan_layers else grads_r
    np.testing.assert_allclose(np.asarray(logits_r), np.asarray(logits), atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0),
                 grads_r, grads)


def test_dot_product_attention_equals_the_einsum_attention(unrolled):
  graphdef, params = unrolled
  dcfg = dataclasses.replace(CFG, attention_impl='dot_product')
  (_, logits), grads = _loss_and_grads(graphdef, params)
  (_, logits_d), grads_d = _loss_and_grads(_graphdef(dcfg), params)
  real = np.asarray(MASK)
  np.testing.assert_allclose(np.asarray(logits_d)[real], np.asarray(logits)[real], atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
               grads_d, grads)
  np.testing.assert_allclose(np.asarray(_cached_logits(_graphdef(dcfg), params, dcfg)),
                             np.asarray(_cached_logits(graphdef, params, CFG)), atol=1e-5, rtol=0)


def test_bfloat16_storage():
  cfg = dataclasses.replace(CFG, param_dtype='bfloat16', compute_dtype='bfloat16')
  model = Transformer(cfg, nnx.Rngs(0))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  logits, _ = model(TOKENS, MASK)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def test_params_restore_across_layouts_and_dtypes(unrolled, tmp_path, devices):
  """A checkpoint of unrolled float32 layers restores onto a scanned bfloat16 target (and back), sharded."""
  graphdef, params = unrolled
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  meta = {'config': {'model': dataclasses.asdict(CFG)}}
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  m = mesh(fsdp=4, tensor=2)
  scfg = dataclasses.replace(CFG, scan_layers=True, param_dtype='bfloat16')
  _, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(scfg, nnx.Rngs(0))))
  target = checkpointing.params_target(abstract, m)
  restored, step = checkpointing.restore_params(str(tmp_path), target)
  assert step == 0
  expected = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), stack_layers(params, CFG.num_layers))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, expected)
  jax.tree.map(lambda a, t: (a.sharding == t.sharding) or pytest.fail(f'{a.sharding} != {t.sharding}'),
               restored, target)


def test_1b_nash_md_step_compiles_within_its_memory(devices):
  """The compile-only check of a real size (python -m nlhf_jax.cli.online_bench --preset=1b --compile_only): the full
  Nash-MD-PG step of a 1.24B policy with a bfloat16 reference and judge of the same size, batch 64 x 256 prompt
  tokens and 128 new tokens, compiles against abstract inputs on fsdp=8 (nothing allocated), and its memory per
  device is what its inputs hold plus bounded temporaries."""
  from nlhf_jax.cli.online_bench import compile_memory
  r = compile_memory('1b', 64, 256, 128, 'fsdp=8')
  assert 1.2e9 < r['parameters'] < 1.3e9
  assert r['params_bytes'] == r['parameters'] * 4 // 8 and r['reference_bytes'] == r['parameters'] * 2 // 8
  assert r['argument_bytes'] >= r['params_bytes'] + r['opt_state_bytes'] + r['reference_bytes']
  assert r['hoisting']  # this process keeps XLA's defaults: 6.2 GiB (4.7 GiB without the CPU's hoisted upcasts)
  assert r['per_device_bytes'] < 7 * 2**30, r


@pytest.mark.slow
def test_1b_lora_step_compiles_within_its_memory():
  """The same step with LoRA rank 16, through the command (python -m nlhf_jax.cli.online_bench ... --lora_rank=16
  --json, which turns off XLA's loop-invariant code motion, see its doc): only the adapters and their optimizer
  state are trained arguments, the reference is the bfloat16 base, and the whole step fits in 2.3 GiB a device."""
  import json
  import pathlib
  import subprocess
  import sys

  from tests.helpers import subprocess_env
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.online_bench', '--preset=1b', '--compile_only',
                        '--mesh=fsdp=8', '--lora_rank=16', '--json'], capture_output=True, text=True, timeout=600,
                       cwd=pathlib.Path(__file__).parents[1], env=subprocess_env(8))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert not r['hoisting'] and "loop-invariant code motion off" in out.stdout
  # Adapters on every attention and MLP projection: rank x (d_in + d_out) per matrix, float32, sharded over 8.
  assert 1e7 < r['trained_parameters'] < 1.2e7 and r['params_bytes'] == r['trained_parameters'] * 4 // 8
  assert r['opt_state_bytes'] < 3 * r['params_bytes'] and r['reference_bytes'] == r['parameters'] * 2 // 8
  assert r['per_device_bytes'] < 2.6 * 2**30, r


def test_chunked_vocabulary_log_probabilities_equal_the_dense_ones(unrolled):
  """config.model.logits_chunk: the response log-probabilities, the SFT loss and its gradient are those of
  the whole logits (the chunks need not divide the vocabulary)."""
  from nlhf_jax.models.logprobs import response_logprobs
  from nlhf_jax.objectives import sft_loss
  graphdef, params = unrolled
  ccfg = dataclasses.replace(CFG, logits_chunk=100)
  batch = {'tokens': TOKENS, 'mask': jnp.ones_like(MASK), 'loss_mask': jnp.ones(TOKENS.shape, jnp.float32)}

  def figures(g):
    def loss(p):
      value, metrics = sft_loss(nnx.merge(g, p), batch, None)
      return value, metrics['token_accuracy']
    (value, accuracy), grads = jax.value_and_grad(loss, has_aux=True)(params)
    lp = response_logprobs(nnx.merge(g, params), TOKENS[:, :5], MASK[:, :5], TOKENS[:, 5:], jnp.ones((2, 4), bool))
    return value, accuracy, grads, lp
  dense, chunked = jax.jit(lambda: figures(graphdef))(), jax.jit(lambda: figures(_graphdef(ccfg)))()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0),
               chunked, dense)


@pytest.mark.parametrize('tied', [True, False])
def test_chunked_logits_equal_the_dense_ones_with_a_tied_or_separate_table(tied):
  """The sampler's next-token logits under logits_chunk: a tied table is read by rows in its [V, D] layout (no
  transposed copy at every decoded token), a separate unembedding by columns; both equal the dense logits."""
  cfg = dataclasses.replace(CFG, tie_embeddings=tied, vocab_size=250)
  model = Transformer(cfg, nnx.Rngs(3))
  chunked = nnx.merge(_graphdef(dataclasses.replace(cfg, logits_chunk=64)), nnx.state(model))
  hidden = jax.random.normal(jax.random.key(0), (2, 3, cfg.d_model))
  np.testing.assert_allclose(np.asarray(chunked.logits(hidden)), np.asarray(model.logits(hidden)), atol=1e-5, rtol=0)
