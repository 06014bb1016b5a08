"""`nlhf-train`: train any objective from an ml_collections config.

  nlhf-train --config=experiments/configs/sft.py:tiny --workdir=/tmp/run [--config.train.num_steps=100 ...]

Started again on the same --workdir, the run continues from its last checkpoint.
"""
from __future__ import annotations

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import config as config_lib
from nlhf_jax import logs
from nlhf_jax.distributed import initialize

log = logging.getLogger(__name__)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                          'experiments/configs/sft.py:tiny', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics (resumed if it exists).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  cfg = config_lib.from_config_dict(_CONFIG.value)  # value checks: before any JAX work
  initialize(cfg.distributed)
  cfg = config_lib.from_config_dict(_CONFIG.value, num_devices=jax.device_count())
  from nlhf_jax.training.loop import train  # heavy imports after validation
  log.info('%s: %d processes, %d devices, workdir %s', cfg.name, jax.process_count(), jax.device_count(),
               _WORKDIR.value)
  train(cfg, _WORKDIR.value)


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
