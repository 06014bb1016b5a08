"""Speed of the tabular dynamics (printed, never asserted): `python -m nlhf_jax.tabular.bench`.

Times 10,000 Nash-MD steps (eta_t = 2 / (tau (t + 2)), KL and exploitability recorded at every step) on one
50-action random game, and the same vmapped over 100 games, after compilation; float64 and float32.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from nlhf_jax.tabular import algorithms, exact, games


def _time(fn, repeats: int = 3) -> float:
  jax.block_until_ready(fn())  # compile
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def main(num_steps: int = 10_000, n: int = 50, batch: int = 100, tau: float = 0.1) -> None:
  rng = np.random.default_rng(0)
  gs = [games.make_game(games.random_game(rng, n), games.reference_policy(n, 'dirichlet', rng))
        for _ in range(batch)]
  targets = np.stack([exact.solve_regularized_game(g.P, g.mu, tau)[0] for g in gs])
  one = algorithms.tables(gs[0].P, gs[0].mu)
  many = algorithms.stack([algorithms.tables(g.P, g.mu) for g in gs])
  print(f'tabular Nash-MD, {num_steps} steps, {n} actions, tau = {tau} ({jax.default_backend()})')
  for label, x64 in (('float64', True), ('float32', False)):
    with jax.enable_x64(x64):
      s1 = _time(lambda: algorithms.run('nash_md', one, tau, num_steps, targets[0]))
      sb = _time(lambda: algorithms.run_batch('nash_md', many, np.full(batch, tau), num_steps, targets), 1)
      c = algorithms.run('nash_md', one, tau, num_steps, targets[0])
    print(f'  {label}: one game {s1:.3f} s ({s1 / num_steps * 1e6:.1f} us/step); '
          f'{batch} games vmapped {sb:.3f} s; final KL(pi*_tau, pi_T) {float(c.kl[-1]):.2e}, '
          f'e_tau {float(c.exploitability[-1]):.2e}')


if __name__ == '__main__':
  main()
