"""nlhf-compile: steps compiled for a TPU slice and H100s with their own compilers (compile-only, no hardware), the
HLO reading that counts their FLOPs and bytes, and the refusal of a step that does not fit."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.accelerators import devices, hlo, roofline, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  p = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.compile', *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  if check:
    assert p.returncode == 0, p.stderr[-3000:]
  return p


def _last_json(p) -> list:
  out = json.loads(p.stdout.strip().splitlines()[-1])
  return out if isinstance(out, list) else [out]


@pytest.fixture(scope='module')
def nash_md():
  """The tiny Nash-MD-PG step on a v5e 2x2 slice (parameters sharded over its 4 chips) and on 2 H100s, with
  scanned layers and the sampler's tensor-parallel layout over every device (on GPU the sampler unrolls the
  layers: sampling/sampler.py)."""
  return _last_json(_compile_cli('--target=tpu:v5e-4,gpu:h100x2', '--config=experiments/configs/nash_md.py:tiny',
                                 '--mesh=fsdp=-1', '--json', '--config.model.scan_layers=true',
                                 '--config.online.sampling.decode_tensor=-1'))


@pytest.mark.slow
def test_nash_md_compiles_for_tpu_and_gpu(nash_md):
  tpu, gpu = nash_md
  assert (tpu['target'], tpu['devices'], gpu['target'], gpu['devices']) == ('tpu:v5e-4', 4, 'gpu:h100x2', 2)
  for r in nash_md:
    assert r['fits'] and 0 < r['per_device_bytes'] < r['device_memory_bytes']
    assert r['per_device_bytes'] == r['xla_arguments'] + r['xla_outputs'] + r['xla_temporaries'] - r['xla_donated']
    assert r['flops'] > 0 and r['hbm_bytes'] > 0 and r['roofline_s'] > 0 and r['uncounted_loops'] == []
    # the decode loop runs max_new_tokens - 1 times after the first token (and is counted so)
    assert 15 in r['loops'].values()
    assert set(r['phases']) >= {'sample', 'total'} and r['decode_tensor'] == -1
    # per device, the compiled matmuls are the model's (the HLO reading and the analytic count agree)
    assert 0.6 < r['flops_ratio'] < 1.25, r['flops_ratio']


def test_per_device_parameters_are_the_total_over_the_devices(nash_md):
  for r in nash_md:
    assert r['mesh']['fsdp'] == r['devices']
    # each device holds 1/n of the parameters, up to the rows that do not divide (padding to whole shards)
    assert r['params'] * r['devices'] == pytest.approx(r['parameters'], rel=0.05)
    assert r['params'] * r['devices'] >= r['parameters']


@pytest.mark.slow
def test_dpo_compiles_for_tpu_and_gpu():
  for r in _last_json(_compile_cli('--target=tpu:v5e-4,gpu:h100x2', '--config=experiments/configs/dpo.py:tiny',
                                   '--json')):
    assert r['objective'] == 'dpo' and r['fits'] and r['flops'] > 0
    assert r['frozen_reference'] == r['params']  # mu has the policy's shape (replicated, data-parallel mesh)
    assert 0.6 < r['flops_ratio'] < 1.25, r['flops_ratio']


@pytest.mark.slow
def test_a_step_that_does_not_fit_is_refused_with_measured_switches():
  p = _compile_cli('--target=gpu:h100x1', '--config=experiments/configs/sft.py:tiny', '--batch_size=196608',
                   check=False)
  assert p.returncode == 1
  error = [line for line in p.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1, p.stderr[-2000:]
  assert 'the sft step needs' in error[0] and 'GiB a device on gpu:h100x1, which has 79.1 GiB' in error[0]
  assert 'these fit (compiled): ' in error[0] and 'half the batch: ' in error[0]


def test_the_tpu_compiler_refusing_a_program_is_read_as_its_figure():
  from nlhf_jax.trainer import target_compile
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (39.02G) '
             'exceeds available HBM (15.75G).')
  assert target_compile._out_of_memory(message) == int(39.02 * 1024**3)
  assert target_compile._out_of_memory('INTERNAL: something else') is None


def test_command_line_model_fields_are_kept_over_a_preset():
  """--preset=8b replaces the model section; a --config.model.* override on the same command line still applies
  (the preset's switches are defaults, not the user's last word)."""
  from experiments.configs import nash_md
  from nlhf_jax.trainer import target_compile
  fields = target_compile.model_overrides('8b', '')
  typed = {'model.attention_impl': 'flash', 'model.remat': 'none', 'train.batch_size': 3}
  cfg = target_compile.experiment(nash_md.get_config('tiny'), 8, model=fields, typed=typed)
  assert (cfg.model.d_model, cfg.model.attention_impl, cfg.model.remat) == (4096, 'flash', 'none')
  assert cfg.train.batch_size != 3  # only the model's fields are re-applied (the rest were never replaced)
  plain = target_compile.experiment(nash_md.get_config('tiny'), 8, model=fields)
  assert (plain.model.attention_impl, plain.model.remat) == ('dot_product', 'full')


def test_unknown_target_is_one_error_line():
  p = _compile_cli('--target=tpu:v9-8', '--config=experiments/configs/sft.py:tiny', check=False)
  assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: --target='tpu:v9-8' is unknown")


def test_compilers_stay_out_of_the_environment():
  """libtpu and the CUDA plugin live in their own folder: an ordinary `import jax` neither sees nor loads them."""
  assert os.path.isdir(devices.compilers_dir())
  code = ('import importlib.util, jax; print(importlib.util.find_spec("libtpu"), '
          'importlib.util.find_spec("jax_plugins.xla_cuda12") if importlib.util.find_spec("jax_plugins") else None, '
          'jax.default_backend())')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
  assert p.stdout.split() == ['None', 'None', 'cpu'], p.stdout + p.stderr
  assert p.stderr == '', p.stderr  # no libtpu or CUDA line


# ---- the HLO reading, on CPU programs ----

def _compiled(f, *args):
  return jax.jit(f).lower(*args).compile()


def test_loops_are_counted_by_their_trip_counts():
  w = jnp.ones((7, 64, 64), jnp.float32)
  x = jnp.ones((32, 64), jnp.float32)
  one = hlo.analyze(_compiled(lambda w, x: x @ w[0], w, x).as_text())
  scanned = hlo.analyze(_compiled(lambda w, x: jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0],
                                  w, x).as_text())
  assert one.flops == 2 * 32 * 64 * 64
  assert scanned.flops == 7 * one.flops and list(scanned.loops.values()) == [7]
  # each iteration reads one layer's weights out of the stack, not the whole stack
  per_iteration = [o.bytes / o.count for o in scanned.ops if o.count == 7]
  assert per_iteration and max(per_iteration) < 2 * 64 * 64 * 4 + 64 < w.nbytes  # a slice read and written


def test_a_loop_counter_that_steps_by_two_counts_half_the_trips():
  # XLA's TPU windowed einsums unroll their loop and add 2 to the counter: 1, 3, 5, 7 < 9 is 4 trips, not 8. The
  # trip count XLA writes on a CPU loop is taken out, so that the count is read from the condition and the body.
  w, x = jnp.ones((64, 64)), jnp.ones((32, 64))
  text = _compiled(lambda w, x: jax.lax.while_loop(lambda c: c[0] < 9, lambda c: (c[0] + 2, jnp.tanh(c[1] @ w)),
                                                   (1, x))[1], w, x).as_text()
  text = re.sub(r'(while\(.*), backend_config=\{.*\}', r'\1', text)
  assert 'known_trip_count' not in text
  costs = hlo.analyze(text)
  assert list(costs.loops.values()) == [4] and costs.flops == 4 * 2 * 32 * 64 * 64


def test_flops_agree_with_xla_on_a_loop_free_program():
  a, b = jnp.ones((3, 48, 80)), jnp.ones((3, 80, 24))
  c = _compiled(lambda a, b: jnp.einsum('bij,bjk->bik', a, b) + 1, a, b)
  assert hlo.analyze(c.as_text()).flops == pytest.approx(c.cost_analysis()['flops'] - 3 * 48 * 24, rel=1e-6)


def test_convolution_counts_only_positions_inside_the_input():
  # a 1-D convolution with padding: XLA's count of multiply-adds is the valid (output, tap) pairs
  assert hlo._valid_pairs(size_in=5, size_out=5, kernel=3, stride=1, pad_low=1, lhs_dilate=1, rhs_dilate=1) == 13
  assert hlo._valid_pairs(size_in=1, size_out=4, kernel=4, stride=1, pad_low=3, lhs_dilate=1, rhs_dilate=1) == 4
  x = jnp.ones((2, 5, 8))  # NWC
  k = jnp.ones((3, 8, 6))  # WIO
  c = _compiled(lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), [(1, 1)], dimension_numbers=('NWC', 'WIO', 'NWC')),
                x, k)
  assert hlo.analyze(c.as_text()).flops == 2 * 2 * 6 * 8 * 13


@pytest.mark.parametrize('segments', [1, 3])
def test_sampling_flops_are_the_compiled_samplers(segments):
  # perf.sampling_flops against a CPU-compiled pair sampler (the tiny shape): a prefill per prompt and model over
  # the prompt's slots with logits at its last position, then new - 1 steps, each part of the loop over the slots
  # written by its end, the policy 2 rows a prompt, mu 1. The attention's FLOPs follow the slots read, and every
  # part's loop is counted by its trip count (and marked as the decode loop)
  from flax import nnx

  from nlhf_jax.config import ModelConfig
  from nlhf_jax.models import Transformer, preset
  from nlhf_jax.perf import sampling_flops
  from nlhf_jax.sampling import SamplingConfig, jit_sample_pair
  from nlhf_jax.sampling.decode import LOOP_SCOPE
  cfg = ModelConfig(**preset('tiny'))
  graphdef, policy = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  rows, prompt, new = 4, 6, 8
  batch = {'prompt': jnp.ones((rows, prompt), jnp.int32), 'prompt_mask': jnp.ones((rows, prompt), bool),
           'example_index': jnp.arange(rows, dtype=jnp.int32)}
  fn = jit_sample_pair(graphdef, graphdef, SamplingConfig(max_new_tokens=new, stop_ids=(), decode_segments=segments),
                       0.3)
  costs = hlo.analyze(fn.lower(policy, policy, batch, jax.random.key(0)).compile().as_text(), (), (LOOP_SCOPE,))
  assert not costs.uncounted_loops
  assert costs.flops == pytest.approx(sampling_flops(cfg, rows, prompt, new, mixture=True, segments=segments),
                                      rel=1e-6)
  in_loop = sum(o.flops for o in costs.ops if LOOP_SCOPE in o.marks)
  assert in_loop == pytest.approx(costs.flops - sampling_flops(cfg, rows, prompt, 1, mixture=True), rel=1e-6)
  if segments > 1:  # fewer than one loop over every slot
    assert costs.flops < sampling_flops(cfg, rows, prompt, new, mixture=True)


_ASYNC_COLLECTIVES = """HloModule m

%add (a: bf16[], b: bf16[]) -> bf16[] {
  %a = bf16[] parameter(0)
  %b = bf16[] parameter(1)
  ROOT %s = bf16[] add(%a, %b)
}

ENTRY %main (p: bf16[8,64], q: f32[4,16]) -> (bf16[8,64], f32[4,16], bf16[8,64]) {
  %p = bf16[8,64]{1,0} parameter(0)
  %q = f32[4,16]{1,0} parameter(1)
  %rs = ((bf16[8,64]{1,0}), bf16[2,64]{1,0}) reduce-scatter-start(%p), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %rsd = bf16[2,64]{1,0} reduce-scatter-done(%rs)
  %ag = (bf16[2,64]{1,0}, bf16[8,64]{1,0}) all-gather-start(%rsd), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={0}
  %agd = bf16[8,64]{1,0} all-gather-done(%ag)
  %aa = ((f32[4,16]{1,0}), f32[4,16]{1,0}) all-to-all-start(%q), channel_id=3, replica_groups={{0,1,2,3}}, dimensions={0}
  %aad = f32[4,16]{1,0} all-to-all-done(%aa)
  %ar = bf16[8,64]{1,0} all-reduce-start(%p), channel_id=4, replica_groups={{0,1,2,3}}, to_apply=%add
  %ard = bf16[8,64]{1,0} all-reduce-done(%ar)
  ROOT %t = (bf16[8,64]{1,0}, f32[4,16]{1,0}, bf16[8,64]{1,0}) tuple(%agd, %aad, %ard)
}
"""


def test_an_async_collective_counts_its_operands_read_and_its_results_written_once():
  # the GPU compiler's async collectives: a '-start' whose tuple holds its operands (aliased) before its results,
  # and a '-done' that hands the results over. Each counts what it reads and writes once, at its '-start'
  costs = {o.name: o for o in hlo.analyze(_ASYNC_COLLECTIVES).ops}
  assert sorted(costs) == ['aa', 'ag', 'ar', 'rs']  # no '-done'
  whole, shard = 8 * 64 * 2, 2 * 64 * 2
  assert (costs['rs'].bytes, costs['rs'].collective_bytes) == (whole + shard, whole)
  assert (costs['ag'].bytes, costs['ag'].collective_bytes) == (shard + whole, whole)
  assert (costs['aa'].bytes, costs['aa'].collective_bytes) == (2 * 4 * 16 * 4, 4 * 16 * 4)
  assert (costs['ar'].bytes, costs['ar'].collective_bytes) == (2 * whole, 2 * whole)


def test_roofline_bounds_each_instruction_by_compute_or_bandwidth():
  t = targets.get('gpu:h100x1')
  costs = hlo.Costs([hlo.Op('mm', 'fusion', 'other', t.peak_flops, 1.0, 0.0, 1),
                     hlo.Op('copy', 'copy', 'sample', 0.0, t.hbm_bandwidth * 2, 0.0, 1)], [], {})
  phases = roofline.roofline(costs, t)
  assert phases['other'].compute_s == pytest.approx(1.0) and phases['other'].bound == 'compute'
  assert phases['sample'].memory_s == pytest.approx(2.0) and phases['sample'].bound == 'memory'
  assert phases['total'].seconds == pytest.approx(3.0)


def test_gpu_target_config_names_the_card():
  text = targets.get('gpu:h100x8').card.target_config(80 << 30, 3.35e12)
  assert 'core_count: 132' in text and 'cuda_compute_capability { major: 9 minor: 0 }' in text
  assert np.isclose(float(text.split('memory_bandwidth: ')[1].split()[0]), 3.35e12)
