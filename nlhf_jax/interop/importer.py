"""`nlhf-import`: a Hugging Face model directory -> a run that every command accepts.

  nlhf-import --hf_dir=~/models/Qwen2.5-0.5B-Instruct --workdir=runs/qwen [--dtype=float32] [--mesh=fsdp=8]

On several hosts, run the same command on each with --coordinator_address/--num_processes/--process_id (or the
JAX_* environment, as for nlhf-train): each host reads only its devices' slices; process 0 writes the files.

config.json is mapped to a ModelConfig and every tensor's name and shape is checked (both before anything is
read or compiled); then each parameter is placed onto the mesh by the rule table, each device reading its slice
from the safetensors memory map, and written as an Orbax params checkpoint with the tokenizer files beside it
(layout: nlhf_jax/interop/runs.py). The run serves as `config.online.reference_checkpoint`, as
`config.init_checkpoint` of SFT, online training or a preference/reward model (the backbone; a new head), and to
nlhf-eval and nlhf-export.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from nlhf_jax import commands, logs

log = logging.getLogger(__name__)



def _define_flags() -> None:
  """The command's flags, defined when it runs (so that the library functions import without them)."""
  commands.define_launch_flags()
  flags.DEFINE_string('hf_dir', None, 'A Hugging Face model directory (config.json, *.safetensors, the tokenizer '
                      'files), as save_pretrained or a download writes it.')
  flags.DEFINE_string('workdir', None, 'The run directory to write.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Parameter dtype of the run.')
  flags.DEFINE_string('mesh', 'fsdp=-1', 'Mesh the parameters are placed on while writing, e.g. fsdp=8.')
  flags.DEFINE_bool('overwrite', False, 'Replace a run that already exists in --workdir.')
  flags.mark_flags_as_required(['hf_dir', 'workdir'])


def experiment_config(model, tokenizer: str, hf_dir: str) -> dict:
  """The experiment config an imported run records: its model and tokenizer, objective 'import'."""
  from nlhf_jax.config import ExperimentConfig
  from nlhf_jax.config.validate import IMPORTED
  from nlhf_jax.training.guards import config_to_json
  cfg = ExperimentConfig(name=f'import:{os.path.basename(os.path.normpath(hf_dir))}', model=model)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer),
                            train=dataclasses.replace(cfg.train, objective=IMPORTED, num_steps=0))
  return config_to_json(cfg)


def _check_workdir(workdir: str, overwrite: bool) -> None:
  from nlhf_jax.config import ConfigError
  if os.path.exists(os.path.join(workdir, 'checkpoints')) and not overwrite:
    raise ConfigError(f'--workdir={workdir} already holds a run; pass --overwrite to replace it, or choose another '
                      'directory')
  if os.path.isfile(workdir):
    raise ConfigError(f'--workdir={workdir} is a file; give a directory')


def _tokenizer(hf_dir: str, workdir: str, vocab_size: int) -> str:
  """Copies the tokenizer files into RUN/tokenizer and checks them; returns data.tokenizer for the run."""
  from nlhf_jax.data.tokenizer import TokenizerError, check_vocab, load_tokenizer
  from nlhf_jax.interop.runs import copy_tokenizer_files
  target = os.path.join(workdir, 'tokenizer')
  if not copy_tokenizer_files(hf_dir, target):
    log.warning('%s has no tokenizer files (tokenizer.json, tokenizer_config.json): the run records no tokenizer; '
                'set config.data.tokenizer when you use it', hf_dir)
    return ''
  try:
    tokenizer = load_tokenizer(target)
  except TokenizerError as e:
    log.warning('the tokenizer files of %s cannot be used (%s): the run records no tokenizer; set '
                'config.data.tokenizer when you use it', hf_dir, e)
    return ''
  check_vocab(tokenizer, vocab_size)
  return target


def import_run(hf_dir: str, workdir: str, dtype: str = 'float32', mesh=None, overwrite: bool = False) -> str:
  """Writes the run for the model in hf_dir into workdir (process 0 writes the files); returns workdir."""
  import orbax.checkpoint as ocp

  from nlhf_jax.config import MeshConfig
  from nlhf_jax.distributed import barrier, is_leader, make_mesh
  from nlhf_jax.interop.runs import write_json
  from nlhf_jax.models import hf
  from nlhf_jax.models.hf.safetensors import SafetensorsReader
  from nlhf_jax.training import checkpointing
  hf_dir, workdir = os.path.abspath(os.path.expanduser(hf_dir)), checkpointing.absolute(workdir)
  model, raw = hf.read_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  hf.check_tensors(reader, model)  # every name and shape, before anything is read
  _check_workdir(workdir, overwrite)
  mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)) if mesh is None else mesh
  tokenizer = _tokenizer(hf_dir, workdir, model.vocab_size) if is_leader() else os.path.join(workdir, 'tokenizer')
  config = experiment_config(model, tokenizer, hf_dir)
  params = hf.load_params(hf_dir, model, mesh, jnp.dtype(dtype), reader)
  directory = os.path.join(workdir, 'checkpoints')
  if overwrite and is_leader() and os.path.isdir(directory):
    import shutil
    shutil.rmtree(directory)
  barrier('nlhf_import_clean')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))
  meta = {'config': config, 'source': {'hf_dir': hf_dir, 'family': model.family, 'dtype': dtype}}
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  manager.close()
  checkpointing.write_run_config(workdir, config)
  if is_leader():
    write_json(os.path.join(workdir, 'hf_config.json'), raw)
  barrier('nlhf_import_done')
  n = sum(x.size for x in jax.tree.leaves(params))
  log.info('imported %s (%s, %.1fM parameters, %s) into %s', hf_dir, model.family, n / 1e6, dtype, workdir)
  return workdir


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  commands.launch()
  from nlhf_jax.config import MeshConfig
  from nlhf_jax.distributed import make_mesh
  from nlhf_jax.distributed.mesh import parse_mesh
  f = flags.FLAGS
  mesh = make_mesh(MeshConfig(**parse_mesh(f.mesh)))
  workdir = import_run(f.hf_dir, f.workdir, f.dtype, mesh, f.overwrite)
  print(f'imported run: {workdir}\n  use it as --config.init_checkpoint={workdir} or '
        f'--config.online.reference_checkpoint={workdir} (configs with model.preset=from_run read its shape)',
        flush=True)


def run() -> None:
  _define_flags()
  commands.run(main)


if __name__ == '__main__':
  run()
