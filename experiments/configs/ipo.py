"""Offline IPO on a pairs data set against a frozen reference mu: (h - 1/(2 tau))^2 in expectation over the
label (soft preferences as they are), h the difference of the two responses' log-ratios log pi / mu;
--config.offline.length_normalized=true is the length-normalised variant (token-mean log-ratios). docs/math.md
section 5; variants and commands as dpo.py.
  nlhf-train --config=experiments/configs/ipo.py:tiny --workdir=/tmp/ipo [--config.init_checkpoint=/tmp/sft]
"""
from nlhf_jax.config.defaults import sibling


def get_config(arg: str = 'tiny'):
  c = sibling(__file__, 'dpo').offline_config(arg, 'ipo')
  c.offline.tau = 0.5 if (arg or 'tiny') == 'tiny' else 0.1
  return c
