"""MPO (Wang et al., arXiv 2410.16714; docs/math.md section 8): magnetic mirror descent, pairs y, y' ~ pi_t fitted to
log pi_{t+1} = (log pi_t + eta tau log magnet + eta P(y > pi_t)) / (1 + eta tau) + const; the magnet starts at the
initial policy and is reset to the current policy every config.online.prox_iterations iterations. Variants as
inpo.py.
  nlhf-train --config=experiments/configs/mpo.py:tiny --workdir=/tmp/mpo
"""
from nlhf_jax.config.defaults import sibling

inpo = sibling(__file__, 'inpo')


def get_config(arg: str = 'tiny'):
  return inpo.iterative_config(arg, 'mpo')
