"""A Hugging Face model directory -> a run that every command accepts (`import_run`; the command is
`nlhf-import`, nlhf_jax/cli/hf_import.py).

On several hosts every process calls `import_run`: each reads only its devices' slices; process 0 writes the files.

Every input is checked before anything is written: the flags (`check_flags`), the workdir (`check_paths`: a folder
that holds anything is refused without overwrite; one that holds the model folder is refused always), config.json
mapped to a ModelConfig, every tensor's name, shape and byte range, and the tokenizer against the embedding. A
tokenizer with ids beyond the embedding (Gemma 3 1B: vocab_size 262144, 262145 ids) is accepted when those ids are
special tokens that text never produces (one line names them); `pad_vocab` instead pads the embedding (and an
untied unembedding) to the tokenizer's size, rounded up to `pad_multiple`, with the mean of the existing rows. Then
each parameter is placed onto the mesh by the rule table, each device reading its slice from the safetensors
memory map, and written as an Orbax params checkpoint with the tokenizer files and the original config.json and
generation_config.json beside it (layout: nlhf_jax/interop/runs.py), all in a temporary folder renamed into place
at the end. The run serves as `config.online.reference_checkpoint`, as `config.init_checkpoint` of SFT, online
training or a preference/reward model (the backbone; a new head), and to nlhf-eval and nlhf-export.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp

from nlhf_jax.config import ConfigError, ExperimentConfig, MeshConfig
from nlhf_jax.config.objectives import IMPORTED
from nlhf_jax.data.tokenizer import TokenizerError, check_vocab, load_tokenizer, text_free_ids
from nlhf_jax.distributed import is_leader, make_mesh
from nlhf_jax.interop import runs
from nlhf_jax.models import hf
from nlhf_jax.models.hf.safetensors import SafetensorsReader
from nlhf_jax.outputs import check_dir
from nlhf_jax.training import checkpointing
from nlhf_jax.training.guards import config_to_json

log = logging.getLogger(__name__)


def experiment_config(model, tokenizer: str, hf_dir: str) -> dict:
  """The experiment config an imported run records: its model and tokenizer, objective 'import'."""
  cfg = ExperimentConfig(name=f'import:{os.path.basename(os.path.normpath(hf_dir))}', model=model)
  cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer),
                            train=dataclasses.replace(cfg.train, objective=IMPORTED, num_steps=0))
  return config_to_json(cfg)


def check_flags(dtype: str, pad_vocab: bool, pad_multiple: int) -> None:
  if dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'--dtype={dtype}: the run\'s parameters are float32 or bfloat16')
  if pad_multiple < 1 or (pad_multiple != 1 and not pad_vocab):
    raise ConfigError(f'--pad_vocab_multiple={pad_multiple}: give a positive multiple, together with '
                      '--pad_vocab_to_tokenizer')


def check_paths(hf_dir: str, workdir: str, overwrite: bool) -> None:
  """--hf_dir is a folder; --workdir is not a file, holds nothing (or --overwrite), and neither is nor holds
  --hf_dir (replacing it would delete the model being read)."""
  if not os.path.exists(hf_dir):
    raise FileNotFoundError(f'--hf_dir={hf_dir} does not exist; give the folder of a Hugging Face model '
                            '(config.json and *.safetensors, as save_pretrained or a download writes them)')
  if runs.inside(hf_dir, workdir):
    raise ConfigError(f'--workdir={workdir} is or holds --hf_dir={hf_dir}: the import would replace the model it '
                      'reads; choose a workdir outside the model folder')
  check_dir(workdir, overwrite=overwrite, empty=True)
  runs.check_writable(workdir, '--workdir')


def vocab_size_for(tokenizer, vocab_size: int, pad: bool, multiple: int, where: str) -> int:
  """The run's vocab_size: config.json's, or the tokenizer's (rounded up to `multiple`) with `pad`. Without `pad`,
  ids beyond the embedding are accepted when text never produces them (logged once, naming them)."""
  if pad:
    size = max(vocab_size, tokenizer.vocab_size)
    size = -(-size // multiple) * multiple
    if size > vocab_size:
      log.warning('padding the embedding from %d to %d ids (--pad_vocab_to_tokenizer: the tokenizer has %d); the '
                  'new rows are the mean of the existing ones', vocab_size, size, tokenizer.vocab_size)
    return size
  extra = list(range(vocab_size, tokenizer.vocab_size))
  try:
    check_vocab(tokenizer, vocab_size)
  except TokenizerError:
    free = set(text_free_ids(tokenizer, extra))
    bad = [i for i in extra if i not in free]
    raise TokenizerError(f'{where}: the tokenizer has {tokenizer.vocab_size} ids but the model\'s embedding has '
                         f'{vocab_size} (config.json vocab_size); ids {_ids(bad)} beyond it are tokens that text or '
                         'the chat framing can produce; pass --pad_vocab_to_tokenizer to pad the embedding to the '
                         "tokenizer's size") from None
  if extra:
    log.warning('the tokenizer has %d ids, the embedding %d: ids %s lie beyond it; they are special tokens that '
                'text never produces (as transformers does, the model is imported as it is; '
                '--pad_vocab_to_tokenizer pads the embedding instead)', tokenizer.vocab_size, vocab_size,
                _ids(extra, tokenizer))
  return vocab_size


def _ids(ids: list[int], tokenizer=None) -> str:
  shown = []
  for i in ids[:5]:
    token = tokenizer._backend.id_to_token(i) if hasattr(tokenizer, '_backend') else None
    shown.append(f'{i} ({token})' if token else str(i))
  return ', '.join(shown) + (f', ... ({len(ids)} in all)' if len(ids) > 5 else '')


def _load_tokenizer(hf_dir: str):
  """The tokenizer of hf_dir (None, with a warning, when it has no usable one)."""
  if not any(os.path.exists(os.path.join(hf_dir, n)) for n in runs.CORE_TOKENIZER_FILES):
    log.warning('%s has no tokenizer files (tokenizer.json, tokenizer_config.json): the run records no tokenizer; '
                'set config.data.tokenizer when you use it', hf_dir)
    return None
  try:
    return load_tokenizer(hf_dir)
  except TokenizerError as e:
    log.warning('the tokenizer files of %s cannot be used (%s): the run records no tokenizer; set '
                'config.data.tokenizer when you use it', hf_dir, e)
    return None


def import_run(hf_dir: str, workdir: str, dtype: str = 'float32', mesh=None, overwrite: bool = False,
               pad_vocab: bool = False, pad_multiple: int = 1) -> str:
  """Writes the run for the model in hf_dir into workdir (process 0 writes the files); returns workdir. Its
  checkpoint is step 0 with the items params and meta, written by `Checkpointer.save_params`."""
  hf_dir, workdir = os.path.abspath(os.path.expanduser(hf_dir)), checkpointing.absolute(os.path.expanduser(workdir))
  check_flags(dtype, pad_vocab, pad_multiple)
  check_paths(hf_dir, workdir, overwrite)
  model, raw = hf.read_config(hf_dir)
  reader = SafetensorsReader(hf_dir)
  hf.check_tensors(reader, model)  # every name and shape, before anything is read
  tokenizer = _load_tokenizer(hf_dir)
  if pad_vocab and tokenizer is None:
    raise ConfigError(f'--pad_vocab_to_tokenizer: {hf_dir} has no usable tokenizer to pad the embedding to')
  vocab_size = model.vocab_size if tokenizer is None else vocab_size_for(
      tokenizer, model.vocab_size, pad_vocab, pad_multiple, hf_dir)
  run_model = dataclasses.replace(model, vocab_size=vocab_size)
  mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)) if mesh is None else mesh
  config = experiment_config(run_model, os.path.join(workdir, 'tokenizer') if tokenizer is not None else '', hf_dir)
  params = hf.load_params(hf_dir, model, mesh, jnp.dtype(dtype), reader, vocab_size=vocab_size)
  with runs.staging(workdir, 'import') as tmp:
    if is_leader():
      runs.keep_originals(hf_dir, tmp)
      if tokenizer is not None:
        runs.copy_tokenizer_files(hf_dir, os.path.join(tmp, 'tokenizer'))
      runs.write_json(os.path.join(tmp, 'config.json'), config)
    ckpt = checkpointing.Checkpointer(os.path.join(tmp, 'checkpoints'))
    meta = {'config': config, 'source': {'hf_dir': hf_dir, 'family': model.family, 'dtype': dtype,
                                         'vocab_size': model.vocab_size}}
    try:
      ckpt.save_params(0, params, meta)
    finally:
      ckpt.close()
  n = sum(x.size for x in jax.tree.leaves(params))
  log.info('imported %s (%s, %.1fM parameters, %s) into %s', hf_dir, model.family, n / 1e6, dtype, workdir)
  return workdir

