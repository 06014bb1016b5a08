"""The stages of the pipeline and the config of each, as a pure function of the pipeline config.

Every stage writes into DIR/STAGE/: its config (config.json, one ConfigDict) and, once finished, the marker
DIR/STAGE/DONE. Training stages are ordinary `nlhf-train` runs (DIR/STAGE/checkpoints); their config is an
ExperimentConfig ConfigDict, so `nlhf-train --config=...` could run any of them by hand.

  tokenizer         DIR/tokenizer/spm.model (sentencepiece on benchmark.language.corpus_text), or 'bytes'
  data              DIR/data/tfds: TFDS data sets 'prompts' and 'demonstrations' (benchmark records)
  sft               the reference policy mu
  pairs             DIR/pairs/tfds: 'pairs', two samples from mu per training prompt labelled by the oracle
  preference_model  trained on the pairs
  reward_model      Bradley-Terry reward model on the same pairs
  <policy>          one per name in config.policies (rlhf, sp, md_BETA, br, ema online; dpo, ipo offline on the
                    pairs), initialised from mu
  eval              DIR/eval/matrix.{json,md,png}, samples.md
"""
from __future__ import annotations

import os
import re

import ml_collections

from nlhf_jax.config import ConfigError, objectives
from nlhf_jax.config.defaults import defaults

FIXED_BEFORE = ('tokenizer', 'data', 'sft', 'pairs', 'preference_model', 'reward_model')
TRAINING = objectives.names('supervised')  # cosine schedules; the policies' are constant
_MD = re.compile(r'^md_(0?\.\d+)$')


def parse_policy(name: str) -> tuple[str, float | None]:
  """(objective, beta) of a policy name: rlhf, sp (beta 0), md_BETA (0 < BETA < 1), br (beta 1), ema, and the
  offline dpo and ipo."""
  fixed = {'rlhf': ('rlhf', None), 'sp': ('nash_md', 0.0), 'br': ('nash_md', 1.0), 'ema': ('nash_ema', None),
           'dpo': ('dpo', None), 'ipo': ('ipo', None)}
  if name in fixed:
    return fixed[name]
  match = _MD.match(name)
  if match and 0.0 < float(match.group(1)) < 1.0:
    return 'nash_md', float(match.group(1))
  raise ConfigError(f'unknown policy {name!r} in config.policies; use rlhf, sp, br, ema, dpo, ipo or md_BETA '
                   'with 0 < BETA < 1 (e.g. md_0.125)')


def policy_names(p) -> list[str]:
  names = [n.strip() for n in str(p.policies).split(',') if n.strip()]
  for n in names:
    parse_policy(n)
  if len(set(names)) != len(names):
    raise ConfigError(f'config.policies={p.policies!r} names a policy twice')
  return names


def stage_names(p) -> list[str]:
  return [*FIXED_BEFORE, *policy_names(p), 'eval']


def tokenizer_spec(p, workdir: str) -> str:
  if p.tokenizer.kind == 'bytes':
    return 'bytes'
  if p.tokenizer.kind != 'sentencepiece':
    raise ConfigError(f"config.tokenizer.kind={p.tokenizer.kind!r}: use 'sentencepiece' or 'bytes'")
  return os.path.join(workdir, 'tokenizer', 'spm.model')


def _tfds_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, 'tfds')


def _train_config(p, workdir: str, stage: str, objective: str, model, trainer, data_name: str,
                  data_dir: str) -> ml_collections.ConfigDict:
  c = defaults()
  c.name = f'{p.name}/{stage}'
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


def _offline_config(p, workdir: str, name: str, objective: str) -> ml_collections.ConfigDict:
  """dpo / ipo on the pairs the preference model learns from, from mu (also their reference)."""
  q = p.offline
  c = _train_config(p, workdir, name, objective, p.model, q, 'pairs', _tfds_dir(workdir, 'pairs'))
  c.init_checkpoint = os.path.join(workdir, 'sft')
  c.offline.tau = q.tau
  return c


def _policy_config(p, workdir: str, name: str) -> ml_collections.ConfigDict:
  objective, beta = parse_policy(name)
  if objectives.get(objective).offline:
    return _offline_config(p, workdir, name, objective)
  q = p.policy
  c = _train_config(p, workdir, name, objective, p.model, q, 'prompts', _tfds_dir(workdir, 'data'))
  judge = 'reward_model' if objectives.get(objective).rewards else 'preference_model'
  c.online.update(tau=q.rlhf_tau if objective == 'rlhf' else q.tau, ema_rate=q.ema_rate,
                  max_new_tokens=q.max_new_tokens, temperature=q.temperature,
                  reference_checkpoint=os.path.join(workdir, 'sft'), judge=judge,
                  judge_checkpoint=os.path.join(workdir, judge), oracle='')
  if beta is not None:
    c.online.beta = beta
  return c


def _simple_configs(p, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  tok = tokenizer_spec(p, workdir)
  return {
      'tokenizer': ml_collections.ConfigDict(dict(
          kind=p.tokenizer.kind, vocab_size=p.tokenizer.vocab_size, corpus_size=p.tokenizer.corpus_size,
          seed=p.seed, output=tok)),
      'data': ml_collections.ConfigDict(dict(
          seed=p.seed, num_prompts=p.data.num_prompts, num_demonstrations=p.data.num_demonstrations,
          validation_fraction=p.data.validation_fraction, data_dir=_tfds_dir(workdir, 'data'))),
      'pairs': ml_collections.ConfigDict(dict(
          seed=p.seed, mesh=dict(p.mesh), tokenizer=tok, reference=os.path.join(workdir, 'sft'),
          data_dir=_tfds_dir(workdir, 'data'), prompts_name='prompts', split='train',
          num_prompts=p.pairs.num_prompts, labels=p.pairs.labels, temperature=p.pairs.temperature,
          max_new_tokens=p.policy.max_new_tokens, prompt_len=p.data.prompt_len, batch_size=p.pairs.batch_size,
          validation_fraction=p.data.validation_fraction, output_dir=_tfds_dir(workdir, 'pairs'),
          oracle=p.oracle)),
  }


def eval_config(p, workdir: str) -> ml_collections.ConfigDict:
  names = ['sft', *policy_names(p)]
  e = p.eval
  return ml_collections.ConfigDict(dict(
      seed=e.seed, judgement=e.judgement, mesh=dict(p.mesh), policy_names=names,
      policy_workdirs=[os.path.join(workdir, n) for n in names], reference='sft',
      preference_model=os.path.join(workdir, 'preference_model'), tokenizer=tokenizer_spec(p, workdir),
      data_dir=_tfds_dir(workdir, 'data'), prompts_name='prompts', split='validation', num_prompts=e.num_prompts,
      samples_per_prompt=e.samples_per_prompt, prompt_len=p.data.prompt_len, max_new_tokens=e.max_new_tokens,
      temperature=e.temperature, batch_size=e.batch_size, num_shown=e.num_shown, oracle=p.oracle,
      output_dir=os.path.join(workdir, 'eval')))


def stage_configs(p, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """{stage name: its ConfigDict}, in the order the stages run (config errors raise here, before any work)."""
  from nlhf_jax.online.judges import resolve_oracle
  resolve_oracle(p.oracle, 'config.oracle')
  workdir = os.path.abspath(workdir)
  out = _simple_configs(p, workdir)
  data_dir, pairs_dir = _tfds_dir(workdir, 'data'), _tfds_dir(workdir, 'pairs')
  out['sft'] = _train_config(p, workdir, 'sft', 'sft', p.model, p.sft, 'demonstrations', data_dir)
  for judge in ('preference_model', 'reward_model'):
    out[judge] = _train_config(p, workdir, judge, judge, p.judge_model, p[judge], 'pairs', pairs_dir)
  for name in policy_names(p):
    out[name] = _policy_config(p, workdir, name)
  out['eval'] = eval_config(p, workdir)
  configs = {name: out[name] for name in stage_names(p)}
  check_training_configs(configs)
  return configs


def _sections(stage: str) -> str:
  """The pipeline config sections that a training stage's config is built from."""
  if stage == 'sft':
    return 'config.sft, config.model, config.data'
  if stage in ('preference_model', 'reward_model'):
    return f'config.{stage}, config.judge_model, config.data'
  if stage in objectives.OBJECTIVES and objectives.get(stage).offline:
    return 'config.offline, config.model, config.data'
  return 'config.policy, config.model, config.data'


def check_training_configs(configs: dict, num_devices: int | None = None) -> None:
  """Validates every training stage's ExperimentConfig (with `num_devices`, also against the mesh), so that a
  bad value in a late stage stops the pipeline before the first stage starts."""
  from nlhf_jax.config import from_config_dict
  for name, c in configs.items():
    if 'train' not in c:
      continue
    try:
      from_config_dict(c, num_devices=num_devices)
    except ConfigError as e:
      raise ConfigError(f'pipeline stage {name!r}: {e} (that stage\'s config is built from {_sections(name)} of '
                        'the pipeline config: fix the value there)') from None
