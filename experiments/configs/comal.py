"""COMAL (Liu et al., arXiv 2410.23223; docs/math.md section 8): INPO's inner loop with the KL term towards a prox
centre instead of mu, reset to the current policy every config.online.prox_iterations iterations (a prox-point
outer loop whose last iterate converges to a Nash equilibrium of the unregularised game). The prox centre and pi_t
are checkpointed state: a resumed run continues the same iteration. Variants as inpo.py.
  nlhf-train --config=experiments/configs/comal.py:tiny --workdir=/tmp/comal
"""
from nlhf_jax.config.defaults import sibling

inpo = sibling(__file__, 'inpo')


def get_config(arg: str = 'tiny'):
  return inpo.iterative_config(arg, 'comal')
