"""`nlhf-train`: train any objective from an ml_collections config.

  nlhf-train --config=experiments/configs/sft.py:tiny --workdir=/tmp/run [--config.train.num_steps=100 ...]

Started again on the same --workdir, the run continues from its last checkpoint. On SIGTERM (or JAX's
preemption notice) it checkpoints the step it reached and exits with status 0.

Several processes (see docs/launching.md): give every process the same command plus
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or, on a TPU pod
slice or under Slurm where JAX detects them, --config.distributed.initialize=true.
"""
from __future__ import annotations

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import config as config_lib
from nlhf_jax import logs
from nlhf_jax.cli import common
from nlhf_jax.distributed import initialize, resolve_launch

log = logging.getLogger(__spec__.name if __spec__ else __name__)  # nlhf_jax.cli.X under `python -m` too

def _define_flags() -> None:
  """The command's flags, defined when it runs (so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. experiments/configs/sft.py:tiny',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics (resumed if it exists).')
  common.define_launch_flags()
  flags.mark_flags_as_required(['config', 'workdir'])


def launch_flags() -> dict:
  """The multi-process flags as given on the command line (None where not given)."""
  f = flags.FLAGS
  return {k: getattr(f, k) for k in ('coordinator_address', 'num_processes', 'process_id')}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  cfg = config_lib.from_config_dict(flags.FLAGS.config)  # value checks: before any JAX work
  initialize(resolve_launch(cfg.distributed, launch_flags()))
  cfg = config_lib.from_config_dict(flags.FLAGS.config, num_devices=jax.device_count())
  from nlhf_jax.trainer.loop import train  # heavy imports after validation
  log.info('%s: %d processes, %d devices, workdir %s', cfg.name, jax.process_count(), jax.device_count(),
           flags.FLAGS.workdir)
  state = train(cfg, flags.FLAGS.workdir)
  log.info('stopped at step %d of %d', int(jax.device_get(state.step)), cfg.train.num_steps)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
