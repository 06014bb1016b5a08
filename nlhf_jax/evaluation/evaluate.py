"""The evaluation of a set of trained policies (docs/math.md section 6), as one JSON-able result.

For every policy: samples for N = num_prompts * samples_per_prompt comparisons (the validation prompts, each
sampled samples_per_prompt times), then
- the matrix of P(pi_col > pi_row) under the benchmark oracle P* and under the learned preference model, with
  95% Clopper-Pearson intervals (evaluation/stats.py says how soft probabilities become counts);
- the win rate against the reference (SFT) policy (the reference's row of the matrix);
- KL(pi || mu), Monte-Carlo: the mean over pi's samples of log pi(y|x) - log mu(y|x) (teacher-forced sums; an
  estimate of the KL of the sampled distribution when the evaluation temperature is 1);
- the mean response length (tokens before eos, and words), the style distribution (benchmark.language.style_of)
  and the oracle exploitability estimate (benchmark.probes.exploitability: the best probe's mean win rate).
"""
from __future__ import annotations

import logging

import numpy as np

from nlhf_jax.benchmark import language, probes
from nlhf_jax.config import MeshConfig
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import make_mesh
from nlhf_jax.evaluation import generate as gen
from nlhf_jax.evaluation import stats
from nlhf_jax.online.judges import resolve_oracle
from nlhf_jax.sampling.sampler import SamplingConfig

log = logging.getLogger(__name__)

STYLE_KEYS = {0: 'plain', 1: 'and', 2: 'so', language.NO_STYLE: 'none'}


def _policies(ecfg) -> list[tuple[str, str]]:
  names, dirs = list(ecfg.policy_names), list(ecfg.policy_workdirs)
  if len(names) != len(dirs) or not names:
    raise ValueError(f'eval config: {len(names)} policy_names but {len(dirs)} policy_workdirs')
  if ecfg.reference not in names:
    raise ValueError(f'eval config: reference {ecfg.reference!r} is not one of the policies {names}')
  return list(zip(names, dirs))


def _style_distribution(texts: list[str]) -> dict[str, float]:
  styles = [language.style_of(t) for t in texts]
  return {name: float(np.mean([s == k for s in styles])) for k, name in STYLE_KEYS.items()}


def _per_prompt(texts: list[str], k: int) -> list[list[str]]:
  return [texts[i:i + k] for i in range(0, len(texts), k)]


def _sample_policy(name, path, ecfg, batches, scfg, mesh, tokenizer, mu):
  model = mu if path == dict(_policies(ecfg))[ecfg.reference] else gen.load_policy(path, mesh)
  samples = gen.generate(model, batches, gen.policy_key(ecfg.seed, name), scfg, mesh)
  lp_pi = gen.sequence_logprobs(model, batches, samples, mesh)
  lp_mu = gen.sequence_logprobs(mu, batches, samples, mesh)
  texts = gen.decode(tokenizer, samples['tokens'], samples['mask'])
  ended = (np.isin(samples['tokens'], tokenizer.stop_ids) & samples['mask']).sum(1)
  info = {'kl_to_reference': float(np.mean(lp_pi - lp_mu)),
          'mean_length_tokens': float(np.mean(samples['mask'].sum(1) - ended)),
          'mean_length_words': float(np.mean([len(t.split()) for t in texts])),
          'eos_rate': float(np.mean(ended > 0)),
          'style_distribution': _style_distribution(texts)}
  log.info('eval: sampled %d responses from %s (%s)', len(texts), name, path)
  return samples, texts, info


def _matrix_json(m: dict, names: list[str]) -> dict:
  return {'policies': names, **{k: np.round(v, 6).tolist() for k, v in m.items()}}


def evaluate(ecfg, mesh=None) -> dict:
  """Runs the evaluation described by the eval stage config `ecfg` (see pipeline/stages.py); returns the result."""
  mesh = make_mesh(MeshConfig(**ecfg.mesh.to_dict())) if mesh is None else mesh
  tokenizer = load_tokenizer(ecfg.tokenizer)
  policies = _policies(ecfg)
  names = [n for n, _ in policies]
  prompts = gen.read_prompts(ecfg.data_dir, ecfg.prompts_name, ecfg.split, ecfg.num_prompts)
  k = ecfg.samples_per_prompt
  xs = [p for p in prompts for _ in range(k)]
  batches = gen.prompt_batches(prompts, ecfg.tokenizer, ecfg.prompt_len, k, ecfg.batch_size)
  scfg = SamplingConfig(max_new_tokens=ecfg.max_new_tokens, temperature=ecfg.temperature,
                        stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
  mu = gen.load_policy(dict(policies)[ecfg.reference], mesh)
  samples, texts, info = {}, {}, {}
  for name, path in policies:
    samples[name], texts[name], info[name] = _sample_policy(name, path, ecfg, batches, scfg, mesh, tokenizer, mu)
  n = len(xs)
  # Eval configs written before config.oracle existed judge with the benchmark oracle.
  judge = resolve_oracle(ecfg.get('oracle', 'nlhf_jax.benchmark.oracle:preferences'), 'config.oracle')
  oracle_m = stats.win_matrix(lambda r, c: judge(xs, texts[names[c]], texts[names[r]]), len(names),
                              n, ecfg.judgement, ecfg.seed)
  pm = gen.load_preference_model(ecfg.preference_model, mesh)
  pm_m = stats.win_matrix(lambda r, c: gen.preference_probs(pm, batches, samples[names[c]], samples[names[r]],
                                                            mesh), len(names), n, ecfg.judgement, ecfg.seed)
  ref = names.index(ecfg.reference)
  for i, name in enumerate(names):
    value, probe = probes.exploitability(prompts, _per_prompt(texts[name], k), judge)
    info[name].update(
        win_rate_vs_reference_oracle=float(oracle_m['win'][ref, i]),
        win_rate_vs_reference_oracle_ci=[float(oracle_m['lower'][ref, i]), float(oracle_m['upper'][ref, i])],
        win_rate_vs_reference_preference_model=float(pm_m['win'][ref, i]),
        exploitability=float(value), exploitability_probe=probe)
  return {'policies': names, 'reference': ecfg.reference, 'num_comparisons': n, 'num_prompts': len(prompts),
          'samples_per_prompt': k, 'judgement': ecfg.judgement, 'seed': ecfg.seed,
          'mesh': dict(mesh.shape), 'oracle': _matrix_json(oracle_m, names),
          'preference_model': _matrix_json(pm_m, names), 'per_policy': info,
          'samples': {name: [{'prompt': xs[j], 'response': texts[name][j]} for j in range(0, n, k)][:ecfg.num_shown]
                      for name in names}}
