"""Checks of a run's inputs on disk, before any data is read, any model is built or anything is compiled.

`check_inputs` looks at the workdir and at the runs that the config points to (config.init_checkpoint,
config.online.reference_checkpoint, config.online.judge_checkpoint): each must exist, hold a checkpoint, and have
been written by the right kind of run with a model that fits. Only the runs' saved configs are read (small JSON),
never their parameters, so the check is cheap; each problem is a ConfigError or FileNotFoundError naming the key,
the path and the fix.
"""
from __future__ import annotations

from etils import epath

from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.config.validate import ONLINE_OBJECTIVES
from nlhf_jax.training import checkpointing

# Model fields that fix the parameters' shapes: a checkpoint restores onto a model only if all of them agree.
SHAPE_KEYS = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'head_dim', 'mlp_dim', 'tie_embeddings')
# Objectives whose runs hold a plain language model (the policy's architecture).
LANGUAGE_MODEL_OBJECTIVES = ('sft', *ONLINE_OBJECTIVES)


def model_family(objective: str) -> str:
  """'language_model', 'preference_model' or 'reward_model': which model class an objective trains."""
  return 'language_model' if objective in LANGUAGE_MODEL_OBJECTIVES else objective


def check_inputs(cfg: ExperimentConfig, workdir: str) -> None:
  check_workdir(workdir)
  own = model_family(cfg.train.objective)
  if cfg.init_checkpoint:
    _check_run('config.init_checkpoint', cfg.init_checkpoint, cfg, family=own, same_shape=True)
  if cfg.train.objective not in ONLINE_OBJECTIVES:
    return
  o = cfg.online
  if o.reference_checkpoint:
    _check_run('config.online.reference_checkpoint', o.reference_checkpoint, cfg, family='language_model',
               same_shape=True)
  if o.judge != 'oracle' and o.judge_checkpoint:
    _check_run('config.online.judge_checkpoint', o.judge_checkpoint, cfg, family=o.judge, same_shape=False)


def check_workdir(workdir: str) -> None:
  path = epath.Path(checkpointing.absolute(workdir))
  if path.exists() and not path.is_dir():
    raise ConfigError(f'--workdir={workdir} is a file, not a directory; give a directory (it is created if it '
                      'does not exist)')


def _check_run(key: str, path: str, cfg: ExperimentConfig, family: str, same_shape: bool) -> None:
  try:
    saved = checkpointing.read_run_config(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{key}={path}: {e}') from None
  objective = saved.get('train', {}).get('objective', '?')
  if model_family(objective) != family:
    wanted = 'an sft (or online) run' if family == 'language_model' else f'a {family} run'
    raise ConfigError(f'{key}={path} is a {objective!r} run, but {wanted} is needed here; give the --workdir '
                      f'of {wanted}')
  model = saved.get('model', {})
  keys = SHAPE_KEYS if same_shape else ('vocab_size',)
  diffs = [(k, model.get(k), getattr(cfg.model, k)) for k in keys if model.get(k) != getattr(cfg.model, k)]
  if diffs:
    shown = ', '.join(f'model.{k}: checkpoint {a!r}, config {b!r}' for k, a, b in diffs)
    fix = ('set config.model to the checkpoint\'s values' if same_shape else
           'the judge must read the policy\'s tokens: use a judge trained with the same tokenizer and vocabulary')
    raise ConfigError(f'{key}={path} was written with another model ({shown}); {fix}')
