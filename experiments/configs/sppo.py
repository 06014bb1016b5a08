"""SPPO (Wu et al., arXiv 2405.00675; docs/math.md section 8): K = config.online.samples_per_prompt samples of pi_t
per prompt, every pair judged, and the loss (log(pi(y) / pi_t(y)) - eta (P(y > pi_t) - 1/2))^2 with P(y > pi_t)
the win rate of y against the K - 1 others. Variants as inpo.py (tiny: K = 4 on 8 prompts).
  nlhf-train --config=experiments/configs/sppo.py:tiny --workdir=/tmp/sppo
"""
from nlhf_jax.config.defaults import sibling

inpo = sibling(__file__, 'inpo')


def get_config(arg: str = 'tiny'):
  c = inpo.iterative_config(arg, 'sppo')
  c.online.samples_per_prompt = 4
  c.train.batch_size = max(c.train.batch_size // 2, 8)
  return c
