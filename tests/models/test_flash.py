"""config.model.attention_impl='flash' (models/flash.py): the Pallas flash-attention kernel (run by Pallas's
interpreter on the CPU) computes what the einsum attention computes, in training passes (values and gradients;
grouped queries, padding on both sides, scanned and rematerialised layers, a sharded mesh, local layers left to
the einsum) and in passes written into a cache at a static index (the sampler's prefill, the preference model's
responses after their prompt); compiled for H100s, its calls are opaque custom calls whose FLOPs the HLO reader
takes from `kernel_flops`, which counts the blocks the kernel's causal loops visit."""
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


def test_kernel_flops_count_the_blocks_the_kernel_visits():
  for t in (16, 128, 384):
    forward, backward = _visited_flops(2, t, 3, 64)
    assert flash.kernel_flops('jit(f)/shard_map/jit(mha)/mha_forward/pallas_call', [[2, t, 3, 64]]) == forward
    assert flash.kernel_flops('transpose(jvp())/mha_backward/pallas_call', [[2, t, 3, 64]]) == backward
  assert flash.kernel_flops('x/mha_forward/pallas_call', [[1, 128, 1, 80]]) == _visited_flops(1, 128, 1, 128)[0]
  assert flash.kernel_flops('x/mha_preprocess_backward/pallas_call', [[1, 128, 1, 64]]) == 0
  assert flash.kernel_flops('x/some_other_kernel', [[1, 128, 1, 64]]) is None


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
costs = hlo.analyze(text, kernels=flash.kernel_flops)
print(json.dumps([[o.opcode, o.flops] for o in costs.ops if o.opcode == 'custom-call']))
'''


@pytest.mark.slow
def test_flash_compiles_for_h100s_and_its_flops_are_counted():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  p = subprocess.run([sys.executable, '-c', _COMPILE_FOR_H100S], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  calls = json.loads(p.stdout.strip().splitlines()[-1])
  forward, backward = _visited_flops(2, 256, 4, 64)  # per device: half the batch; 200 positions padded to 256
  assert sorted(f for _, f in calls) == [0.0, forward, backward]  # the preprocessing, the forward, the backward


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
