"""Online IPO: y, y' ~ pi_theta, IPO loss weighted by the judge's P(y > y'); variant `,md` is IPO-MD (both
samples from the token-level mixture pi^beta). docs/math.md section 5.
  nlhf-train --config=experiments/configs/online_ipo.py:tiny --workdir=/tmp/online_ipo
"""
from nlhf_jax.config.defaults import sibling

nash_md = sibling(__file__, 'nash_md')  # the shared online config


def get_config(arg: str = 'tiny'):
  size, flavour = nash_md.parse(arg, 'online_ipo.py', flavours=('md',))
  c = nash_md.online_config(size, 'ipo_md' if flavour == 'md' else 'online_ipo')
  c.online.tau = 0.5 if size == 'tiny' else 0.1
  return c
