"""Speed of the full Nash-MD-PG train step (`make bench`; printed, never asserted).

  python -m nlhf_jax.online.bench [--preset=small --batch_size=8 --new_tokens=64 --iters=5]

The reference configuration: Llama-style policy and reference (preset `small`: vocabulary 4096, d_model 256,
4 layers, 4 heads, MLP 1024), prompts of 32 to 64 tokens (left-padded to 64), batch 8, 64 new tokens, float32,
and a Bradley-Terry reward model of the same size as judge (sigmoid(r - r')). One step = sample y ~ pi and
y' ~ pi^beta in one decode loop, judge the pairs, reference log-probabilities of y, the policy-gradient loss and
its gradient, and the AdamW update. Printed: median step time, sampled tokens/s (2 x batch x new tokens per
step over the step time), model FLOPs per step, MFU against a matmul peak measured in the same process, the
compiled step's memory and the process's peak memory.
"""
from __future__ import annotations

from absl import app, flags

_PRESET = flags.DEFINE_string('preset', 'small', 'Model preset of policy, reference and reward model.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Prompts per step.')
_NEW = flags.DEFINE_integer('new_tokens', 64, 'Response length (no EOS is sampled: every row runs to the end).')
_ITERS = flags.DEFINE_integer('iters', 5, 'Timed steps (median reported).')


def online_config(preset: str, batch: int, new_tokens: int):
  """The benchmark's Nash-MD config (a reward-model judge built in memory, so no checkpoint path is read)."""
  import jax

  from nlhf_jax.config import from_config_dict
  from nlhf_jax.config.defaults import defaults
  c = defaults(preset)
  c.train.update(objective='nash_md', batch_size=batch)
  c.data.update(prompt_len=64)
  c.online.update(max_new_tokens=new_tokens, beta=0.125, tau=0.008, judge='reward_model', judge_checkpoint='-')
  c.optim.update(schedule='constant')
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  return from_config_dict(c, jax.device_count())


def measure(preset: str, batch: int, new_tokens: int, iters: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from nlhf_jax import perf
  from nlhf_jax.distributed import make_mesh
  from nlhf_jax.models.judges import RewardModel
  from nlhf_jax.online.judges import model_judge
  from nlhf_jax.online.step import OnlineStep
  from nlhf_jax.training import loop, optim
  from nlhf_jax.training.tasks import get_task

  cfg = online_config(preset, batch, new_tokens)
  mesh = make_mesh(cfg.mesh)
  task = get_task('nash_md')
  tx = optim.make_optimizer(cfg.optim, 1000)
  graphdef, init_fn, shardings = loop._initializer(task, task.make_model(cfg), tx, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)(0)
  reference = jax.jit(init_fn, out_shardings=shardings)(1).params
  rm_graphdef, rm_params = nnx.split(RewardModel(cfg.model, nnx.Rngs(2)))
  rm_params = jax.tree.map(lambda x: x + 0.02, nnx.to_pure_dict(rm_params))  # a non-constant reward
  judge = model_judge('reward_model', rm_graphdef, rm_params)
  step = OnlineStep(cfg, graphdef, tx, optim.schedule(cfg.optim, 1000), judge, stop_ids=(), mesh=mesh)
  jitted = jax.jit(step, in_shardings=(shardings, None, None), out_shardings=(shardings, None), donate_argnums=0)
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
  peak = perf.matmul_peak_flops(jnp.float32)
  flops = perf.nash_md_step_flops(cfg.model, batch, 64, new_tokens)
  mem_bytes, mem_kind = perf.peak_memory_bytes()
  return dict(preset=preset, batch=batch, new_tokens=new_tokens, step_s=seconds,
              sampled_tokens_per_s=2 * batch * new_tokens / seconds, flops=flops, peak=peak,
              mfu=flops / seconds / peak, compiled_bytes=footprint, peak_bytes=mem_bytes, peak_kind=mem_kind,
              devices=jax.device_count(), platform=jax.devices()[0].platform)


def main(argv) -> None:
  del argv
  from nlhf_jax.perf import fmt_bytes
  r = measure(_PRESET.value, _BATCH.value, _NEW.value, _ITERS.value)
  compiled = 'n/a' if r['compiled_bytes'] is None else fmt_bytes(r['compiled_bytes'])
  print(f"Nash-MD-PG step ({r['preset']} policy/reference/reward model, batch {r['batch']}, prompts 32-64, "
        f"{r['new_tokens']} new tokens, float32, {r['devices']} {r['platform']} device(s)), median of "
        f"{_ITERS.value} steps after compilation:")
  print(f"  step {r['step_s'] * 1e3:.1f} ms | {r['sampled_tokens_per_s']:.0f} sampled tok/s (y and y') | "
        f"{r['flops'] / 1e9:.2f} GFLOP/step | MFU {100 * r['mfu']:.1f}% of {r['peak'] / 1e9:.0f} GFLOP/s "
        f"(float32 matmul, measured) | compiled {compiled} | peak {fmt_bytes(r['peak_bytes'])} ({r['peak_kind']})",
        flush=True)


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
