"""The evaluation of a set of trained policies (docs/math.md section 6), as one JSON-able result.

For every policy: samples for N = num_prompts * samples_per_prompt comparisons (the prompts of a split, each
sampled samples_per_prompt times), then
- the matrix of P(pi_col > pi_row) under each judge the config names, with 95% Clopper-Pearson intervals
  (evaluation/stats.py says how soft probabilities become counts): a text oracle (`oracle`, e.g. the benchmark's
  exact P*; empty: none) and a model judge (`preference_model`, a run's path; empty: none): a learned preference
  or reward model, or with `judge_kind='prompted'` a language model asked which response is better in both orders
  (online/prompted.py), whose first-position rate over every judged pair is reported (`judge_position`);
- the win rate against the reference policy (the reference's row of each matrix);
- the Nash averaging of each matrix (`nash` inside it, evaluation/stats.nash_summary): the maximum-entropy Nash
  equilibrium of the meta-game with payoff P(pi_i > pi_j) - 1/2, its support, and each policy's win rate against it;
- KL(pi || mu), Monte-Carlo: the mean over pi's samples of log pi(y|x) - log mu(y|x) (teacher-forced sums; an
  estimate of the KL of the sampled distribution when the evaluation temperature is 1);
- the mean response length (tokens before the stop id, and words); with the benchmark oracle also the style
  distribution (benchmark.language.style_of) and the exploitability estimate (benchmark.probes.exploitability:
  the best probe's mean win rate).
"""
from __future__ import annotations

import logging

import numpy as np

from nlhf_jax.benchmark import language, probes
from nlhf_jax.config import ConfigError, MeshConfig, objectives
from nlhf_jax.config.objectives import model_family
from nlhf_jax.data.records import DataError
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import make_mesh
from nlhf_jax.evaluation import generate as gen
from nlhf_jax.evaluation import generations, inputs, stats
from nlhf_jax.evaluation.report import BENCHMARK_ORACLE
from nlhf_jax.online import prompted
from nlhf_jax.online.judges import resolve_oracle
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.training import checkpointing

log = logging.getLogger(__name__)

STYLE_KEYS = {0: 'plain', 1: 'and', 2: 'so', language.NO_STYLE: 'none'}
JUDGES = ('oracle', 'preference_model')  # the matrices an evaluation can have, in report order


def _policies(ecfg) -> list[tuple[str, str]]:
  names, dirs = list(ecfg.policy_names), list(ecfg.policy_workdirs)
  if len(names) != len(dirs) or not names:
    raise ConfigError(f'eval config: {len(names)} policy_names but {len(dirs)} policy_workdirs')
  if ecfg.reference not in names:
    raise ConfigError(f'eval config: reference {ecfg.reference!r} is not one of the policies {names}')
  return list(zip(names, dirs))


def run_summary(run_cfg: dict) -> dict:
  """What a policy run was trained with, read from its RUN/config.json (never from its folder name): the
  objective, and the beta / tau that objective uses, and its number of steps."""
  train, online, offline = run_cfg.get('train', {}), run_cfg.get('online', {}), run_cfg.get('offline', {})
  name = train.get('objective', '?')
  out = {'objective': name, 'num_steps': int(train.get('num_steps', 0))}
  spec = objectives.OBJECTIVES.get(name)
  if spec is not None and spec.online:
    out['tau'] = float(online.get('tau', 0.0))
    if spec.opponent == 'mixture':
      out['beta'] = float(online.get('beta', 0.0))
  if spec is not None and spec.offline:
    out['tau'] = float(offline.get('tau', 0.0))
  return out



def _style_distribution(texts: list[str]) -> dict[str, float]:
  styles = [language.style_of(t) for t in texts]
  return {name: float(np.mean([s == k for s in styles])) for k, name in STYLE_KEYS.items()}


def _per_prompt(texts: list[str], k: int) -> list[list[str]]:
  return [texts[i:i + k] for i in range(0, len(texts), k)]


def _sample_policy(name, path, ecfg, batches, scfg, mesh, tokenizer, mu, styles: bool):
  model = mu if path == dict(_policies(ecfg))[ecfg.reference] else gen.load_policy(path, mesh)
  samples = gen.generate(model, batches, gen.policy_key(ecfg.seed, name), scfg, mesh)
  lp_pi = gen.sequence_logprobs(model, batches, samples, mesh)
  lp_mu = gen.sequence_logprobs(mu, batches, samples, mesh)
  texts = gen.decode(tokenizer, samples['tokens'], samples['mask'])
  ended = (np.isin(samples['tokens'], tokenizer.stop_ids) & samples['mask']).sum(1)
  info = {'kl_to_reference': float(np.mean(lp_pi - lp_mu)),
          'mean_length_tokens': float(np.mean(samples['mask'].sum(1) - ended)),
          'mean_length_words': float(np.mean([len(t.split()) for t in texts])),
          'eos_rate': float(np.mean(ended > 0))}
  if styles:
    info['style_distribution'] = _style_distribution(texts)
  log.info('eval: sampled %d responses from %s (%s)', len(texts), name, path)
  return samples, texts, info


def _matrix_json(m: dict, names: list[str]) -> dict:
  """The matrices to 6 decimals and the Nash averaging of that (stored) win matrix, so that matrix.json alone
  reproduces it."""
  out = {'policies': names, **{k: np.round(v, 6).tolist() for k, v in m.items()}}
  return {**out, 'nash': stats.nash_summary(out['win'], names)}


def _judges(ecfg) -> tuple[str, str]:
  """(oracle spec, preference model path); eval configs written before config.oracle existed judge with the
  benchmark oracle. At least one judge is needed."""
  oracle, pm = ecfg.get('oracle', BENCHMARK_ORACLE), ecfg.get('preference_model', '')
  if not oracle and not pm:
    raise ConfigError('the evaluation has no judge: give a preference model run (--judge=RUN) or a text oracle '
                      "(--oracle='module:function')")
  return oracle, pm


def _judge_kind(ecfg, path: str) -> str:
  """'preference_model', 'reward_model' (what the learned judge's run holds) or 'prompted'; '' without one."""
  if path and ecfg.get('judge_kind', '') == 'prompted':
    return 'prompted'
  return model_family(checkpointing.read_run_config(path).get('train', {}).get('objective', '?')) if path else ''


def prompted_input(ecfg):
  """The prompted judge's checked input (its run's tokenizer, the template, the answers, the length)."""
  path = ecfg.preference_model
  run_cfg = checkpointing.read_run_config(path)
  tokenizer = prompted.run_tokenizer(run_cfg, path, '--judge')
  template = prompted.read_template(ecfg.get('judge_template', ''), '--judge_template')
  return prompted.judge_input(tokenizer, template, tuple(ecfg.get('judge_answers', prompted.DEFAULT_ANSWERS)),
                              int(ecfg.get('judge_max_len', prompted.DEFAULT_MAX_LEN)),
                              {'answers': '--judge_answers', 'max_len': '--judge_max_len'},
                              int(run_cfg.get('model', {}).get('max_len', 0)))


def _prompted_matrix(ecfg, path: str, mesh, xs: list, texts: dict, names: list[str], rows: int):
  """The prompted judge's matrix and {'first_position_rate', 'pairs'}: how often it preferred the response shown
  first, the mean over every judged pair of both orders' P(first better)."""
  text = prompted_input(ecfg)
  model = gen.load_policy(path, mesh)
  prompts = [prompted.conversation_text(x) for x in xs]
  firsts = []

  def probs(r: int, c: int):
    p, first = gen.prompted_probs(model, text, prompts, texts[names[c]], texts[names[r]], rows, mesh)
    firsts.append(first)
    return p
  matrix = stats.win_matrix(probs, len(names), len(xs), ecfg.judgement, ecfg.seed)
  first = np.concatenate(firsts) if firsts else np.zeros(0)
  rate = float(np.mean(first)) if first.size else 0.5
  log.info('eval: the prompted judge preferred the response shown first at rate %.3f over %d pairs (1/2: no '
           'position bias)', rate, first.size)
  return matrix, {'first_position_rate': rate, 'pairs': int(first.size)}


def _read_prompts(ecfg) -> list:
  prompts = gen.read_prompts(ecfg.data_dir, ecfg.prompts_name, ecfg.split, ecfg.num_prompts)
  where = f'{ecfg.prompts_name}[{ecfg.split}]' if ecfg.data_dir else ecfg.prompts_name
  if not prompts:
    raise DataError(f'{where} has no prompts; give prompts to evaluate on (--prompts, --split)')
  if len(prompts) < ecfg.num_prompts:
    n = len(prompts) * ecfg.samples_per_prompt
    width = stats.clopper_pearson(n / 2, n)[1] - stats.clopper_pearson(n / 2, n)[0] if n else 1.0
    log.warning('eval: %s has %d prompts, fewer than the %d asked for: N = %d comparisons a cell, so a 95%% '
                'interval around 1/2 is %.2f wide', where, len(prompts), ecfg.num_prompts, n, width)
  return prompts


def batch_shards(mesh) -> int:
  """The devices that split a sampling batch: the mesh's data x fsdp."""
  return int(mesh.shape['data'] * mesh.shape['fsdp'])


def prepare(ecfg, mesh, export_generations: str = '', overwrite: bool = False) -> tuple[list, int]:
  """Every check of the evaluation, before any model is restored: the settings, the export path (an existing file
  only with `overwrite`), the runs (kinds and one shared vocabulary), the judges, the batch against the mesh, the
  prompts. Returns (prompts, rows per sampling batch)."""
  inputs.check_settings(ecfg)
  if export_generations:
    generations.check(export_generations, overwrite)
  _policies(ecfg)
  _, judge_path = _judges(ecfg)
  inputs.check_runs(ecfg)
  if _judge_kind(ecfg, judge_path) == 'prompted':
    prompted_input(ecfg)
  shards = batch_shards(mesh)
  inputs.batch_rows(1, int(ecfg.batch_size), shards)  # the batch size against the devices, before reading prompts
  prompts = _read_prompts(ecfg)
  rows = inputs.batch_rows(len(prompts) * ecfg.samples_per_prompt, int(ecfg.batch_size), shards)
  if rows < ecfg.batch_size:
    log.info('eval: %d rows a sampling batch (%d prompts x %d samples over %d batch shards; batch_size %d)', rows,
             len(prompts), ecfg.samples_per_prompt, shards, ecfg.batch_size)
  return prompts, rows


def evaluate(ecfg, mesh=None, export_generations: str = '', overwrite: bool = False) -> dict:
  """Runs the evaluation described by the eval config `ecfg` (see pipeline/stages.py and
  evaluation/from_runs.runs_config); returns the result. Every input is checked (`prepare`) before any restore. With
  `export_generations` (a file path) the sampled responses are also written there as the JSON list that
  AlpacaEval-style evaluators read (evaluation/generations.py), once the evaluation is complete."""
  mesh = make_mesh(MeshConfig(**ecfg.mesh.to_dict())) if mesh is None else mesh
  prompts, rows = prepare(ecfg, mesh, export_generations, overwrite)
  oracle_spec, pm_path = _judges(ecfg)
  judge = resolve_oracle(oracle_spec, 'config.oracle') if oracle_spec else None
  benchmark = oracle_spec == BENCHMARK_ORACLE
  tokenizer = load_tokenizer(ecfg.tokenizer)
  policies = _policies(ecfg)
  names = [n for n, _ in policies]
  k = ecfg.samples_per_prompt
  xs = [p for p in prompts for _ in range(k)]
  batches = gen.prompt_batches(prompts, ecfg.tokenizer, ecfg.prompt_len, k, rows, ecfg.get('chat_template', False))
  scfg = SamplingConfig.from_section(ecfg.sampling, tokenizer.stop_ids, tokenizer.pad_id)
  mu = gen.load_policy(dict(policies)[ecfg.reference], mesh)
  samples, texts, info = {}, {}, {}
  for name, path in policies:
    samples[name], texts[name], info[name] = _sample_policy(name, path, ecfg, batches, scfg, mesh, tokenizer, mu,
                                                            styles=benchmark)
    info[name]['run'] = run_summary(checkpointing.read_run_config(path))
  n = len(xs)
  matrices = {}
  if judge is not None:
    matrices['oracle'] = stats.win_matrix(lambda r, c: judge(xs, texts[names[c]], texts[names[r]]), len(names),
                                          n, ecfg.judgement, ecfg.seed)
  position = None
  if pm_path and _judge_kind(ecfg, pm_path) == 'prompted':
    matrices['preference_model'], position = _prompted_matrix(ecfg, pm_path, mesh, xs, texts, names, rows)
  elif pm_path:
    pm = gen.load_judge(pm_path, mesh)
    matrices['preference_model'] = stats.win_matrix(
        lambda r, c: gen.preference_probs(pm, batches, samples[names[c]], samples[names[r]], mesh), len(names), n,
        ecfg.judgement, ecfg.seed)
  ref = names.index(ecfg.reference)
  for i, name in enumerate(names):
    for key, m in matrices.items():
      info[name][f'win_rate_vs_reference_{key}'] = float(m['win'][ref, i])
      info[name][f'win_rate_vs_reference_{key}_ci'] = [float(m['lower'][ref, i]), float(m['upper'][ref, i])]
    if benchmark:
      value, probe = probes.exploitability(prompts, _per_prompt(texts[name], k), judge)
      info[name].update(exploitability=float(value), exploitability_probe=probe)
  if export_generations:
    count = generations.write(export_generations, xs, texts, ecfg.prompts_name if ecfg.data_dir else '')
    log.info('eval: wrote %d generations (%d policies) to %s', count, len(names), export_generations)
  return {'policies': names, 'reference': ecfg.reference, 'num_comparisons': n, 'num_prompts': len(prompts),
          'samples_per_prompt': k, 'judgement': ecfg.judgement, 'seed': ecfg.seed, 'oracle_spec': oracle_spec,
          'preference_model_run': pm_path, 'judge_kind': _judge_kind(ecfg, pm_path), 'mesh': dict(mesh.shape),
          **({'judge_position': position} if position is not None else {}),
          **{key: _matrix_json(m, names) for key, m in matrices.items()}, 'per_policy': info,
          'samples': {name: [{'prompt': xs[j], 'response': texts[name][j]} for j in range(0, n, k)][:ecfg.num_shown]
                      for name in names}}
