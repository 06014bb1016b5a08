"""config.model.attention_impl='flash' (models/flash.py): the Pallas flash-attention kernel (run by Pallas's
interpreter on the CPU) computes what the einsum attention computes, in training passes (values and gradients;
grouped queries, padding on both sides, scanned and rematerialised layers, a sharded mesh, local layers left to
the einsum) and in passes written into a cache at a static index (the sampler's prefill, the preference model's
responses after their prompt); the decode kernel computes what the einsum decode computes (a prompt's prefix read
once for its rows, lengths that are not whole blocks, slots past its span never read, on a mesh) and the sampler
draws the same samples with it; compiled for H100s, the kernels are opaque custom calls whose FLOPs (and the decode
kernel's bytes) the HLO reader takes from `kernel_costs`, which counts the blocks the kernels' loops visit."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from nlhf_jax.config import ConfigError, ModelConfig
from nlhf_jax.distributed.sharding import within_mesh
from nlhf_jax.models import Transformer, flash
from nlhf_jax.models.judges import PreferenceModel
from nlhf_jax.sampling.decode import prefill
from tests.helpers import mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Grouped-query attention; the local layers keep the einsum attention (a window), the global one runs the kernel.
MIXED = ModelConfig(num_layers=3, num_kv_heads=2, sliding_window=3, layer_types=('local', 'global', 'local'))
TOKENS = jax.random.randint(jax.random.key(1), (4, 9), 4, 256)
MASK = jnp.ones((4, 9), bool).at[0, :3].set(False).at[1, 6:].set(False)  # left- and right-padded rows


def _loss_and_grads(cfg, params, m=None):
  graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]

  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(TOKENS, MASK)
    return jnp.sum(jnp.where(MASK[..., None], jax.nn.log_softmax(logits), 0.0) ** 2) * 1e-4, logits
  if m is not None:
    params = jax.device_put(params, NamedSharding(m, P()))
  return jax.jit(within_mesh(jax.value_and_grad(loss, has_aux=True), m))(params)


@pytest.mark.parametrize('cfg,sharded', [(MIXED, False),
                                         (ModelConfig(num_layers=2, num_kv_heads=2, scan_layers=True,
                                                      remat='full'), True)],
                         ids=['local_and_global', 'scanned_remat_sharded'])
def test_flash_training_pass_equals_the_einsum_attention(cfg, sharded, devices):
  params = nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  m = mesh(fsdp=2, tensor=2) if sharded else None
  (_, logits), grads = _loss_and_grads(cfg, params)
  (_, logits_f), grads_f = _loss_and_grads(dataclasses.replace(cfg, attention_impl='flash'), params, m)
  real = np.asarray(MASK)
  np.testing.assert_allclose(np.asarray(logits_f)[real], np.asarray(logits)[real], atol=2e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0),
               grads_f, grads)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3  # the gradients compared are not ~0


@pytest.mark.parametrize('scan', [False, True], ids=['unrolled', 'scanned'])
def test_flash_cached_passes_equal_the_einsum_attention(scan):
  cfg = ModelConfig(num_layers=2, num_kv_heads=2, scan_layers=scan)
  fcfg = dataclasses.replace(cfg, attention_impl='flash')
  prompt, prompt_mask = TOKENS[:, :5], MASK[:, :5].at[1].set(True)  # left-padded prompts
  model, fmodel = Transformer(cfg, nnx.Rngs(0)), Transformer(fcfg, nnx.Rngs(0))
  (last, cache), (last_f, cache_f) = (prefill(m, prompt, prompt_mask, 8) for m in (model, fmodel))
  np.testing.assert_allclose(np.asarray(last_f), np.asarray(last), atol=2e-6, rtol=0)
  real = np.asarray(cache['mask'])  # padding slots differ (their queries attend other padding) and are never read
  second = lambda c, name: np.swapaxes(np.asarray(c['layers'][name][1] if scan else c['layer_1'][name]), 1, 2)
  for name in ('k', 'v'):  # the prompt's keys and values, written where the einsum pass writes them
    np.testing.assert_allclose(second(cache_f, name)[real], second(cache, name)[real], atol=2e-6, rtol=0)
  judge, fjudge = PreferenceModel(cfg, nnx.Rngs(1)), PreferenceModel(fcfg, nnx.Rngs(1))
  for j in (judge, fjudge):  # a read-out that is not zero, as it starts
    j.head[...] = jax.random.normal(jax.random.key(2), j.head.shape)
  a, a_mask = TOKENS[:, 5:], MASK[:, 5:].at[0].set(True)  # right-padded responses
  b, b_mask = TOKENS[::-1, 3:7], jnp.ones((4, 4), bool).at[2, 3].set(False)
  logit = judge.logit(prompt, prompt_mask, a, a_mask, b, b_mask)
  np.testing.assert_allclose(np.asarray(fjudge.logit(prompt, prompt_mask, a, a_mask, b, b_mask)),
                             np.asarray(logit), atol=5e-5, rtol=0)  # 4.8e-6 measured, |logit| < 4
  assert float(jnp.abs(logit).min()) > 1e-4


def _visited_flops(b, t, h, d):
  """The kernel's FLOPs by walking its loops: forward blocks (q block i reads key blocks up to its last row),
  backward dk/dv (key block j reads query blocks from its first row) and dq (as the forward), 2 * m * n * d a
  block product."""
  fwd, bwd = flash._blocks(t)
  product = lambda m, n: 2 * m * n * d
  forward = sum(2 * product(fwd, fwd) for i in range(t // fwd) for j in range(t // fwd) if j * fwd < (i + 1) * fwd)
  dkv = sum(4 * product(bwd, bwd) for j in range(t // bwd) for i in range(t // bwd) if i >= j)
  dq = sum(3 * product(bwd, bwd) for i in range(t // bwd) for j in range(t // bwd) if j * bwd < (i + 1) * bwd)
  return b * h * forward, b * h * (dkv + dq)


def test_kernel_costs_count_the_blocks_the_kernels_visit():
  op = lambda *dims: (list(dims), 2)  # a bfloat16 operand
  for t in (16, 128, 384):
    forward, backward = _visited_flops(2, t, 3, 64)
    assert flash.kernel_costs('jit(f)/shard_map/jit(mha)/mha_forward/pallas_call', [op(2, t, 3, 64)]) == (forward, None)
    assert flash.kernel_costs('transpose(jvp())/mha_backward/pallas_call', [op(2, t, 3, 64)]) == (backward, None)
  padded = _visited_flops(1, 128, 1, 128)[0]  # head_dim 80 computed as 128
  assert flash.kernel_costs('x/mha_forward/pallas_call', [op(1, 128, 1, 80)]) == (padded, None)
  assert flash.kernel_costs('x/mha_preprocess_backward/pallas_call', [op(1, 128, 1, 64)]) == (0, None)
  assert flash.kernel_costs('x/some_other_kernel', [op(1, 128, 1, 64)]) is None
  # decode: 3 prompts x 2 rows, 2 kv heads (a program each), 16 padded queries, 24-slot buffers read to slot 19 in
  # blocks of 16 (two blocks, the second from slot 3), a 21-slot prefix (two blocks); each slot a program reads:
  # k, v and a float32 bias
  flops, read = flash.kernel_costs('x/decode_attention_span19_block16_width21_block16/pallas_call',
                                   [op(3, 2, 16, 32), op(6, 2, 24, 32), op(6, 2, 24, 32), ([6, 19], 4),
                                    op(3, 2, 21, 32), op(3, 2, 21, 32), ([3, 21], 4)])
  programs, slots = 3 * 2, 2 * 32 + 32
  # a run's block reads the fewest slots (the largest block of those): 96 in blocks of 32, not two of 64
  assert [flash.decode_block(128, n) for n in (16, 19, 40, 64, 96, 127, 512)] == [16, 16, 16, 64, 32, 64, 64]
  assert flash.decode_block(128, 15) is None and flash.decode_block(80, 64) is None  # too short; not a power of two
  assert flops == programs * slots * 4 * 16 * 32
  assert read == programs * slots * (2 * 32 * 2 + 4) + 2 * programs * 16 * 32 * 2  # + the queries and the output


def _decode_reference(q, k, v, allowed, scale, span, prefix):
  """The attention of one position over [the prefix repeated for its rows, then the first span own slots], in
  float64."""
  q, k, v, allowed = (np.asarray(x, np.float64) for x in (q, k, v, allowed))
  b, h, d = q.shape
  keys, values = k[:, :, :span], v[:, :, :span]
  if prefix is not None:
    rows = b // prefix[0].shape[0]
    keys, values = (np.concatenate([np.repeat(np.asarray(p, np.float64), rows, 0), x], 2)
                    for p, x in zip(prefix, (keys, values)))
  kv = k.shape[1]
  logits = np.einsum('bngd,bnsd->bngs', q.reshape(b, kv, h // kv, d), keys) * scale
  logits = np.where(allowed[:, None, None] > 0, logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum('bngs,bnsd->bngd', probs, values).reshape(b, h, d)


@pytest.mark.parametrize('rows,width,on_mesh,cache', [(2, 21, False, 'float32'), (2, 21, True, 'float32'),
                                                      (1, 0, False, 'float32'), (2, 21, False, 'bfloat16')],
                         ids=['prefix', 'prefix_on_a_mesh', 'no_prefix', 'bfloat16_cache'])
def test_flash_decode_equals_the_attention_over_the_slots_it_is_given(rows, width, on_mesh, cache, devices):
  """Grouped queries (2 per kv head; 2 rows: 4 queries a program, padded to 16), masked slots, lengths that are not
  whole blocks (19 own slots, a 21-slot prefix, blocks of 16), and NaN in the slots past the span: never read. A
  bfloat16 cache under float32 queries is read as its values are (widened, not the queries narrowed)."""
  b, h, kv, d, slots, span = 4, 4, 2, 16, 24, 19
  keys = jax.random.split(jax.random.key(0), 6)
  q = jax.random.normal(keys[0], (b, h, d))
  k, v = (jax.random.normal(key, (b, kv, slots, d)).at[:, :, span:].set(np.nan).astype(cache) for key in keys[1:3])
  allowed = jax.random.bernoulli(keys[3], 0.7, (b, width + span)).at[:, width].set(True)
  prefix = None
  if width:
    prefix = tuple(jax.random.normal(key, (b // rows, kv, width, d)).astype(cache) for key in keys[4:6])
    allowed = allowed.at[:, :width].set(jnp.repeat(allowed[::rows, :width], rows, 0))  # a prompt's rows share it
  fn = lambda *a: flash.decode(*a[:4], 0.3, span, None if len(a) == 4 else a[4:])
  args = (q, k, v, allowed) + (prefix or ())
  m = mesh(fsdp=2, tensor=2) if on_mesh else None
  if m is not None:
    args = tuple(jax.device_put(x, NamedSharding(m, P())) for x in args)
  out = jax.jit(within_mesh(fn, m))(*args)
  np.testing.assert_allclose(np.asarray(out), _decode_reference(q, k, v, allowed, 0.3, span, prefix), atol=2e-6,
                             rtol=0)


def test_flash_decode_refuses_what_it_cannot_read():
  """A span past the cache (Triton does not check bounds), a mask of another width, too few slots for a block."""
  q, k = jnp.zeros((2, 4, 16)), jnp.zeros((2, 2, 24, 16))
  for span, width in ((32, 24), (20, 21), (12, 12)):
    with pytest.raises(ValueError, match='flash.decode: span'):
      flash.decode(q, k, k, jnp.ones((2, width), bool), 0.25, span)


def test_flash_decoding_samples_what_the_einsum_decoding_samples(monkeypatch):
  """The sampler's pair (the policy's two rows a prompt over the prompt's one prefix cache, the reference's one)
  with the decode loop in two parts: the first (own span 10) is too short for a block and keeps the einsum form, the
  second (own span 19) runs the kernel; the same draws and log-probabilities as the einsum decoding."""
  from nlhf_jax.models import preset
  from nlhf_jax.sampling import SamplingConfig, jit_sample_pair
  calls = []
  decode = flash.decode
  monkeypatch.setattr(flash, 'decode', lambda *a: calls.append(a[5]) or decode(*a))
  cfg = dataclasses.replace(ModelConfig(**preset('tiny')), num_kv_heads=2)
  lengths, width = np.asarray([16, 9, 1, 12]), 16
  mask = np.arange(width)[None] >= width - lengths[:, None]
  batch = {'prompt': jnp.where(mask, jax.random.randint(jax.random.key(0), (4, width), 4, 256), 0),
           'prompt_mask': jnp.asarray(mask), 'example_index': jnp.arange(4, dtype=jnp.int32)}
  sampling = SamplingConfig(max_new_tokens=20, top_k=50, stop_ids=(), decode_segments=2)
  scaled = lambda seed: jax.tree.map(lambda x: 4 * x, nnx.split(Transformer(cfg, nnx.Rngs(seed)))[1])
  policy, ref = scaled(0), scaled(1)
  out = {}
  for impl in ('einsum', 'flash'):
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(dataclasses.replace(cfg, attention_impl=impl),
                                                              nnx.Rngs(0))))[0]
    out[impl] = jit_sample_pair(graphdef, graphdef, sampling, 0.25)(policy, ref, batch, jax.random.key(3))
  assert sorted(set(calls)) == [19]  # the second part's layers, both models
  for name in ('policy', 'mixture'):
    np.testing.assert_array_equal(out['flash'][name]['tokens'], out['einsum'][name]['tokens'])
    np.testing.assert_allclose(out['flash'][name]['logprobs'], out['einsum'][name]['logprobs'], atol=1e-4, rtol=0)


_COMPILE_FOR_H100S = '''
import json, sys
from nlhf_jax.accelerators import devices, hlo, targets
devices.use_compilers()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from nlhf_jax.distributed.sharding import within_mesh
from nlhf_jax.models import flash
mesh = Mesh(np.array(devices.target_devices(targets.get('gpu:h100x2'))), ('fsdp',))
x = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P('fsdp')))
loss = lambda q, k, v: flash.attention(q, k, v, jnp.ones(q.shape[:2], bool), 0.125).astype(jnp.float32).sum()
text = jax.jit(within_mesh(jax.grad(loss, argnums=(0, 1, 2)), mesh)).lower(x(4, 200, 4, 64), x(4, 200, 2, 64),
                                                                          x(4, 200, 2, 64)).compile().as_text()
costs = hlo.analyze(text, kernels=flash.kernel_costs)
calls = [[o.flops] for o in costs.ops if o.opcode == 'custom-call']
# one decoded position of 8 rows (4 prompts x 2) over a 64-slot prefix and the first 40 of 128 own slots, per device
cache = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P('fsdp')))
decode = lambda q, k, v, pk, pv: flash.decode(q, k, v, jnp.ones((8, 104), bool), 0.125, 40, (pk, pv))
text = jax.jit(within_mesh(decode, mesh)).lower(cache(8, 4, 64), cache(8, 2, 128, 64), cache(8, 2, 128, 64),
                                                cache(4, 2, 64, 64), cache(4, 2, 64, 64)).compile().as_text()
costs = hlo.analyze(text, kernels=flash.kernel_costs)
calls += [[o.flops, o.bytes] for o in costs.ops if o.opcode == 'custom-call']
f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, P('fsdp')))
text = jax.jit(within_mesh(decode, mesh)).lower(f32(8, 4, 64), f32(8, 2, 128, 64), f32(8, 2, 128, 64),
                                                f32(4, 2, 64, 64), f32(4, 2, 64, 64)).compile().as_text()
print(json.dumps([calls, text.count('decode_attention_span40')]))  # float32: its dots in float32, not TF32
'''


@pytest.mark.slow
def test_flash_kernels_compile_for_h100s_and_their_costs_are_counted():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  p = subprocess.run([sys.executable, '-c', _COMPILE_FOR_H100S], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  calls, float32 = json.loads(p.stdout.strip().splitlines()[-1])
  assert float32 > 0  # the float32 decode (dots in float32, not TF32) compiles for H100s too
  forward, backward = _visited_flops(2, 256, 4, 64)  # per device: half the batch; 200 positions padded to 256
  assert sorted(f for f, in calls[:3]) == [0.0, forward, backward]  # the preprocessing, the forward, the backward
  # decode, per device: 2 prompts x 2 kv heads, a program each; 2 rows x 4 queries padded to 16; 40 own slots read
  # as 3 blocks of 16 (the third from slot 24), the 64-slot prefix as one of 64; k, v and a float32 bias each slot
  programs, slots = 2 * 2, 2 * 48 + 64
  flops, read = programs * slots * 4 * 16 * 64, programs * slots * (2 * 64 * 2 + 4)
  assert calls[3:] == [[flops, read + 2 * programs * 16 * 64 * 2]]  # + the queries and the output


def test_flash_on_tpu_is_refused_with_the_fix():
  with pytest.raises(ConfigError, match="attention_impl='flash'.*on TPU use 'dot_product'"):
    flash.check_platform('tpu')


def test_frozen_models_run_with_the_configs_attention_impl(tmp_path):
  """A judge's run saved its own attention_impl; the step runs it with the training config's (no parameter
  changes), in training (checkpointing.frozen_target) as in nlhf-compile's judge of a given shape."""
  import dataclasses as dc
  from nlhf_jax.training import checkpointing
  from nlhf_jax.trainer import compile_only
  from tests.helpers import tiny_config
  saved = ModelConfig(num_layers=2, attention_impl='dot_product')
  (tmp_path / 'config.json').write_text(json.dumps({'model': dc.asdict(saved)}))
  for impl, expected in (('flash', 'flash'), ('', 'dot_product')):
    _, _, cfg = checkpointing.frozen_target(str(tmp_path), PreferenceModel, mesh(), '', impl)
    assert cfg.attention_impl == expected
  exp = tiny_config(**{'model.attention_impl': 'flash'})
  exp = dc.replace(exp, online=dc.replace(exp.online, judge='preference_model', judge_checkpoint='-'))
  assert compile_only._model_judge(exp, mesh(), saved)[1].attention_impl == 'flash'
