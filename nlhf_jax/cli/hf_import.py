"""`nlhf-import`: a Hugging Face model directory -> a run that every command accepts.

  nlhf-import --hf_dir=~/models/Qwen2.5-0.5B-Instruct --workdir=runs/qwen [--dtype=float32] [--mesh=fsdp=8]
              [--overwrite] [--pad_vocab_to_tokenizer [--pad_vocab_multiple=128]]

On several hosts, run the same command on each with --coordinator_address/--num_processes/--process_id (or the
JAX_* environment, as for nlhf-train): each host reads only its devices' slices; process 0 writes the files.

Every input is checked before anything is written (the flags, --workdir, the model's config, tensors and
tokenizer); --pad_vocab_to_tokenizer pads the embedding to the tokenizer's size, rounded up to
--pad_vocab_multiple. What the import checks and writes, and what the run serves as: nlhf_jax/interop/importer.py.
"""
from __future__ import annotations

import os

from absl import app, flags

from nlhf_jax import logs
from nlhf_jax.cli import common
from nlhf_jax.config import ConfigError, MeshConfig


def _define_flags() -> None:
  """The command's flags, defined when it runs (so that the library functions import without them)."""
  common.define_launch_flags()
  flags.DEFINE_string('hf_dir', None, 'A Hugging Face model directory (config.json, *.safetensors, the tokenizer '
                      'files), as save_pretrained or a download writes it.')
  flags.DEFINE_string('workdir', None, 'The run directory to write (absent or empty, or --overwrite).')
  flags.DEFINE_string('dtype', 'float32', 'Parameter dtype of the run: float32 or bfloat16.')
  flags.DEFINE_string('mesh', 'fsdp=-1', 'Mesh the parameters are placed on while writing, e.g. fsdp=8.')
  flags.DEFINE_bool('overwrite', False, 'Replace what --workdir holds (removed only once the new run is complete).')
  flags.DEFINE_bool('pad_vocab_to_tokenizer', False, "Pad the embedding (and an untied unembedding) to the "
                    "tokenizer's size with the mean of the existing rows, e.g. when the tokenizer has ids beyond "
                    'the embedding that text can produce.')
  flags.DEFINE_integer('pad_vocab_multiple', 1, 'With --pad_vocab_to_tokenizer: round the padded size up to a '
                       'multiple of this (e.g. 128, for sharding).')
  flags.mark_flags_as_required(['hf_dir', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.distributed import make_mesh  # JAX and the model code, after the flags (--help starts without them)
  from nlhf_jax.distributed.mesh import parse_mesh
  from nlhf_jax.interop import importer
  f = flags.FLAGS
  mesh_axes = parse_mesh(f.mesh)  # a bad flag is one line, before anything starts
  importer.check_flags(f.dtype, f.pad_vocab_to_tokenizer, f.pad_vocab_multiple)
  importer.check_paths(os.path.abspath(os.path.expanduser(f.hf_dir)),
                       os.path.abspath(os.path.expanduser(f.workdir)), f.overwrite)
  common.launch()
  try:
    mesh = make_mesh(MeshConfig(**mesh_axes))
  except ValueError as e:
    raise ConfigError(f'--mesh={f.mesh}: {e}') from None
  workdir = importer.import_run(f.hf_dir, f.workdir, f.dtype, mesh, f.overwrite, f.pad_vocab_to_tokenizer,
                                f.pad_vocab_multiple)
  print(f'imported run: {workdir}\n  use it as --config.init_checkpoint={workdir} or '
        f'--config.online.reference_checkpoint={workdir} (configs with model.preset=from_run read its shape)',
        flush=True)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
