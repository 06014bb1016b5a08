"""The stages of the pipeline and the config of each, as a pure function of the pipeline config.

Every stage writes into DIR/STAGE/: its config (stage.json, one ConfigDict) and, once finished, the marker
DIR/STAGE/DONE. Training stages are ordinary `nlhf-train` runs (DIR/STAGE/checkpoints); their config is an
ExperimentConfig ConfigDict, so `nlhf-train --config=...` could run any of them by hand.

  tokenizer         DIR/tokenizer/spm.model (sentencepiece on benchmark.language.corpus_text), or 'bytes'
  data              DIR/data/tfds: TFDS data sets 'prompts' and 'demonstrations' (benchmark records)
  sft               the reference policy mu
  pairs             DIR/pairs/tfds: 'pairs', two samples from mu per training prompt labelled by the oracle
  preference_model  trained on the pairs
  reward_model      Bradley-Terry reward model on the same pairs
  <policy>          one per name in config.policies (rlhf, sp, md_BETA, br, ema and every online objective by
                    its name, e.g. inpo, comal, mpo, sppo, extragradient; dpo, ipo offline on the pairs),
                    initialised from mu
  eval              DIR/eval/matrix.{json,md,png}, samples.md, findings.{md,json}

Several seeds (config.seeds = 'S1,S2,...'; '' = the one config.seed, the layout above): tokenizer and data are
shared (DIR/tokenizer, DIR/data, built with config.seed); every other stage depends on the seed and runs once per
seed S as the stage 'seed_S/STAGE' in DIR/seed_S/STAGE (training seed S, evaluation seed config.eval.seed + S), in
the order seed by seed; the last stage 'eval' then aggregates the seeds' evaluations into DIR/eval
(aggregate.{json,md}, findings.{md,json}; evaluation/findings.py).

The sampling options are `sampling` sections (SAMPLING_SECTIONS): config.policy.sampling (max_new_tokens,
temperature: the online policies' config.online.sampling), config.pairs.sampling (temperature; the pairs are
config.policy.sampling.max_new_tokens long) and config.eval.sampling (max_new_tokens, temperature). A config with
them as flat keys, as pipeline configs written before these sections held them, is refused naming the new key
(`check_moved`); the configs a pipeline folder recorded then (pipeline.json, DIR/STAGE/stage.json) are read in the
current layout (`upgrade_recorded`, `upgrade_stage_config`), so such a folder resumes as it would have.
"""
from __future__ import annotations

import os
import re

import ml_collections

from nlhf_jax.config import ConfigError, MeshConfig, from_config_dict, objectives
from nlhf_jax.config.building import moved
from nlhf_jax.config.defaults import defaults
from nlhf_jax.config.mesh_checks import resolve_mesh_shape
from nlhf_jax.config.runs import SAMPLING_KEYS, nest_sampling, upgrade
from nlhf_jax.config.validate import check_sampling
from nlhf_jax.evaluation import inputs
from nlhf_jax.online.judges import resolve_oracle

FIXED_BEFORE = ('tokenizer', 'data', 'sft', 'pairs', 'preference_model', 'reward_model')
SAMPLING_SECTIONS = ('policy', 'pairs', 'eval')  # the pipeline config's sections with a `sampling` section
TRAINING = objectives.names('supervised')  # cosine schedules; the policies' are constant
_MD = re.compile(r'^md_(0?\.\d+)$')


def parse_policy(name: str) -> tuple[str, float | None]:
  """(objective, beta) of a policy name: rlhf, sp (beta 0), md_BETA (0 < BETA < 1), br (beta 1), ema, and the name
  of any online or offline objective (inpo, comal, mpo, sppo, extragradient, online_ipo, dpo, ipo, ...)."""
  fixed = {'sp': ('nash_md', 0.0), 'br': ('nash_md', 1.0), 'ema': ('nash_ema', None)}
  if name in fixed:
    return fixed[name]
  trained = objectives.names('online') + objectives.names('offline')
  if name in trained:
    return name, None
  match = _MD.match(name)
  if match and 0.0 < float(match.group(1)) < 1.0:
    return 'nash_md', float(match.group(1))
  raise ConfigError(f'unknown policy {name!r} in config.policies; use sp, br, ema, md_BETA with 0 < BETA < 1 '
                    f'(e.g. md_0.125) or an online or offline objective: {", ".join(trained)}')


def policy_names(p) -> list[str]:
  names = [n.strip() for n in str(p.policies).split(',') if n.strip()]
  for n in names:
    parse_policy(n)
  if len(set(names)) != len(names):
    raise ConfigError(f'config.policies={p.policies!r} names a policy twice')
  return names


SHARED = ('tokenizer', 'data')  # the stages that several seeds share


def seed_list(p) -> list[int]:
  """The seeds of config.seeds ('0,1,2'); [] when it is empty (one run with config.seed, no seed_S folders)."""
  text = str(p.get('seeds', '') or '')
  try:
    seeds = [int(s) for s in text.replace(' ', '').split(',') if s]
  except ValueError:
    raise ConfigError(f'config.seeds={text!r}: use comma-separated integers, e.g. 0,1,2') from None
  if len(set(seeds)) != len(seeds):
    raise ConfigError(f'config.seeds={text!r} names a seed twice')
  return seeds


def seed_dir(seed: int) -> str:
  return f'seed_{seed}'


def stage_names(p) -> list[str]:
  per_seed = [*FIXED_BEFORE[len(SHARED):], *policy_names(p), 'eval']
  seeds = seed_list(p)
  if not seeds:
    return [*SHARED, *per_seed]
  return [*SHARED, *(f'{seed_dir(s)}/{n}' for s in seeds for n in per_seed), 'eval']


def tokenizer_spec(p, workdir: str) -> str:
  if p.tokenizer.kind == 'bytes':
    return 'bytes'
  if p.tokenizer.kind != 'sentencepiece':
    raise ConfigError(f"config.tokenizer.kind={p.tokenizer.kind!r}: use 'sentencepiece' or 'bytes'")
  return os.path.join(workdir, 'tokenizer', 'spm.model')


def _tfds_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, 'tfds')


def _train_config(p, workdir: str, stage: str, objective: str, model, trainer, data_name: str,
                  data_dir: str, sdir: str | None = None) -> ml_collections.ConfigDict:
  c = defaults()
  c.name = f'{p.name}/{os.path.relpath(os.path.join(sdir or workdir, stage), workdir)}'
  c.seed = p.seed
  c.model = dict(model)
  c.mesh = dict(p.mesh)
  c.optim.update(learning_rate=trainer.learning_rate, warmup_steps=trainer.warmup_steps,
                 schedule='cosine' if objective in TRAINING else 'constant')
  c.data.update(source='tfds', name=data_name, data_dir=data_dir, tokenizer=tokenizer_spec(p, workdir),
                prompt_len=p.data.prompt_len, response_len=p.data.response_len, seq_len=p.data.seq_len)
  c.train.update(objective=objective, num_steps=trainer.num_steps, batch_size=trainer.batch_size,
                 log_every=trainer.log_every, checkpoint_every=trainer.checkpoint_every, keep_checkpoints=2)
  return c


def _offline_config(p, workdir: str, name: str, objective: str, sdir: str) -> ml_collections.ConfigDict:
  """dpo / ipo on the pairs the preference model learns from, from mu (also their reference)."""
  q = p.offline
  c = _train_config(p, workdir, name, objective, p.model, q, 'pairs', _tfds_dir(sdir, 'pairs'), sdir)
  c.init_checkpoint = os.path.join(sdir, 'sft')
  c.offline.tau = q.tau
  return c


def _policy_config(p, workdir: str, name: str, sdir: str) -> ml_collections.ConfigDict:
  objective, beta = parse_policy(name)
  if objectives.get(objective).offline:
    return _offline_config(p, workdir, name, objective, sdir)
  q = p.policy
  c = _train_config(p, workdir, name, objective, p.model, q, 'prompts', _tfds_dir(workdir, 'data'), sdir)
  judge = 'reward_model' if objectives.get(objective).rewards else 'preference_model'
  c.online.update(tau=q.rlhf_tau if objective == 'rlhf' else q.tau, ema_rate=q.ema_rate,
                  reference_checkpoint=os.path.join(sdir, 'sft'), judge=judge,
                  judge_checkpoint=os.path.join(sdir, judge), oracle='')
  c.online.sampling.update(max_new_tokens=q.sampling.max_new_tokens, temperature=q.sampling.temperature)
  if beta is not None:
    c.online.beta = beta
  spec = objectives.get(objective)
  if spec.iterate:  # the successors of Nash-MD that iterate on pi_t (their defaults for older pipeline configs)
    o = c.online
    o.update(eta=q.get('eta', o.eta), iteration_steps=q.get('iteration_steps', o.iteration_steps),
             prox_iterations=q.get('prox_iterations', o.prox_iterations))
  if spec.min_samples > 1:  # sppo: the K samples of a prompt whose win rates it regresses on
    c.online.samples_per_prompt = q.get('group_samples', 4)
  return c


def _simple_configs(p, workdir: str, sdir: str) -> dict[str, ml_collections.ConfigDict]:
  tok = tokenizer_spec(p, workdir)
  return {
      'tokenizer': ml_collections.ConfigDict(dict(
          kind=p.tokenizer.kind, vocab_size=p.tokenizer.vocab_size, corpus_size=p.tokenizer.corpus_size,
          seed=p.seed, output=tok)),
      'data': ml_collections.ConfigDict(dict(
          seed=p.seed, num_prompts=p.data.num_prompts, num_demonstrations=p.data.num_demonstrations,
          validation_fraction=p.data.validation_fraction, data_dir=_tfds_dir(workdir, 'data'))),
      'pairs': ml_collections.ConfigDict(dict(
          seed=p.seed, mesh=dict(p.mesh), tokenizer=tok, reference=os.path.join(sdir, 'sft'),
          data_dir=_tfds_dir(workdir, 'data'), prompts_name='prompts', split='train',
          num_prompts=p.pairs.num_prompts, labels=p.pairs.labels,
          sampling=dict(temperature=p.pairs.sampling.temperature, max_new_tokens=p.policy.sampling.max_new_tokens),
          prompt_len=p.data.prompt_len, batch_size=p.pairs.batch_size, validation_fraction=p.data.validation_fraction,
          oracle=p.oracle, output_dir=_tfds_dir(sdir, 'pairs'))),
  }


def eval_config(p, workdir: str, sdir: str | None = None, seed: int | None = None) -> ml_collections.ConfigDict:
  """The evaluation of the policies in `sdir` (default `workdir`: one seed); seed: its evaluation seed."""
  sdir = sdir or workdir
  names = ['sft', *policy_names(p)]
  e = p.eval
  return ml_collections.ConfigDict(dict(
      seed=e.seed if seed is None else seed, judgement=e.judgement, mesh=dict(p.mesh), policy_names=names,
      policy_workdirs=[os.path.join(sdir, n) for n in names], reference='sft',
      preference_model=os.path.join(sdir, 'preference_model'), tokenizer=tokenizer_spec(p, workdir),
      data_dir=_tfds_dir(workdir, 'data'), prompts_name='prompts', split='validation', num_prompts=e.num_prompts,
      samples_per_prompt=e.samples_per_prompt, prompt_len=p.data.prompt_len,
      sampling=dict(max_new_tokens=e.sampling.max_new_tokens, temperature=e.sampling.temperature),
      batch_size=e.batch_size, num_shown=e.num_shown, oracle=p.oracle,
      output_dir=os.path.join(sdir, 'eval')))


def check_moved(p) -> None:
  """One error for a sampling option set as a flat key of a SAMPLING_SECTIONS section, naming its new key."""
  for section in SAMPLING_SECTIONS:
    for key in SAMPLING_KEYS:
      if key in p.get(section, {}):
        raise moved(f'{section}.{key}', f'{section}.sampling.{key}')


def upgrade_recorded(values: dict) -> dict:
  """A recorded pipeline config (pipeline.json, as nested dicts) in the current layout: the flat sampling options
  of its SAMPLING_SECTIONS moved under their `sampling` sections (config/runs.py `nest_sampling`)."""
  return {k: nest_sampling(v) if k in SAMPLING_SECTIONS and isinstance(v, dict) else v for k, v in values.items()}


def upgrade_stage_config(values: dict) -> dict:
  """A recorded stage config (DIR/STAGE/stage.json) in the current layout: a training stage's ExperimentConfig
  by config/runs.py `upgrade`, the others' (pairs, eval) flat sampling options moved under `sampling`."""
  return upgrade(values) if 'train' in values else nest_sampling(values)


def stage_configs(p, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """{stage name: its ConfigDict}, in the order the stages run (config errors raise here, before any work)."""
  check_moved(p)
  resolve_oracle(p.oracle, 'config.oracle')
  workdir = os.path.abspath(workdir)
  seeds = seed_list(p)
  if not seeds:
    out = _seed_configs(p, workdir, workdir)
  else:
    out = {k: v for k, v in _simple_configs(p, workdir, workdir).items() if k in SHARED}
    for s in seeds:
      q = p.copy_and_resolve_references()
      with q.unlocked():
        q.seed = s
      sub = _seed_configs(q, workdir, os.path.join(workdir, seed_dir(s)), p.eval.seed + s)
      out.update({f'{seed_dir(s)}/{k}': v for k, v in sub.items() if k not in SHARED})
    out['eval'] = aggregate_config(p, workdir)
  configs = {name: out[name] for name in stage_names(p)}
  check_training_configs(configs)
  return configs


def aggregate_config(p, workdir: str) -> ml_collections.ConfigDict:
  """The last stage with several seeds: the seeds' DIR/seed_S/eval pooled into DIR/eval."""
  seeds = seed_list(p)
  return ml_collections.ConfigDict(dict(
      aggregate=True, seeds=seeds, seed_evals=[os.path.join(workdir, seed_dir(s), 'eval') for s in seeds],
      output_dir=os.path.join(workdir, 'eval')))


def _seed_configs(p, workdir: str, sdir: str, eval_seed: int | None = None) -> dict[str, ml_collections.ConfigDict]:
  """The stages of one seed (p.seed), their per-seed outputs under sdir, the shared ones under workdir."""
  out = _simple_configs(p, workdir, sdir)
  data_dir, pairs_dir = _tfds_dir(workdir, 'data'), _tfds_dir(sdir, 'pairs')
  out['sft'] = _train_config(p, workdir, 'sft', 'sft', p.model, p.sft, 'demonstrations', data_dir, sdir)
  for judge in ('preference_model', 'reward_model'):
    out[judge] = _train_config(p, workdir, judge, judge, p.judge_model, p[judge], 'pairs', pairs_dir, sdir)
  for name in policy_names(p):
    out[name] = _policy_config(p, workdir, name, sdir)
  out['eval'] = eval_config(p, workdir, sdir, eval_seed)
  return out


def _sections(stage: str) -> str:
  """The pipeline config sections that a training stage's config is built from."""
  if stage == 'sft':
    return 'config.sft, config.model, config.data'
  if stage in ('preference_model', 'reward_model'):
    return f'config.{stage}, config.judge_model, config.data'
  if stage in objectives.OBJECTIVES and objectives.get(stage).offline:
    return 'config.offline, config.model, config.data'
  return 'config.policy, config.model, config.data'


def _check_eval_config(name: str, ecfg, num_devices: int | None) -> None:
  """The eval stage's settings (config.eval) and, with `num_devices`, its batch against the mesh."""
  try:
    inputs.check_settings(ecfg)
    if num_devices is not None:
      axes = resolve_mesh_shape(MeshConfig(**ecfg.mesh.to_dict()), num_devices)
      inputs.batch_rows(1, int(ecfg.batch_size), axes['data'] * axes['fsdp'])
  except ConfigError as e:
    raise ConfigError(f'pipeline stage {name!r}: {e} (set it in config.eval or config.mesh)') from None


def _check_pairs_config(name: str, c) -> None:
  """The pairs stage's sampling options: config.pairs.sampling.temperature and
  config.policy.sampling.max_new_tokens."""
  try:
    check_sampling({'temperature': c.sampling.temperature}, 'config.pairs.sampling.')
    check_sampling({'max_new_tokens': c.sampling.max_new_tokens}, 'config.policy.sampling.')
  except ConfigError as e:
    raise ConfigError(f'pipeline stage {name!r}: {e}') from None


def check_training_configs(configs: dict, num_devices: int | None = None) -> None:
  """Validates every training stage's ExperimentConfig (with `num_devices`, also against the mesh), the pairs
  stage's sampling options and the eval stage's settings and batch, so that a bad value in a late stage stops the
  pipeline before the first stage starts."""
  for name, c in configs.items():
    if name.rsplit('/', 1)[-1] == 'eval' and not c.get('aggregate', False):
      _check_eval_config(name, c, num_devices)
    if name.rsplit('/', 1)[-1] == 'pairs':
      _check_pairs_config(name, c)
    if 'train' not in c:
      continue
    try:
      from_config_dict(c, num_devices=num_devices)
    except ConfigError as e:
      raise ConfigError(f'pipeline stage {name!r}: {e} (that stage\'s config is built from {_sections(name)} of '
                        'the pipeline config: fix the value there)') from None
