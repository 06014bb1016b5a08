"""`nlhf-pipeline`: the whole NLHF pipeline on the built-in benchmark, resumable stage by stage.

  nlhf-pipeline --config=experiments/configs/pipeline.py:demo --workdir=runs/demo [--stages=sft,pairs]
  python -m nlhf_jax.pipeline --config=experiments/configs/pipeline.py:tiny --workdir=/tmp/p

Started again on the same --workdir, finished stages are skipped and an interrupted one resumes.
"""
from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import commands, logs

log = logging.getLogger(__name__)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Pipeline config, e.g. '
                                          'experiments/configs/pipeline.py:demo', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the pipeline (one sub-directory per stage).')
_STAGES = flags.DEFINE_list('stages', [], 'Run only these stages (default: all, in order).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'Multi-process: HOST:PORT of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Multi-process: this process, 0 .. num_processes - 1.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize with what JAX detects '
                                 '(TPU pod slices, Slurm) or the JAX_* environment variables.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.config import DistributedConfig
  from nlhf_jax.distributed import initialize, is_leader, resolve_launch
  from nlhf_jax.pipeline import runner, stages
  configs = stages.stage_configs(_CONFIG.value, _WORKDIR.value)  # config errors before any work
  given = {'coordinator_address': _COORDINATOR.value or None, 'num_processes': _NUM_PROCESSES.value or None,
           'process_id': None if _PROCESS_ID.value < 0 else _PROCESS_ID.value}
  initialize(resolve_launch(DistributedConfig(initialize=_DISTRIBUTED.value), given))
  import jax
  stages.check_training_configs(configs, num_devices=jax.device_count())  # and the mesh of every stage
  log.info('pipeline: %d processes, %d devices, workdir %s', jax.process_count(), jax.device_count(),
           _WORKDIR.value)
  status = runner.run_pipeline(_CONFIG.value, _WORKDIR.value, only=_STAGES.value or None)
  out = os.path.join(os.path.abspath(_WORKDIR.value), 'eval')
  log.info('stages: %s', ', '.join(f'{k} ({v})' for k, v in status.items()))
  if is_leader() and os.path.exists(os.path.join(out, 'matrix.md')):
    print(f'win-rate table: {os.path.join(out, "matrix.md")}\nheatmap:        {os.path.join(out, "matrix.png")}\n'
          f'samples:        {os.path.join(out, "samples.md")}', flush=True)


def run() -> None:
  commands.run(main)


if __name__ == '__main__':
  run()
