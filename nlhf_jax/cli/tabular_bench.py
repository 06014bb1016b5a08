"""Speed of the tabular dynamics (printed, never asserted): `python -m nlhf_jax.cli.tabular_bench [--json]`.

Times 10,000 Nash-MD steps (eta_t = 2 / (tau (t + 2)), KL and exploitability recorded at every step) on one
50-action random game, and the same vmapped over 100 games, after compilation; float64 and float32.

--json adds, as the last line, one JSON object of every figure (numbers): num_steps, actions, games, tau and, for
DTYPE in float64 and float32, DTYPE_one_game_s, DTYPE_step_s (one game's time per step), DTYPE_games_s (the
vmapped games), DTYPE_final_kl (KL(pi*_tau, pi_T)) and DTYPE_final_exploitability (e_tau). Nothing here is
compared with a matmul rate, so no peak is measured.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

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


def main(num_steps: int = 10_000, n: int = 50, batch: int = 100, tau: float = 0.1, emit_json: bool = False) -> dict:
  """Runs the bench; returns the figures that `emit_json` prints as the last line."""
  rng = np.random.default_rng(0)
  gs = [games.make_game(games.random_game(rng, n), games.reference_policy(n, 'dirichlet', rng))
        for _ in range(batch)]
  targets = np.stack([exact.solve_regularized_game(g.P, g.mu, tau)[0] for g in gs])
  one = algorithms.tables(gs[0].P, gs[0].mu)
  many = algorithms.stack([algorithms.tables(g.P, g.mu) for g in gs])
  print(f'tabular Nash-MD, {num_steps} steps, {n} actions, tau = {tau} ({jax.default_backend()})')
  figures = {'num_steps': num_steps, 'actions': n, 'games': batch, 'tau': tau}
  for label, x64 in (('float64', True), ('float32', False)):
    with jax.enable_x64(x64):
      s1 = _time(lambda: algorithms.run('nash_md', one, tau, num_steps, targets[0]))
      sb = _time(lambda: algorithms.run_batch('nash_md', many, np.full(batch, tau), num_steps, targets), 1)
      c = algorithms.run('nash_md', one, tau, num_steps, targets[0])
    kl, e_tau = float(c.kl[-1]), float(c.exploitability[-1])
    print(f'  {label}: one game {s1:.3f} s ({s1 / num_steps * 1e6:.1f} us/step); '
          f'{batch} games vmapped {sb:.3f} s; final KL(pi*_tau, pi_T) {kl:.2e}, e_tau {e_tau:.2e}')
    figures.update({f'{label}_one_game_s': s1, f'{label}_step_s': s1 / num_steps, f'{label}_games_s': sb,
                    f'{label}_final_kl': kl, f'{label}_final_exploitability': e_tau})
  if emit_json:
    print(json.dumps(figures), flush=True)
  return figures


def cli(argv: Sequence[str] | None = None) -> dict:
  """The command line: main's arguments as flags (defaults: the reference sizes)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_steps', type=int, default=10_000)
  parser.add_argument('--actions', type=int, default=50)
  parser.add_argument('--games', type=int, default=100)
  parser.add_argument('--tau', type=float, default=0.1)
  parser.add_argument('--json', action='store_true', help='Print every figure as one JSON object, last line.')
  args = parser.parse_args(argv)
  return main(args.num_steps, args.actions, args.games, args.tau, args.json)


if __name__ == '__main__':
  cli()
