"""The Bradley-Terry reward model r(x, y) of the RLHF baseline: the same backbone with a scalar head, trained on
the same pairs with the Bradley-Terry loss -log sigmoid(r(x, a) - r(x, b)) (soft labels allowed).
  nlhf-train --config=experiments/configs/reward_model.py:tiny --workdir=/tmp/rm
"""
from nlhf_jax.config.defaults import sibling

preference_model = sibling(__file__, 'preference_model')  # the shared pairwise config


def get_config(arg: str = 'tiny'):
  return preference_model.pairwise_config(arg, 'reward_model')
