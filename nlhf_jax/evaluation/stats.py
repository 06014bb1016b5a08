"""Win-rate estimates with 95% Clopper-Pearson intervals, the mirrored comparison matrix, and its Nash averaging.

A cell (row r, column c) estimates P(pi_c > pi_r) from N judged pairs (y_c, y_r), one per comparison index n.
Judgements are either
- 'expected': the judge's probability p_n itself; successes = sum_n p_n (a real number), which the
  Clopper-Pearson formula accepts through the beta quantiles (a smooth extension of the integer case);
- 'bernoulli': a 0/1 draw 1[u_n < p_n] with u_n ~ U(0, 1) from numpy.random.default_rng(seed); successes is an
  integer count.
Only the cells above the diagonal are judged; cell (c, r) is their complement (N - successes), so mirrored cells
sum to 1 exactly in both modes. The diagonal is 1/2 by definition (no comparisons are spent on it).

Nash averaging (nash_summary; docs/math.md section 6): the maximum-entropy Nash equilibrium p of the meta-game whose
payoff is P(pi_i > pi_j) - 1/2 = win[j, i] - 1/2 (tabular/nash_average.py), and each policy's win rate against the
mixture, P(pi_i > p) = sum_r p_r win[r, i]: the p-weighted mean of column i; <= 1/2, and = 1/2 on the support.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from nlhf_jax.tabular.nash_average import nash_average

JUDGEMENTS = ('expected', 'bernoulli')


def clopper_pearson(successes: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
  """The exact (Clopper-Pearson) 1 - alpha interval for a binomial proportion; successes may be fractional."""
  if n <= 0:
    raise ValueError(f'clopper_pearson needs n > 0, got {n}')
  if not 0 <= successes <= n:
    raise ValueError(f'successes={successes} must be in [0, n={n}]')
  lower = 0.0 if successes <= 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
  upper = 1.0 if successes >= n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
  return lower, upper


def successes(probs: np.ndarray, judgement: str, rng: np.random.Generator | None = None) -> float:
  """The number of wins among len(probs) comparisons with win probabilities `probs` (see the module doc)."""
  probs = np.asarray(probs, np.float64)
  if judgement == 'expected':
    return float(probs.sum())
  if judgement == 'bernoulli':
    if rng is None:
      raise ValueError("judgement='bernoulli' needs a seeded numpy Generator")
    return float(np.sum(rng.uniform(size=probs.shape) < probs))
  raise ValueError(f'judgement={judgement!r}: use one of {", ".join(JUDGEMENTS)}')


def win_matrix(prob_fn, num_policies: int, n: int, judgement: str = 'expected', seed: int = 0,
               alpha: float = 0.05) -> dict[str, np.ndarray]:
  """{'win', 'lower', 'upper', 'successes'}, each [P, P]: cell (r, c) is P(pi_c > pi_r).

  prob_fn(r, c) -> float [n]: the judge's probabilities that policy c's responses beat policy r's.
  """
  k = np.full((num_policies, num_policies), n / 2.0)
  for r in range(num_policies):
    for c in range(r + 1, num_policies):
      rng = np.random.default_rng([seed, r, c])
      k[r, c] = successes(prob_fn(r, c), judgement, rng)
      k[c, r] = n - k[r, c]
  bounds = np.array([[clopper_pearson(k[r, c], n, alpha) for c in range(num_policies)]
                     for r in range(num_policies)]).reshape(num_policies, num_policies, 2)
  return {'win': k / n, 'lower': bounds[..., 0], 'upper': bounds[..., 1], 'successes': k}


def nash_summary(win, names: list[str], atol: float = 1e-5) -> dict:
  """{'weights', 'win_rate_vs_nash', 'support', 'entropy', 'exploitability'} of a win matrix [P, P] whose cell
  (r, c) is P(pi_c > pi_r) (as win_matrix's, or as stored in matrix.json to 6 decimals: mirrored cells sum to 1
  within atol). weights and win_rate_vs_nash follow `names`; support lists the names with positive weight."""
  res = nash_average(np.asarray(win, np.float64).T, atol=atol)
  return {'weights': [float(w) for w in res.weights], 'win_rate_vs_nash': [float(w) for w in res.win_rates],
          'support': [names[i] for i in res.support], 'entropy': res.entropy, 'exploitability': res.exploitability}
