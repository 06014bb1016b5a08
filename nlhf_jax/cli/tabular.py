"""`nlhf-tabular`: runs the tabular algorithms on a game family and writes curves, a table and plots.

  nlhf-tabular --config=experiments/configs/tabular.py:dice --workdir=/tmp/tabular [--config.tau=0.05 ...]
               [--overwrite]

The experiment and what it writes: nlhf_jax/tabular/experiment.py (`run_command`). A WORKDIR that holds its files
is refused unless --overwrite; the results table is printed at the end.
"""
from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from nlhf_jax.cli import common
from nlhf_jax.tabular import experiment

log = logging.getLogger(__spec__.name if __spec__ else __name__)  # nlhf_jax.cli.X under `python -m` too


def define_flags() -> None:
  """--config and --workdir, defined when the command starts (not at import, so that this module can be imported
  next to other commands that define flags of the same names)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                  'experiments/configs/tabular.py:dice', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for curves.json, results.md and the plots.')
  flags.DEFINE_bool('overwrite', False, 'Replace the files of an earlier run in --workdir.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.basicConfig(level=logging.INFO)
  workdir = flags.FLAGS.workdir
  res = experiment.run_command(flags.FLAGS.config, workdir, flags.FLAGS.overwrite)
  log.info('wrote %s/{curves.json,results.md,kl.png,exploitability.png,exploitability0.png}', workdir)
  print(experiment.markdown(res))


def run() -> None:
  define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
