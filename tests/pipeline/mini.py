"""The miniature pipeline that the pipeline tests share: its config and one run of it, interrupted and resumed."""
import logging
import os

import pytest

from experiments.configs import pipeline as pipeline_configs
from nlhf_jax.pipeline import runner
from nlhf_jax.training import checkpointing


def mini_config():
  p = pipeline_configs.get_config('tiny')
  p.model.update(d_model=32, num_heads=4, head_dim=8, mlp_dim=64)
  p.judge_model.update(d_model=32, num_heads=4, head_dim=8, mlp_dim=64)
  p.data.update(num_prompts=256, num_demonstrations=256)
  p.sft.update(num_steps=12, checkpoint_every=6)
  p.pairs.update(num_prompts=64)
  p.preference_model.update(num_steps=6, checkpoint_every=6)
  p.reward_model.update(num_steps=6, checkpoint_every=6)
  p.policies = 'rlhf,sp,dpo'
  p.policy.update(num_steps=3, checkpoint_every=3)
  p.policy.sampling.max_new_tokens = 12
  p.offline.update(num_steps=3, checkpoint_every=3)
  p.eval.update(num_prompts=16, samples_per_prompt=2, batch_size=32)
  p.eval.sampling.max_new_tokens = 12
  return p


def overrides() -> list[str]:
  """`--config.KEY=VALUE` flags that turn `pipeline.py:tiny` into mini_config() on the command line."""
  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
    return out
  base, mini = flat(pipeline_configs.get_config('tiny').to_dict()), flat(mini_config().to_dict())
  return [f'--config.{k}={v}' for k, v in sorted(mini.items()) if base[k] != v]


def run_interrupted_then_resumed(workdir: str):
  """(workdir, statuses of the second run, the resume log, DONE mtimes of the first run): the first run stops
  the sft stage after step 6 (of 12), the second finishes the pipeline."""
  p = mini_config()
  with pytest.raises(runner.Interrupted):
    runner.run_pipeline(p, workdir, interrupt=('sft', 6))
  first = {s: os.path.getmtime(os.path.join(workdir, s, runner.MARKER)) for s in ('tokenizer', 'data')}
  assert not os.path.exists(os.path.join(workdir, 'sft', runner.MARKER))
  assert checkpointing.Checkpointer(os.path.join(workdir, 'sft', 'checkpoints')).latest_step() == 6
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger('nlhf_jax').addHandler(handler)
  try:
    status = runner.run_pipeline(p, workdir)
  finally:
    logging.getLogger('nlhf_jax').removeHandler(handler)
  return workdir, status, [r.getMessage() for r in records], first
