"""The Bradley-Terry reward model r(x, y) of the RLHF baseline: the same backbone with a scalar head, trained on
the same pairs with the Bradley-Terry loss -log sigmoid(r(x, a) - r(x, b)) (soft labels allowed).
  nlhf-train --config=experiments/configs/reward_model.py:tiny --workdir=/tmp/rm
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import preference_model  # noqa: E402  (the shared pairwise config)


def get_config(arg: str = 'tiny'):
  return preference_model.pairwise_config(arg, 'reward_model')
