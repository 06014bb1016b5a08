"""`nlhf-pipeline`: the whole NLHF pipeline on the built-in benchmark, resumable stage by stage.

  nlhf-pipeline --config=experiments/configs/pipeline.py:demo --workdir=runs/demo [--stages=sft,pairs]
  python -m nlhf_jax.cli.pipeline --config=experiments/configs/pipeline.py:tiny --workdir=/tmp/p

Started again on the same --workdir, finished stages are skipped and an interrupted one resumes; the first log
line says which. Refused before any stage runs (pipeline/runner.py): a --workdir that is a file or holds what no
stage writes, a --workdir whose pipeline.json records another config (unless --overwrite, which goes on with the
new config; finished stages are kept and skipped), --stages names that are no stage, or a chosen stage whose
inputs have not finished.
"""
from __future__ import annotations

import logging
import os

from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import logs
from nlhf_jax.cli import common

log = logging.getLogger(__spec__.name if __spec__ else __name__)  # nlhf_jax.cli.X under `python -m` too

def _define_flags() -> None:
  """The command's flags, defined when it runs (so that importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Pipeline config, e.g. experiments/configs/pipeline.py:demo',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory of the pipeline (one sub-directory per stage).')
  flags.DEFINE_list('stages', [], 'Run only these stages (default: all, in order).')
  flags.DEFINE_bool('overwrite', False, 'Go on in a --workdir whose pipeline.json records another config (its '
                    'finished stages are kept and skipped) and record the new config.')
  common.define_launch_flags()
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize with what JAX detects (TPU pod slices, '
                    'Slurm) or the JAX_* environment variables.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.config import DistributedConfig
  from nlhf_jax.distributed import initialize, is_leader, resolve_launch
  from nlhf_jax.pipeline import runner, stages
  f = flags.FLAGS
  workdir = os.path.abspath(f.workdir)
  configs = stages.stage_configs(f.config, workdir)  # config errors before any work
  runner.check_workdir(f.config, workdir, f.overwrite)
  runner.check_stages(configs, workdir, f.stages or None)
  given = {k: getattr(f, k) for k in ('coordinator_address', 'num_processes', 'process_id')}
  initialize(resolve_launch(DistributedConfig(initialize=f.distributed), given))
  import jax
  stages.check_training_configs(configs, num_devices=jax.device_count())  # and the mesh of every stage
  log.info('pipeline: %d processes, %d devices, workdir %s', jax.process_count(), jax.device_count(),
           flags.FLAGS.workdir)
  status = runner.run_pipeline(f.config, workdir, only=f.stages or None, overwrite=f.overwrite)
  out = os.path.join(os.path.abspath(flags.FLAGS.workdir), 'eval')
  log.info('stages: %s', ', '.join(f'{k} ({v})' for k, v in status.items()))
  if is_leader() and os.path.exists(os.path.join(out, 'matrix.md')):
    print(f'win-rate table: {os.path.join(out, "matrix.md")}\nheatmap:        {os.path.join(out, "matrix.png")}\n'
          f'samples:        {os.path.join(out, "samples.md")}', flush=True)
  elif is_leader() and os.path.exists(os.path.join(out, 'aggregate.md')):
    print(f'pooled over seeds: {os.path.join(out, "aggregate.md")}', flush=True)
  if is_leader() and os.path.exists(os.path.join(out, 'findings.md')):
    print(f'findings:       {os.path.join(out, "findings.md")}', flush=True)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
