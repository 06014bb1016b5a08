"""Nash-EMA-PG: the opponent y' is sampled from the policy with EMA parameters (kept in the train state),
theta_bar <- ema_rate * theta_bar + (1 - ema_rate) * theta after every update; KL-regularised towards mu.
The opponent is the EMA policy alone, as in the paper (whose Nash-EMA "beta" is this ema_rate): config.online.beta
is unused, and validation refuses a value other than its default.
  nlhf-train --config=experiments/configs/nash_ema.py:tiny --workdir=/tmp/nash_ema
"""
from nlhf_jax.config.defaults import sibling

nash_md = sibling(__file__, 'nash_md')  # the shared online config


def get_config(arg: str = 'tiny'):
  size, _ = nash_md.parse(arg, 'nash_ema.py', flavours=())
  c = nash_md.online_config(size, 'nash_ema')
  c.online.ema_rate = 0.9 if size == 'tiny' else 0.999
  return c
