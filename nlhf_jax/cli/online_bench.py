"""Speed of the full Nash-MD-PG train step (`make bench`; printed, never asserted), and its compiled memory at
real sizes.

  python -m nlhf_jax.cli.online_bench [--preset=small --batch_size=8 --new_tokens=64 --iters=5] [--json]
  python -m nlhf_jax.cli.online_bench --preset=8b --compile_only --mesh=fsdp=8 [--lora_rank=16] [--json]

The reference configuration: Llama-style policy and reference (preset `small`: vocabulary 4096, d_model 256,
4 layers, 4 heads, MLP 1024), prompts of 32 to 64 tokens (left-padded to 64), batch 8, 64 new tokens, float32,
and a Bradley-Terry reward model of the same size as judge (sigmoid(r - r')). One step = sample y ~ pi and
y' ~ pi^beta in one decode loop, judge the pairs, reference log-probabilities of y, the policy-gradient loss and
its gradient, and the AdamW update. Printed: median step time, sampled tokens/s (2 x batch x new tokens per
step over the step time), model FLOPs per step, MFU against a matmul peak measured in the same process, the
compiled step's memory and the process's peak memory. Each of --compute_dtypes (default float32 and bfloat16) is
timed in the same process against the matmul peak of its own dtype; bfloat16 computes in bfloat16 with float32
accumulation and log-probabilities, and its mean |log pi - log pi (float32)| a token on the same samples and
parameters is printed beside the speed-up over float32. --json: the float32 figures, then each other dtype's
step_s, mfu, peak, sampled_tokens_per_s and logprob_abs_diff_vs_float32 with the dtype as suffix.

--compile_only lowers and compiles the step against abstract inputs (jax.ShapeDtypeStruct with the rule table's
shardings: nothing is allocated) and prints the compiled memory per device from XLA's memory analysis, beside
what the inputs hold: the policy's parameters and optimizer state, the frozen reference and judge (in
config.online.frozen_dtype) and the KV caches. Its defaults are the real-size shape of the issue that introduced
it: batch 64 prompts of 256 tokens, 128 new tokens, bfloat16 compute, a preference-model judge of the policy's
size. --json adds the figures as one JSON object on the last line.

On CPU, XLA computes bfloat16 matmuls in float32: it upcasts their operands, and its while-loop invariant code
motion then moves those upcasts of the stacked layer weights (and of the saved residuals) out of the layer and
decode loops, a float32 copy of every frozen model's weights at once, which no accelerator makes (their bfloat16
matmuls are native). --compile_only therefore compiles with that one pass off
(--xla_disable_hlo_passes=while-loop-invariant-code-motion, added to XLA_FLAGS; the figures say so as
`hoisting: false`); --hoisting keeps XLA's default. The per-layer float32 copies inside the loops remain, so the
CPU figures still overstate an accelerator's.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags


def _define_flags() -> None:
  """The command's flags, defined when it runs (not on import, so its functions import beside other
  commands' flags)."""
  flags.DEFINE_string('preset', 'small', 'Model preset of policy, reference and reward model.')
  flags.DEFINE_integer('batch_size', None, 'Prompts per step (default 8; 64 with --compile_only).')
  flags.DEFINE_integer('new_tokens', None, 'Response length (no EOS is sampled: every row runs to the end; '
                       'default 64; 128 with --compile_only).')
  flags.DEFINE_integer('prompt_len', None, 'Prompt length (default 64; 256 with --compile_only).')
  flags.DEFINE_integer('iters', 5, 'Timed steps (median reported).')
  flags.DEFINE_bool('compile_only', False, 'Compile against abstract inputs and print the compiled '
                    'memory per device (allocates nothing).')
  flags.DEFINE_string('mesh', '', 'Mesh, e.g. fsdp=8 (default: data over every device).')
  flags.DEFINE_integer('lora_rank', 0, 'LoRA rank of the policy (0: full fine-tuning).')
  flags.DEFINE_bool('hoisting', False, "With --compile_only: keep XLA's while-loop invariant code motion (on CPU it "
                    'hoists float32 copies of the bfloat16 weights out of the layer loop; see the module doc).')
  flags.DEFINE_bool('json', False, 'Print the figures as one JSON object on the last line.')
  flags.DEFINE_list('compute_dtypes', ['float32', 'bfloat16'], 'Compute dtypes to time, each in this process '
                    '(bfloat16: compute in bfloat16, float32 accumulation and log-probabilities; its log pi is '
                    'compared with float32 on the same samples).')


FLAGS = flags.FLAGS
NO_HOISTING = '--xla_disable_hlo_passes=while-loop-invariant-code-motion'


def _hoisting() -> bool:
  """Whether XLA's while-loop invariant code motion is on in this process (XLA_FLAGS)."""
  return NO_HOISTING not in os.environ.get('XLA_FLAGS', '').split()


def _turn_off_hoisting() -> None:
  """Adds NO_HOISTING to XLA_FLAGS; before JAX starts its backend (XLA reads the flags once)."""
  import jax._src.xla_bridge as xb
  if xb.backends_are_initialized():
    raise RuntimeError('XLA_FLAGS must change before JAX starts its backend')
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {NO_HOISTING}".strip()


def online_config(preset: str, batch: int, new_tokens: int, prompt_len: int = 64, mesh: str = '',
                  judge: str = 'reward_model', frozen_dtype: str = '', lora_rank: int = 0,
                  kv_cache_dtype: str = ''):
  """The benchmark's Nash-MD config (judges and the LoRA base built in memory, so no checkpoint path is read)."""
  import jax

  from nlhf_jax.config import from_config_dict
  from nlhf_jax.config.defaults import defaults
  from nlhf_jax.distributed.mesh import parse_mesh
  c = defaults(preset)
  c.train.update(objective='nash_md', batch_size=batch)
  c.data.update(prompt_len=prompt_len)
  c.model.max_len = max(c.model.max_len, prompt_len + new_tokens)
  c.online.update(beta=0.125, tau=0.008, judge=judge, judge_checkpoint='-', frozen_dtype=frozen_dtype)
  c.online.sampling.update(max_new_tokens=new_tokens, sharded_decode=bool(mesh), kv_cache_dtype=kv_cache_dtype)
  c.optim.update(schedule='constant')
  if lora_rank:
    c.model.lora.rank = lora_rank
    c.online.reference_checkpoint = '-'  # the base: abstract here
  c.mesh = parse_mesh(mesh) if mesh else dict(data=-1, fsdp=1, tensor=1)
  return from_config_dict(c, jax.device_count())


def _abstract_batch(cfg, mesh):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from nlhf_jax.distributed import batch_spec
  b, lp = cfg.train.batch_size, cfg.data.prompt_len
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, batch_spec(len(shape))))
  return {'prompt': sds((b, lp), jnp.int32), 'prompt_mask': sds((b, lp), jnp.bool_),
          'example_index': sds((b,), jnp.int32)}


def _nbytes(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def compile_memory(preset: str, batch: int, prompt_len: int, new_tokens: int, mesh_spec: str,
                   lora_rank: int = 0) -> dict:
  """Compiles the Nash-MD-PG step of `preset` (policy, bfloat16 frozen reference and preference-model judge of
  the same size) against abstract inputs on the mesh; returns XLA's memory figures per device and what the
  inputs hold, per device (the rule table's shards)."""
  import jax
  from flax import nnx

  from nlhf_jax.distributed import make_mesh
  from nlhf_jax.models.judges import PreferenceModel
  from nlhf_jax.online.judges import model_judge
  from nlhf_jax.online.step import OnlineStep
  from nlhf_jax.training import checkpointing, init, optim
  from nlhf_jax.trainer import compile_only, loop, tasks
  # bfloat16 KV caches, as an accelerator makes them (on CPU the sampler's default would make them float32)
  cfg = online_config(preset, batch, new_tokens, prompt_len, mesh_spec, 'preference_model', 'bfloat16', lora_rank,
                      kv_cache_dtype='bfloat16')
  mesh = make_mesh(cfg.mesh)
  task = tasks.get_task('nash_md')
  tx = optim.make_optimizer(cfg.optim, 1000)
  run = tasks.setup(cfg, task, tx, mesh)
  graphdef, shardings = run.graphdef, run.shardings
  state = init.abstract_state(shardings, jax.eval_shape(run.init, 0))
  # The reference mu: a bfloat16 copy of the policy, or under LoRA the (bfloat16) base that the policy adapts.
  reference = checkpointing.as_dtype(run.params_target(), 'bfloat16')
  pm_graphdef, pm_abstract = nnx.split(nnx.eval_shape(lambda: PreferenceModel(cfg.model, nnx.Rngs(0))))
  judge_params = checkpointing.as_dtype(checkpointing.params_target(pm_abstract, mesh), 'bfloat16')
  judge = model_judge('preference_model', pm_graphdef, None)
  step = OnlineStep(cfg, graphdef, tx, optim.schedule(cfg.optim, 1000), judge, stop_ids=(), mesh=mesh,
                    base_graphdef=run.base_graphdef)
  jitted = loop.jit_step(cfg, run, step, mesh)  # as training jits it
  frozen = {'base' if run.lora else 'reference': reference, 'judge': judge_params}
  compiled = jitted.lower(state, frozen, _abstract_batch(cfg, mesh)).compile()
  mem = compiled.memory_analysis()
  n = mesh.size
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
  return dict(preset=preset, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, mesh=dict(mesh.shape),
              devices=n, lora_rank=lora_rank, per_device_bytes=int(per_device),
              argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
              temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
              params_bytes=_nbytes(state.params) // n, opt_state_bytes=_nbytes(state.opt_state) // n,
              reference_bytes=_nbytes(reference) // n, judge_bytes=_nbytes(judge_params) // n,
              kv_cache_bytes=compile_only.kv_cache_bytes(cfg, mesh), hoisting=_hoisting(),
              parameters=sum(x.size for x in jax.tree.leaves(reference)),
              trained_parameters=sum(x.size for x in jax.tree.leaves(state.params)))


def measure(preset: str, batch: int, new_tokens: int, iters: int, compute_dtype: str = 'float32',
            peak_n: int = 1024) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from nlhf_jax import perf
  from nlhf_jax.distributed import make_mesh
  from nlhf_jax.models.judges import RewardModel
  from nlhf_jax.online.judges import model_judge
  from nlhf_jax.online.step import OnlineStep
  from nlhf_jax.training import optim
  from nlhf_jax.trainer import loop, tasks
  from nlhf_jax.trainer.tasks import get_task

  cfg = online_config(preset, batch, new_tokens)
  cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype=compute_dtype))
  mesh = make_mesh(cfg.mesh)
  task = get_task('nash_md')
  tx = optim.make_optimizer(cfg.optim, 1000)
  run = tasks.setup(cfg, task, tx, mesh)
  graphdef, init_fn, shardings = run.graphdef, run.init, run.shardings
  state = jax.jit(init_fn, out_shardings=shardings)(0)
  reference = jax.jit(init_fn, out_shardings=shardings)(1).params
  rm_graphdef, rm_params = nnx.split(RewardModel(cfg.model, nnx.Rngs(2)))
  rm_params = jax.tree.map(lambda x: x + 0.02, nnx.to_pure_dict(rm_params))  # a non-constant reward
  judge = model_judge('reward_model', rm_graphdef, rm_params)
  step = OnlineStep(cfg, graphdef, tx, optim.schedule(cfg.optim, 1000), judge, stop_ids=(), mesh=mesh)
  jitted = loop.jit_step(cfg, run, step, mesh)  # as training jits it
  frozen = {'reference': reference, 'judge': judge.params}
  rng = np.random.default_rng(0)
  lengths = rng.integers(32, 65, batch)
  mask = np.arange(64)[None, :] >= 64 - lengths[:, None]
  prompts = {'prompt': np.where(mask, rng.integers(4, cfg.model.vocab_size, (batch, 64)), 0).astype(np.int32),
             'prompt_mask': mask, 'example_index': np.arange(batch, dtype=np.int32)}
  data = jax.device_put(prompts)
  compiled = jitted.lower(state, frozen, data).compile()
  mem = compiled.memory_analysis()
  footprint = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                        + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  box = {'state': state}

  def one_step():
    box['state'], metrics = compiled(box['state'], frozen, data)
    return metrics['loss']

  seconds = perf.median_time(one_step, iters, warmup=2)
  peak = perf.matmul_peak_flops(jnp.dtype(compute_dtype), n=peak_n)  # peak_n^3: the MFU denominator
  flops = perf.step_flops(cfg)  # the count that nlhf-compile sets beside the compiled FLOPs
  mem_bytes, mem_kind = perf.peak_memory_bytes()
  agreement = None
  if compute_dtype != 'float32':
    agreement = logprob_agreement(step, box['state'], frozen, data)
  return dict(preset=preset, batch=batch, new_tokens=new_tokens, compute_dtype=compute_dtype,
              logprob_abs_diff_vs_float32=agreement, step_s=seconds,
              sampled_tokens_per_s=2 * batch * new_tokens / seconds, flops=flops, peak=peak,
              mfu=flops / seconds / peak, compiled_bytes=footprint, peak_bytes=mem_bytes, peak_kind=mem_kind,
              devices=jax.device_count(), platform=jax.devices()[0].platform)


def logprob_agreement(step, state, frozen: dict, data: dict) -> float:
  """mean |log pi(y_n) at the step's compute dtype - log pi(y_n) in float32| per response token, for responses y
  the step samples, with the same parameters: how far the lower-precision training path is from float32."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from nlhf_jax.models import Transformer
  from nlhf_jax.models.logprobs import response_logprobs
  model_cfg = dataclasses.replace(step.cfg.model, compute_dtype='float32')
  f32 = nnx.graphdef(nnx.eval_shape(lambda: Transformer(model_cfg, nnx.Rngs(0))))

  def diff(state):
    _, _, out = step.loss_and_grads(state, frozen, data)
    y, x = out['y'], (data['prompt'], data['prompt_mask'])
    low = response_logprobs(nnx.merge(step.graphdef, state.params), *x, y['tokens'], y['mask'])
    high = response_logprobs(nnx.merge(f32, state.params), *x, y['tokens'], y['mask'])
    return jnp.sum(jnp.abs(low - high)) / jnp.maximum(y['mask'].sum(), 1)
  return float(jax.jit(diff)(state))


def _print_memory(r: dict) -> None:
  from nlhf_jax.perf import fmt_bytes
  print(f"Nash-MD-PG step, compiled only ({r['preset']}: {r['parameters'] / 1e9:.2f}B parameters; policy, bfloat16 "
        f"reference and preference-model judge; batch {r['batch']} x {r['prompt_len']} prompt tokens, "
        f"{r['new_tokens']} new tokens; mesh {r['mesh']}, LoRA rank {r['lora_rank']}; XLA's loop-invariant code motion "
        f"{'on' if r['hoisting'] else 'off'}), per device:")
  print(f"  total {fmt_bytes(r['per_device_bytes'])} = arguments {fmt_bytes(r['argument_bytes'])} + outputs "
        f"{fmt_bytes(r['output_bytes'])} + temporaries {fmt_bytes(r['temp_bytes'])} - aliased (donated) "
        f"{fmt_bytes(r['alias_bytes'])}")
  trained = (f"LoRA adapters ({r['trained_parameters'] / 1e6:.1f}M)" if r['lora_rank'] else "policy parameters")
  reference = 'reference = the frozen base' if r['lora_rank'] else 'reference'
  print(f"  inputs: {trained} {fmt_bytes(r['params_bytes'])}, optimizer state "
        f"{fmt_bytes(r['opt_state_bytes'])}, {reference} {fmt_bytes(r['reference_bytes'])}, judge "
        f"{fmt_bytes(r['judge_bytes'])}; KV caches (in the temporaries) {fmt_bytes(r['kv_cache_bytes'])}",
        flush=True)


def main(argv) -> None:
  del argv
  from nlhf_jax.perf import fmt_bytes
  if FLAGS.compile_only:
    if not FLAGS.hoisting and _hoisting():
      _turn_off_hoisting()
    r = compile_memory(FLAGS.preset, FLAGS.batch_size or 64, FLAGS.prompt_len or 256, FLAGS.new_tokens or 128, FLAGS.mesh,
                       FLAGS.lora_rank)
    _print_memory(r)
    if FLAGS.json:
      print(json.dumps(r), flush=True)
    return
  results = {}
  for dtype in FLAGS.compute_dtypes:
    r = measure(FLAGS.preset, FLAGS.batch_size or 8, FLAGS.new_tokens or 64, FLAGS.iters, dtype)
    results[dtype] = r
    compiled = 'n/a' if r['compiled_bytes'] is None else fmt_bytes(r['compiled_bytes'])
    print(f"Nash-MD-PG step ({r['preset']} policy/reference/reward model, batch {r['batch']}, prompts 32-64, "
          f"{r['new_tokens']} new tokens, {dtype} compute, {r['devices']} {r['platform']} device(s)), median of "
          f"{FLAGS.iters} steps after compilation:")
    agreement = ('' if r['logprob_abs_diff_vs_float32'] is None else
                 f" | mean |log pi - log pi (float32)| {r['logprob_abs_diff_vs_float32']:.2e} a token")
    print(f"  step {r['step_s'] * 1e3:.1f} ms | {r['sampled_tokens_per_s']:.0f} sampled tok/s (y and y') | "
          f"{r['flops'] / 1e9:.2f} GFLOP/step | MFU {100 * r['mfu']:.1f}% of {r['peak'] / 1e9:.0f} GFLOP/s "
          f"({dtype} matmul, measured) | compiled {compiled} | peak {fmt_bytes(r['peak_bytes'])} "
          f"({r['peak_kind']}){agreement}", flush=True)
  if 'float32' in results and len(results) > 1:
    for dtype, r in results.items():
      if dtype != 'float32':
        print(f"  {dtype} step / float32 step: {r['step_s'] / results['float32']['step_s']:.2f} "
              f"(speed-up {results['float32']['step_s'] / r['step_s']:.2f}x, same run)", flush=True)
  if FLAGS.json:
    first = results[FLAGS.compute_dtypes[0]]
    out = {**first, 'peak_flops': first['peak']}
    for dtype, r in list(results.items())[1:]:
      out.update({f'{k}_{dtype}': v for k, v in r.items() if k in ('step_s', 'mfu', 'peak', 'sampled_tokens_per_s',
                                                                    'logprob_abs_diff_vs_float32')})
    print(json.dumps(out), flush=True)


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
