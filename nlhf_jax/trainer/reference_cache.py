"""mu's log-probabilities of an offline pair data set, computed once and kept with the data
(config.offline.reference_logprobs='cached'; docs/online.md, "Offline baselines").

The table of a split is float32 [N, 2]: row i holds (log mu(a_i | x_i), log mu(b_i | x_i)), sums over the response
tokens of example i, as `objectives.offline.pair_logprobs` computes them inside a step; the step then looks its
rows up by the batch's `example_index` and holds no mu. The file of a table is named by a hash of everything the
numbers depend on: the reference run and its checkpoint step (or the policy's initial parameters and the seed), the
dtype mu is cast to, the model config, the data set, split and encoding. A file for the same inputs is read, not
computed again (another tau, another loss, a resumed run); a damaged one or one of another size is computed again.

Every process computes its rows of each batch of the split (the batch sharding of training), an all-gather gives
every process the whole table, and process 0 writes it (a temporary file renamed, so no reader sees half of it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import jax
import numpy as np
from etils import epath
from flax import nnx

from nlhf_jax.config import ExperimentConfig
from nlhf_jax.data import pipelines
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import barrier, global_batch, is_leader, local_batch_rows, to_host, within_mesh
from nlhf_jax.logs import progress_bar
from nlhf_jax.objectives import offline
from nlhf_jax.training import checkpointing

log = logging.getLogger(__name__)

SUBDIR = 'reference_logprobs'


def cache_dir(cfg: ExperimentConfig) -> str:
  """Where the tables live: config.offline.reference_cache_dir, else DATA_DIR/reference_logprobs for TFDS data;
  '' (memory only) for the built-in synthetic data."""
  if cfg.offline.reference_cache_dir:
    return checkpointing.absolute(cfg.offline.reference_cache_dir)
  if cfg.data.source == 'tfds' and cfg.data.data_dir:
    return os.path.join(checkpointing.absolute(cfg.data.data_dir), SUBDIR)
  return ''


def _latest_step(path: str) -> int:
  directory = epath.Path(checkpointing.checkpoints_dir(path))
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  return max(steps) if steps else -1


def identity(cfg: ExperimentConfig, reference: str, split: str) -> dict:
  """What a table depends on (its file name is this dict's hash; the file records it)."""
  d = cfg.data
  model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != 'lora'}  # mu carries no adapters
  if reference:
    mu = {'run': checkpointing.absolute(reference), 'step': _latest_step(reference)}
  else:
    mu = {'initial_parameters_of_seed': cfg.seed}
  data = {'source': d.source, 'name': d.name, 'split': split, 'tokenizer': d.tokenizer,
          'chat_template': d.chat_template, 'prompt_len': d.prompt_len, 'response_len': d.response_len,
          'overflow': d.overflow,
          'data_dir': checkpointing.absolute(d.data_dir) if d.data_dir else ''}
  if d.source == 'synthetic':
    data.update(num_examples=d.num_examples, seed=cfg.seed)
  return {'mu': mu, 'frozen_dtype': cfg.offline.frozen_dtype, 'model': model, 'data': data}


def _file(directory: str, ident: dict) -> str:
  digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(directory, f"{ident['data']['name'] or ident['data']['source']}-{ident['data']['split']}-"
                                 f'{digest}.npz')


def _read(path: str, num_examples: int) -> np.ndarray | None:
  try:
    with np.load(path) as f:
      table = f['logprobs']
  except (OSError, KeyError, ValueError) as e:
    log.warning('reference log-probabilities: %s is unreadable (%s); computing them again', path, e)
    return None
  if table.shape != (num_examples, 2) or not np.all(np.isfinite(table)):
    log.warning('reference log-probabilities: %s holds %s for %d examples; computing them again', path,
                table.shape, num_examples)
    return None
  return table


def _write(path: str, table: np.ndarray, ident: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, logprobs=table, identity=np.asarray(json.dumps(ident, sort_keys=True)))
  os.replace(tmp, path)


def compute(cfg: ExperimentConfig, graphdef: nnx.GraphDef, params, mesh, split: str) -> np.ndarray:
  """The [N, 2] table of `split` under mu = merge(graphdef, params), whole on every process."""
  batch_size = cfg.train.batch_size // cfg.train.grad_accum_steps  # a training micro-batch fits: forward only
  it = pipelines.make_eval_iterator(cfg.data, 'pairs', batch_size, local_batch_rows(batch_size, mesh), split,
                                    seed=cfg.seed, tokenizer=load_tokenizer(cfg.data.tokenizer))
  fn = jax.jit(within_mesh(lambda p, b: jax.numpy.stack(offline.pair_logprobs(nnx.merge(graphdef, p), b), -1),
                           mesh))
  table = np.zeros((len(it.source), 2), np.float32)
  for local in progress_bar(it, f'reference log-probabilities of {it.source.name} ({split})', total=len(it),
                            unit='batch'):
    local.pop('valid')
    batch = global_batch(mesh, local)
    values, index = to_host(fn(params, batch)), to_host(batch['example_index'])
    table[index] = values  # the last batch's fill rows repeat the last example: the same values again
  return table


def load_or_compute(cfg: ExperimentConfig, reference: str, graphdef: nnx.GraphDef, params, mesh,
                    split: str) -> np.ndarray:
  """The table of `split`: read from the cache directory when it holds one for these inputs, else computed (and
  written there by process 0). `params` are mu's, or a function that reads them (called only to compute)."""
  ident = identity(cfg, reference, split)
  directory = cache_dir(cfg)
  path = _file(directory, ident) if directory else ''
  if path and os.path.exists(path):
    n = len(pipelines.make_source(cfg.data, 'pairs', cfg.seed, split))
    table = _read(path, n)
    if table is not None:
      log.info('reference log-probabilities of the %s split: read %s (%d pairs)', split, path, n)
      return table
  table = compute(cfg, graphdef, params() if callable(params) else params, mesh, split)
  if path:
    if is_leader():
      _write(path, table, ident)
    barrier(f'reference log-probabilities {split}')
    log.info('reference log-probabilities of the %s split: %d pairs, written to %s', split, len(table), path)
  else:
    log.info('reference log-probabilities of the %s split: %d pairs (kept in memory: the synthetic data has no '
             'data directory; set config.offline.reference_cache_dir to keep them)', split, len(table))
  return table
