"""`nlhf-export`: a run -> a Hugging Face model directory that transformers and vLLM load.

  nlhf-export --workdir=runs/nash_md --out=exported/nash_md [--dtype=bfloat16] [--step=N] [--overwrite]
              [--allow_lossy]
  (on several hosts: the same command on each, with the launch flags of nlhf-train; process 0 writes)

What is written and checked (every input before anything is read or written), the default --dtype and the
measured loss of a narrower one that --allow_lossy accepts: nlhf_jax/interop/exporter.py.
"""
from __future__ import annotations

import os

from absl import app, flags

from nlhf_jax import logs
from nlhf_jax.cli import common


def _define_flags() -> None:
  """The command's flags, defined when it runs (so that the library functions import without them)."""
  common.define_launch_flags()
  flags.DEFINE_string('workdir', None, 'The run to export (an nlhf-train or nlhf-import --workdir).')
  flags.DEFINE_string('out', None, 'The directory to write (absent or empty, or --overwrite).')
  flags.DEFINE_string('dtype', None, 'dtype of the weights written: float32, bfloat16 or float16 (default: the dtype '
                      'of the imported checkpoint the run descends from, else float32).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_float('max_shard_gb', 5.0, 'Largest safetensors file, in GB (1e9 bytes).')
  flags.DEFINE_bool('overwrite', False, 'Replace what --out holds (removed only once the export is complete).')
  flags.DEFINE_bool('allow_lossy', False, 'Write even when --dtype loses most of the run\'s change to its weights.')
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  from nlhf_jax.interop import exporter  # the model code, after the flags (--help starts without it)
  common.launch()
  f = flags.FLAGS
  max_shard_bytes = int(f.max_shard_gb * 1e9)
  files = exporter.export_run(f.workdir, f.out, f.dtype, f.step, max_shard_bytes=max_shard_bytes,
                              overwrite=f.overwrite, allow_lossy=f.allow_lossy)
  if files:
    print(f'exported to {os.path.abspath(os.path.expanduser(f.out))}: {", ".join(files)}', flush=True)


def run() -> None:
  _define_flags()
  common.run(main)


if __name__ == '__main__':
  run()
