"""The pairs stage: two responses per training prompt sampled from mu (the stage config's `sampling`: the
pipeline's config.pairs.sampling.temperature and config.policy.sampling.max_new_tokens), labelled by the pipeline's
oracle (config.oracle; the benchmark's exact P* by default).

Labels (config.pairs.labels): 'probabilities' stores P*(a > b | x) itself; 'draws' stores a 0/1 judgement drawn
from it with numpy.random.default_rng([seed, 1]). A pair with an empty response (mu ended at once) cannot be
scored by the data layer and is left out (the count is in pairs.json).
"""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from nlhf_jax.benchmark import oracle
from nlhf_jax.config import MeshConfig
from nlhf_jax.data import tfds_builders
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import is_leader, make_mesh
from nlhf_jax.evaluation import generate as gen
from nlhf_jax.online.judges import resolve_oracle
from nlhf_jax.sampling import SamplingConfig

log = logging.getLogger(__name__)


def label(probs: np.ndarray, labels: str, seed: int) -> np.ndarray:
  if labels == 'probabilities':
    return np.asarray(probs, np.float64)
  if labels == 'draws':
    return (np.random.default_rng([seed, 1]).uniform(size=len(probs)) < probs).astype(np.float64)
  raise ValueError(f"config.pairs.labels={labels!r}: use 'probabilities' or 'draws'")


def sample_texts(scfg, mesh) -> tuple[list[str], list[str], list[str]]:
  """(prompts, responses a, responses b): two samples from mu per prompt."""
  tokenizer = load_tokenizer(scfg.tokenizer)
  prompts = gen.read_prompts(scfg.data_dir, scfg.prompts_name, scfg.split, scfg.num_prompts)
  batches = gen.prompt_batches(prompts, scfg.tokenizer, scfg.prompt_len, 2, scfg.batch_size)
  sampling = SamplingConfig.from_section(scfg.sampling, tokenizer.stop_ids, tokenizer.pad_id)
  mu = gen.load_policy(scfg.reference, mesh)
  out = gen.generate(mu, batches, jax.random.key(scfg.seed), sampling, mesh)
  texts = gen.decode(tokenizer, out['tokens'], out['mask'])
  return prompts, texts[0::2], texts[1::2]


def build_records(prompts, as_, bs, labels: str, seed: int, judge=oracle.preferences) -> tuple[list[dict], dict]:
  """Pair records labelled by `judge(prompts, responses_a, responses_b) -> P(a > b)`, and a summary."""
  probs = np.asarray(judge(prompts, as_, bs), np.float64)
  prefs = label(probs, labels, seed)
  keep = [i for i in range(len(prompts)) if as_[i].strip() and bs[i].strip()]
  records = [{'prompt': prompts[i], 'response_a': as_[i], 'response_b': bs[i], 'preference': float(prefs[i])}
             for i in keep]
  summary = {'num_pairs': len(records), 'num_skipped_empty': len(prompts) - len(keep), 'labels': labels,
             'mean_oracle_probability': float(np.mean(probs)),
             'fraction_identical': float(np.mean([a == b for a, b in zip(as_, bs)]))}
  return records, summary


def run(scfg, stage_dir: str, mesh=None) -> dict:
  mesh = make_mesh(MeshConfig(**scfg.mesh.to_dict())) if mesh is None else mesh
  prompts, as_, bs = sample_texts(scfg, mesh)  # every process samples its rows and gathers all texts
  judge = resolve_oracle(scfg.oracle, 'config.oracle')
  records, summary = build_records(prompts, as_, bs, scfg.labels, scfg.seed, judge)
  if not is_leader():  # process 0 writes the data set
    return summary
  summary['splits'] = tfds_builders.build(records, 'pairs', 'pairs', scfg.output_dir, scfg.validation_fraction,
                                          scfg.seed, overwrite=True)
  with open(os.path.join(stage_dir, 'pairs.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  log.info('pairs: %s', summary)
  return summary
