"""`nlhf-plot`: training curves of one or several runs, every metric of RUN/metrics.jsonl against the step.

  nlhf-plot --workdir=RUN                                  # redraws RUN/curves.png
  nlhf-plot --workdir=RUN [--workdir=RUN2 ...] --out=FILE.png [--overwrite]

The checks and the drawing: nlhf_jax/trainer/plot.py (`check_inputs`, `write_curves`). Prints the path written.
"""
from __future__ import annotations

from absl import flags

from nlhf_jax.cli import common
from nlhf_jax.trainer import plot


def _define_flags() -> None:
  flags.DEFINE_multi_string('workdir', None, 'A run directory (an nlhf-train --workdir); repeat it, or list more '
                            'runs after the flags, to overlay several runs.')
  flags.DEFINE_string('out', None, 'The PNG to write (default, for one run: its curves.png; several runs need it).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.')


def main(argv) -> None:
  runs = list(flags.FLAGS.workdir or []) + list(argv[1:])
  plot.check_inputs(runs, flags.FLAGS.out, flags.FLAGS.overwrite)
  path = plot.write_curves(runs, flags.FLAGS.out)
  if path is None:
    raise FileNotFoundError(f'no metrics logged yet in {", ".join(runs)}')
  print(path)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
