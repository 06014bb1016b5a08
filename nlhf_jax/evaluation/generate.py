"""Prompts in, decoded samples out: params-only restores onto any mesh, sharded sampling, log-probabilities.

Samples depend only on (seed, policy name, comparison index): the sampler folds each row's key from the example
index, and comparison n = (prompt i, sample j) has index i * samples_per_prompt + j, so the same seed gives the
same samples whatever the mesh, the batch size or the order of the policies.
"""
from __future__ import annotations

import functools
import zlib

import jax
import numpy as np

from nlhf_jax.config import DataConfig
from nlhf_jax.config.objectives import model_family
from nlhf_jax.data import pipelines
from nlhf_jax.data.readers import read_records
from nlhf_jax.data.tfds_builders import SplitSource
from nlhf_jax.distributed import global_batch, local_rows_of, to_host
from nlhf_jax.logs import progress_bar
from nlhf_jax.models import Transformer
from nlhf_jax.models.judges import PreferenceModel, RewardModel, pair_scorer
from nlhf_jax.models.logprobs import response_logprobs
from nlhf_jax.online.prompted import scorer
from nlhf_jax.sampling import SamplingConfig, jit_sample
from nlhf_jax.training.checkpointing import FrozenModel, load_frozen, read_run_config


def read_prompts(data_dir: str, name: str, split: str, num_prompts: int) -> list:
  """The first `num_prompts` prompts of a split of a prompts data set (all of them when it has fewer); with no
  data_dir, `name` is a file of prompt records (JSONL or Parquet, docs/data.md) read whole."""
  if not data_dir:
    return [r['prompt'] for r in read_records(name, 'prompts')[:num_prompts]]
  source = SplitSource(name, data_dir, split)
  n = min(num_prompts, len(source))
  return [r['prompt'] for r in source.__getitems__(list(range(n)))]


def prompt_batches(prompts: list, tokenizer: str, prompt_len: int, samples_per_prompt: int,
                   batch_size: int, chat_template: bool = False) -> list[dict]:
  """Encoded prompts (strings or conversations), each repeated samples_per_prompt times (comparison index
  i * k + j), in batches of batch_size rows; the last batch is padded with copies of the last row (valid=False)."""
  data_cfg = DataConfig(tokenizer=tokenizer, prompt_len=prompt_len, chat_template=chat_template)
  recs = [{'prompt': p} for p in prompts for _ in range(samples_per_prompt)]
  return list(pipelines.make_eval_iterator(data_cfg, 'prompts', batch_size, slice(None), records=recs))


def load_policy(path: str, mesh) -> FrozenModel:
  """A language model restored params-only from a run's checkpoint onto `mesh` (any shape)."""
  return load_frozen(path, Transformer, mesh)


def load_judge(path: str, mesh) -> FrozenModel:
  """A preference model or a Bradley-Terry reward model run (which its saved objective says), for
  `preference_probs` (P(a > b) = sigmoid(f(x, a, b)) or sigmoid(r(x, a) - r(x, b)))."""
  kind = model_family(read_run_config(path).get('train', {}).get('objective', '?'))
  return load_frozen(path, RewardModel if kind == 'reward_model' else PreferenceModel, mesh)


def policy_key(seed: int, name: str) -> jax.Array:
  """A key per (seed, policy name), independent of the order in which policies are listed."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


_sampler = functools.lru_cache(maxsize=8)(jit_sample)  # one compiled sampler for policies of one shape


def _device_batch(mesh, batch: dict) -> dict:
  """Every process holds the whole batch; each supplies its rows of the global array."""
  return global_batch(mesh, local_rows_of({k: batch[k] for k in ('prompt', 'prompt_mask', 'example_index')}, mesh))


def generate(model: FrozenModel, batches: list[dict], key: jax.Array, scfg: SamplingConfig, mesh) -> dict:
  """{'tokens', 'mask', 'logprobs'} as numpy [N, T] over the valid rows of `batches`."""
  fn = _sampler(model.graphdef, scfg, mesh)
  outs = []
  for batch in progress_bar(batches, 'sampling', unit='batch'):
    out = jax.tree.map(to_host, fn(model.params, _device_batch(mesh, batch), key))
    outs.append({k: np.asarray(v)[batch['valid']] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


@functools.lru_cache(maxsize=8)
def _jit_logprob_sum(graphdef):
  def fn(params, prompt, prompt_mask, tokens, mask):
    model = FrozenModel(graphdef, params, None).module()
    return response_logprobs(model, prompt, prompt_mask, tokens, mask).sum(axis=1)
  return jax.jit(fn)


def _chunks(batches: list[dict], arrays: dict, mesh):
  """(device prompt batch, device arrays of the same rows, valid rows) for each prompt batch."""
  start = 0
  for batch in batches:
    rows = batch['valid']
    n, size = int(rows.sum()), len(rows)
    pad = lambda x: np.concatenate([x[start:start + n], np.repeat(x[start + n - 1:start + n], size - n, 0)])
    yield (_device_batch(mesh, batch), global_batch(mesh, local_rows_of({k: pad(v) for k, v in arrays.items()}, mesh)),
           rows)
    start += n


def sequence_logprobs(model: FrozenModel, batches: list[dict], samples: dict, mesh) -> np.ndarray:
  """log model(y | x) summed over the response tokens (teacher forcing), float64 [N]."""
  fn = _jit_logprob_sum(model.graphdef)
  out = []
  for b, s, rows in _chunks(batches, {'tokens': samples['tokens'], 'mask': samples['mask']}, mesh):
    out.append(to_host(fn(model.params, b['prompt'], b['prompt_mask'], s['tokens'], s['mask']))[rows])
  return np.concatenate(out).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _jit_score(graphdef):
  return jax.jit(pair_scorer(graphdef))


def preference_probs(pm: FrozenModel, batches: list[dict], a: dict, b: dict, mesh) -> np.ndarray:
  """The learned judge's P(a > b | x), float64 [N], for aligned samples a and b."""
  fn = _jit_score(pm.graphdef)
  arrays = {'a': a['tokens'], 'a_mask': a['mask'], 'b': b['tokens'], 'b_mask': b['mask']}
  out = []
  for x, s, rows in _chunks(batches, arrays, mesh):
    p = fn(pm.params, (x['prompt'], x['prompt_mask']), (s['a'], s['a_mask']), (s['b'], s['b_mask']))
    out.append(to_host(p)[rows])
  return np.concatenate(out).astype(np.float64)


@functools.lru_cache(maxsize=8)
def _jit_prompted(graphdef, answers: tuple[int, int]):
  return jax.jit(scorer(graphdef, answers))


def prompted_probs(model: FrozenModel, text, prompts: list[str], a: list[str], b: list[str], rows: int, mesh
                   ) -> tuple[np.ndarray, np.ndarray]:
  """A prompted judge's P(a > b | x) and its first-position probabilities (both orders), float64 [N] each, for
  aligned texts; `text` is its online.prompted.JudgeInput, `rows` pairs a batch (a multiple of the batch shards)."""
  fn = _jit_prompted(model.graphdef, text.answers)
  out_p, out_first = [], []
  for start in range(0, len(prompts), rows):
    end = min(start + rows, len(prompts))
    pick = list(range(start, end)) + [end - 1] * (rows - (end - start))  # the last batch padded with its last pair
    tokens, mask = text.rows([prompts[i] for i in pick], [a[i] for i in pick], [b[i] for i in pick])
    batch = global_batch(mesh, local_rows_of({'tokens': tokens, 'mask': mask}, mesh))
    p, first = fn(model.params, batch['tokens'], batch['mask'])
    out_p.append(to_host(p)[:end - start])
    out_first.append(to_host(first)[:end - start])
  return np.concatenate(out_p).astype(np.float64), np.concatenate(out_first).astype(np.float64)


def decode(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
  """Response texts: masked ids up to the first stop id, special ids dropped (by the tokenizer's decode)."""
  stops = set(tokenizer.stop_ids)
  texts = []
  for row, row_mask in zip(np.asarray(tokens), np.asarray(mask).astype(bool)):
    kept = [int(i) for i in row[row_mask]]
    end = next((n for n, i in enumerate(kept) if i in stops), len(kept))
    texts.append(tokenizer.decode(kept[:end]))
  return texts
