"""The RLHF baseline: regularised policy gradient on a Bradley-Terry reward model r(x, y), with the reward of an
independent second sample as baseline (docs/math.md section 4).
  nlhf-train --config=experiments/configs/rlhf.py:tiny --workdir=/tmp/rlhf \\
      --config.online.judge_checkpoint=/tmp/reward_model
"""
from nlhf_jax.config.defaults import sibling

nash_md = sibling(__file__, 'nash_md')  # the shared online config


def get_config(arg: str = 'tiny'):
  size, _ = nash_md.parse(arg, 'rlhf.py', flavours=())
  c = nash_md.online_config(size, 'rlhf')
  c.online.update(judge='reward_model', oracle='', tau=0.05)
  return c
