"""`nlhf-eval`: the win-rate matrix and per-policy statistics of a pipeline's policies.

  nlhf-eval --workdir=DIR                      # the eval config the pipeline wrote (DIR/eval/config.json)
  nlhf-eval --workdir=DIR --config=experiments/configs/pipeline.py:demo --config.eval.seed=1 --output=DIR/eval1
  python -m nlhf_jax.evaluation.cli --workdir=DIR --mesh=data=2,tensor=4

Parameters are restored params-only from the policies' checkpoints onto the evaluation mesh, whatever mesh wrote
them. Writes matrix.json, matrix.md, matrix.png and samples.md into --output (default DIR/eval).
"""
from __future__ import annotations

import json
import logging
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import commands, logs

log = logging.getLogger(__name__)

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Optional pipeline config (the eval stage config is '
                                          'derived from it); default: DIR/eval/config.json.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The pipeline directory.')
_OUTPUT = flags.DEFINE_string('output', '', 'Where to write the results (default: DIR/eval).')
_MESH = flags.DEFINE_string('mesh', '', 'Evaluation mesh, e.g. data=2,tensor=4 (default: the config\'s).')
flags.mark_flags_as_required(['workdir'])


def eval_config(workdir: str, pipeline_cfg=None, output: str = '', mesh: str = '') -> ml_collections.ConfigDict:
  """The eval stage config: derived from a pipeline config, or read from DIR/eval/config.json."""
  from nlhf_jax.pipeline import stages
  if pipeline_cfg is not None:
    ecfg = stages.eval_config(pipeline_cfg, os.path.abspath(workdir))
  else:
    path = os.path.join(workdir, 'eval', 'config.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} does not exist; run the pipeline first or pass --config=PIPELINE_CONFIG')
    with open(path) as f:
      ecfg = ml_collections.ConfigDict(json.load(f))
  if output:
    ecfg.output_dir = os.path.abspath(output)
  if mesh:
    from nlhf_jax.distributed.mesh import parse_mesh
    ecfg.mesh = parse_mesh(mesh)
  return ecfg


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.evaluation import evaluate, report
  ecfg = eval_config(_WORKDIR.value, _CONFIG.value, _OUTPUT.value, _MESH.value)
  paths = report.write(evaluate.evaluate(ecfg), ecfg.output_dir)
  print(f'win-rate table: {paths["matrix.md"]}\nheatmap:        {paths["matrix.png"]}', flush=True)


def run() -> None:
  commands.run(main)


if __name__ == '__main__':
  run()
