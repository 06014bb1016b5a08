"""INPO (Zhang et al., arXiv 2407.00617; docs/math.md section 8): pairs y, y' ~ pi_t (the policy frozen at the start
of each iteration of config.online.iteration_steps steps), judged, and the squared loss whose minimiser is the
mirror step log pi_{t+1} = (1 - eta tau) log pi_t + eta tau log mu + eta P(y > pi_t) + const. Our eta is the
paper's 1 / eta. The successors comal, mpo and sppo share this file's settings (`iterative_config`).
Variants: `tiny`, `small`, `125m`, `hf`, `laptop`, as nash_md.py.
  nlhf-train --config=experiments/configs/inpo.py:tiny --workdir=/tmp/inpo
  nlhf-train --config=experiments/configs/inpo.py:hf --workdir=runs/inpo \\
      --config.online.reference_checkpoint=runs/sft --config.online.judge_checkpoint=runs/pm \\
      --config.data.name=my_prompts --config.data.data_dir=DATA
"""
from nlhf_jax.config.defaults import sibling

nash_md = sibling(__file__, 'nash_md')  # the shared online config


def iterative_config(arg: str, objective: str):
  """The online config of `objective` (a successor of Nash-MD that keeps pi_t) at size `arg`: eta, tau and the
  iteration's length. tiny: eta tau = 0.2 and iterations of 5 steps; the other sizes iterate over about a tenth of
  the run, with eta tau = 0.08 at tau = 0.008."""
  size, _ = nash_md.parse(arg, f'{objective}.py', flavours=())
  c = nash_md.online_config(size, objective)
  if size == 'tiny':
    c.online.update(eta=2.0, tau=0.1, iteration_steps=5, prox_iterations=3)
  else:
    c.online.update(eta=10.0, iteration_steps=max(c.train.num_steps // 10, 1), prox_iterations=4)
  return c


def get_config(arg: str = 'tiny'):
  return iterative_config(arg, 'inpo')
