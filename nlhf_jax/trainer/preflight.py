"""Checks of a run's inputs on disk, before any data is read, any model is built or anything is compiled.

`check_inputs` looks at the workdir and at the runs that the config points to (config.init_checkpoint,
config.online.reference_checkpoint, config.online.judge_checkpoint, config.offline.reference_checkpoint): each
must exist, hold a checkpoint, and have been written by the right kind of run with a model that fits. Each run is opened once, as a `Run` handle
(training/run.py): only its saved config is read (small JSON), never its parameters, so the check is cheap; each
problem is a ConfigError or FileNotFoundError naming the key, the path and the fix.
"""
from __future__ import annotations

from etils import epath

from nlhf_jax.config import ConfigError, ExperimentConfig, objectives
from nlhf_jax.config.schema import architecture
from nlhf_jax.online import prompted
from nlhf_jax.training.run import Run, absolute


def check_inputs(cfg: ExperimentConfig, workdir: str) -> None:
  check_workdir(workdir)
  spec = objectives.get(cfg.train.objective)
  own = spec.model
  if cfg.init_checkpoint:
    # A judge may start from a language model: its backbone (a new head).
    init, init_family = Run(cfg.init_checkpoint, 'config.init_checkpoint'), own
    if not spec.trains_policy and init_is_language_model(init):
      init_family = 'language_model'
    _check_run('config.init_checkpoint', cfg.init_checkpoint, cfg, family=init_family, same_shape=True, run=init)
  if spec.offline and cfg.offline.reference_checkpoint:
    _check_run('config.offline.reference_checkpoint', cfg.offline.reference_checkpoint, cfg,
               family='language_model', same_shape=True)
  if not spec.online:
    return
  o = cfg.online
  if o.reference_checkpoint:
    _check_run('config.online.reference_checkpoint', o.reference_checkpoint, cfg, family='language_model',
               same_shape=True)
  if o.judge == 'prompted' and o.judge_checkpoint:  # any language model, read through its own tokenizer
    _check_run('config.online.judge_checkpoint', o.judge_checkpoint, cfg, family='language_model', same_shape=None)
    prompted.from_online_config(cfg)  # its tokenizer, the template and the answers, before any data or compile
  elif o.judge != 'oracle' and o.judge_checkpoint:
    _check_run('config.online.judge_checkpoint', o.judge_checkpoint, cfg, family=o.judge, same_shape=False)


def init_is_language_model(run: str | Run) -> bool:
  """Whether the run (a path or a Run) holds a language model (an sft, online or imported run)."""
  run = run if isinstance(run, Run) else Run(run)
  try:
    return run.family == 'language_model'
  except FileNotFoundError:
    return False  # reported by the check of the run itself


def check_workdir(workdir: str) -> None:
  path = epath.Path(absolute(workdir))
  if path.exists() and not path.is_dir():
    raise ConfigError(f'--workdir={workdir} is a file, not a directory; give a directory (it is created if it '
                      'does not exist)')
  run = Run(workdir, '--workdir')
  if run.config_file.exists() and run.imported:
    raise ConfigError(f'--workdir={workdir} holds an imported model (nlhf-import), which is not trained in place; '
                      f'train into a new --workdir with --config.init_checkpoint={workdir} (or use it as '
                      'config.online.reference_checkpoint)')


def _check_run(key: str, path: str, cfg: ExperimentConfig, family: str, same_shape: bool | None,
               run: Run | None = None) -> None:
  """The run at `path` (opened as `run` when given) holds a `family` model; with same_shape its architecture is
  the config's, with False its vocabulary (a judge reads the policy's ids), with None nothing more."""
  run = Run(path, key) if run is None else run
  saved = run.config
  run.require_checkpoint()
  if run.family != family:
    wanted = 'an sft (or online) run' if family == 'language_model' else f'a {family} run'
    raise ConfigError(f'{key}={path} is a {run.objective!r} run, but {wanted} is needed here; give the --workdir '
                      f'of {wanted}')
  theirs, ours = architecture(saved.get('model', {})), architecture(cfg.model)
  keys = list(ours) if same_shape else [] if same_shape is None else ['vocab_size']
  diffs = [(k, theirs[k], ours[k]) for k in keys if theirs[k] != ours[k]]
  if diffs:
    shown = ', '.join(f'model.{k}: checkpoint {a!r}, config {b!r}' for k, a, b in diffs)
    fix = ('set config.model to the checkpoint\'s values (or config.model.preset=from_run to read them from '
           'the run named by config.init_checkpoint)' if same_shape else
           'the judge must read the policy\'s tokens: use a judge trained with the same tokenizer and vocabulary')
    raise ConfigError(f'{key}={path} was written with another model ({shown}); {fix}')
