"""Every tabular algorithm on the laboratory's games, in one report:
`python -m nlhf_jax.cli.tabular_report --workdir=DIR`.

Runs the experiment of `nlhf-tabular` (tabular/experiment.py: run_experiment) for each config variant of --variants
(default: dice, the non-transitive dice with tau = 0.01; cyclic, rock-paper-scissors on 5 actions; random, 16 random
games of 20 actions; mixture, 8 transitive-plus-cyclic games) with every algorithm (or --algorithms), and writes
DIR/report.md, one table per game of the last iterate pi_T and the average iterate pibar_T: KL to pi*_tau and e_tau
in the regularised game, KL to pi* and e_0 in the unregularised one. Each variant's curves.json, results.md and
plots go to DIR/VARIANT/. --num_steps overrides every variant's number of steps.

Everything is checked before anything runs. DIR is built whole beside itself and renamed into place, so it
replaces what DIR held: DIR must be new or empty, or (with --overwrite) hold only what a report writes (report.md
and variant folders); a folder that holds anything else is refused even with --overwrite, since the rename would
delete it.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from typing import Sequence

from nlhf_jax import outputs
from nlhf_jax.cli import common
from nlhf_jax.config import ConfigError
from nlhf_jax.tabular import algorithms, experiment

DEFAULT_VARIANTS = ('dice', 'cyclic', 'random', 'mixture')


def config_module():
  """experiments/configs/tabular.py of the checkout, loaded by path (as `--config=` files are)."""
  root = common.checkout_configs()
  if root is None or not (root / 'tabular.py').is_file():
    raise ConfigError('experiments/configs/tabular.py not found: run the report from a checkout of nlhf_jax')
  spec = importlib.util.spec_from_file_location('nlhf_tabular_config', root / 'tabular.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def configs(variants: Sequence[str], algorithm_list: str | None, num_steps: int | None) -> list:
  """The config of each variant with the overrides, each checked (experiment.check_config)."""
  tabular_config = config_module()
  out = []
  for v in variants:
    if v not in tabular_config.VARIANTS:
      raise ConfigError(f'--variants: unknown variant {v!r}; use a comma-separated list of '
                        f'{", ".join(tabular_config.VARIANTS)}')
    cfg = tabular_config.get_config(v)
    if algorithm_list is not None:
      cfg.algorithms = algorithm_list
    if num_steps is not None:
      cfg.num_steps = num_steps
    experiment.check_config(cfg)
    out.append(cfg)
  return out


def report(results: Sequence[dict]) -> str:
  """The tables of every variant, as one markdown document."""
  parts = ['# The tabular algorithms on the laboratory\'s games', '',
           'Last iterate pi_T and average iterate pibar_T (the mean of pi_0..pi_{T-1}) of each algorithm against the '
           'regularised equilibrium pi*_tau and the unregularised one pi*.', '']
  for res in results:
    parts.append('#' + experiment.markdown(res))
  return '\n'.join(parts)


def check_workdir(workdir: str, overwrite: bool) -> None:
  """DIR may be replaced whole (see the module docstring): OutputError for a file, for a folder that holds what
  no report writes, and for a report's folder without `overwrite`."""
  outputs.check_dir(workdir)  # not a file, nor below one
  if not os.path.isdir(workdir):
    return
  ours = {'report.md', *config_module().VARIANTS}
  other = sorted(n for n in os.listdir(workdir) if n not in ours)
  if other:
    shown = ', '.join(other[:5]) + (', ...' if len(other) > 5 else '')
    raise outputs.OutputError(f'--workdir={workdir} holds {shown}, which no report writes; the report replaces the '
                              'whole folder: give a new or empty folder')
  outputs.check_dir(workdir, overwrite=overwrite, empty=True)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='Folder for report.md and one folder per variant.')
  parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS))
  parser.add_argument('--algorithms', default=None, help=f'Default: all of {", ".join(algorithms.ALGORITHMS)}.')
  parser.add_argument('--num_steps', type=int, default=None, help="Default: each variant's own.")
  parser.add_argument('--overwrite', action='store_true', help='Replace a DIR that holds a report (only a report).')
  args = parser.parse_args(argv)
  return common.guard(_run, args)


def _run(args) -> int:
  logging.basicConfig(level=logging.INFO)
  variants = [v.strip() for v in args.variants.split(',') if v.strip()]
  if not variants:
    raise ConfigError('--variants is empty; use a comma-separated list of ' + ', '.join(DEFAULT_VARIANTS))
  cfgs = configs(variants, args.algorithms, args.num_steps)
  check_workdir(args.workdir, args.overwrite)
  results = []
  with outputs.building_dir(args.workdir) as tmp:
    for v, cfg in zip(variants, cfgs):
      logging.info('variant %s: %s', v, cfg.algorithms)
      res = experiment.run_experiment(cfg)
      experiment.write(res, os.path.join(tmp, v))
      results.append(res)
    outputs.write_text(os.path.join(tmp, 'report.md'), report(results))
  print(report(results))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
