"""Extragradient preference optimisation, EGPO (Zhou, Fazel and Du, arXiv 2503.08942; docs/math.md section 8): in
one step, online IPO's gradient at theta_t makes the half step theta_{t+1/2}, and the gradient at theta_{t+1/2}
(its own samples and judgements) is applied from theta_t. Variants as nash_md.py; tau as online_ipo.py.
  nlhf-train --config=experiments/configs/extragradient.py:tiny --workdir=/tmp/extragradient
"""
from nlhf_jax.config.defaults import sibling

nash_md = sibling(__file__, 'nash_md')  # the shared online config


def get_config(arg: str = 'tiny'):
  size, _ = nash_md.parse(arg, 'extragradient.py', flavours=())
  c = nash_md.online_config(size, 'extragradient')
  c.online.tau = 0.5 if size == 'tiny' else 0.1
  return c
