"""One handle for a run directory: its layout, its config, its kind, its tokenizer and the runs it started from.

Every run, trained (nlhf-train) or imported (nlhf-import), is laid out alike:

  RUN/config.json        the experiment config (nlhf-train writes it at each start, nlhf-import once)
  RUN/checkpoints/N/     Orbax steps (training/checkpointing.py): a trained run's full state, an imported run's
                         step 0 with the items params and meta; meta holds the config that wrote the step
  RUN/tokenizer/         an imported run's tokenizer files (its config's data.tokenizer names them)

`Run(path, key)` takes the run's folder or its checkpoints/ folder (a local path or a URL that Orbax reads, such
as gs://...); `key` is the config key or flag that named it, and starts every error. Its `config` is read once
per handle from one source: RUN/config.json, or, in a folder without one (runs written before RUN/config.json
existed, a checkpoints/ folder given alone), the meta of the newest checkpoint; either is upgraded to the current
layout (config/runs.py `upgrade`: a run saved before config.online.sampling existed reads as one saved after).
From it: `objective`, `family` (the model it holds: language_model, preference_model or reward_model),
`model_config`, `tokenizer`, and the runs it started from by the one precedence rule of config/runs.py
(`reference`, `warm_start`, `lora_base`, `sources`).
Nothing here reads a parameter; the restores are in training/checkpointing.py.
"""
from __future__ import annotations

import functools
import os

import orbax.checkpoint as ocp
from etils import epath

from nlhf_jax.config import ModelConfig, objectives, runs
from nlhf_jax.config.objectives import IMPORTED, model_family

CHECKPOINTS = 'checkpoints'


def absolute(path: str) -> str:
  """Local paths made absolute; URLs (gs://...) as they are."""
  return path if '://' in path else os.path.abspath(path)


def upgrade_meta(meta: dict) -> dict:
  """A checkpoint's meta with the config it holds in the current layout (config/runs.py `upgrade`)."""
  return {**meta, 'config': runs.upgrade(meta['config'])} if isinstance(meta.get('config'), dict) else meta


def read_meta(directory: str, step: int | None = None) -> tuple[dict, int]:
  """(meta, step) of step `step` (default the newest) of the checkpoints in `directory` (FileNotFoundError when
  it has none); its config `upgrade_meta`d."""
  manager = ocp.CheckpointManager(directory)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}; expected step directories written by nlhf-train')
    return upgrade_meta(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']), step
  finally:
    manager.close()


class Run:
  """A run directory (see the module docstring). Cheap to make: nothing is read until asked, then once."""

  def __init__(self, path: str, key: str = ''):
    self.path = absolute(os.path.expanduser(str(path)))
    self.key = key

  def __repr__(self) -> str:
    return f'Run({self.path!r})'

  def _error(self, message: str) -> str:
    return f'{self.key}={self.path}: {message}' if self.key else message

  # ------------------------------------------------------------------------------------------------ layout
  @functools.cached_property
  def root(self) -> epath.Path:
    """The run's folder (the parent of a checkpoints/ folder given alone)."""
    path = epath.Path(self.path)
    if path.name == CHECKPOINTS and not (path / runs.RUN_CONFIG).exists() and (path.parent / runs.RUN_CONFIG).exists():
      return path.parent
    return path

  @functools.cached_property
  def checkpoints(self) -> str:
    """The checkpoints folder: RUN/checkpoints, or the folder given when it has none (FileNotFoundError when the
    path does not exist)."""
    path = epath.Path(self.path)
    if (path / CHECKPOINTS).is_dir():
      return str(path / CHECKPOINTS)
    if path.is_dir():
      return str(path)
    raise FileNotFoundError(self._error(f'checkpoint path {self.path} does not exist; give the --workdir of an '
                                        'nlhf-train run (or its checkpoints/ directory)'))

  @property
  def config_file(self) -> epath.Path:
    return self.root / runs.RUN_CONFIG

  def latest_step(self) -> int | None:
    manager = ocp.CheckpointManager(self.checkpoints)
    try:
      return manager.latest_step()
    finally:
      manager.close()

  def require_checkpoint(self) -> int:
    """The newest step (FileNotFoundError when there is none)."""
    step = self.latest_step()
    if step is None:
      raise FileNotFoundError(self._error(f'no checkpoint in {self.checkpoints}; expected step directories written '
                                          'by nlhf-train'))
    return step

  # ------------------------------------------------------------------------------------------------ config
  @functools.cached_property
  def config(self) -> dict:
    """The experiment config the run was written with (as JSON), read once."""
    if self.config_file.exists():
      return runs.read_saved_config(str(self.root), self.key or 'run')
    try:
      return read_meta(self.checkpoints)[0].get('config', {})
    except FileNotFoundError as e:
      message = str(e)
      raise FileNotFoundError(message if message.startswith(f'{self.key}=') else self._error(message)) from None

  def config_at(self, step: int | None) -> dict:
    """The config that wrote checkpoint `step` (None: the run's `config`)."""
    if step is None:
      return self.config
    return read_meta(self.checkpoints, step)[0].get('config', {})

  @property
  def objective(self) -> str:
    return self.config.get('train', {}).get('objective', '?')

  @property
  def imported(self) -> bool:
    return self.objective == IMPORTED

  @property
  def spec(self) -> objectives.Objective | None:
    """The objective's row of the table (None for an imported run)."""
    return objectives.OBJECTIVES.get(self.objective)

  @property
  def family(self) -> str:
    """What the run holds: 'language_model', 'preference_model' or 'reward_model' (an unknown objective as it
    is)."""
    return model_family(self.objective)

  @property
  def model_config(self) -> ModelConfig:
    return ModelConfig.from_dict(self.config.get('model', {}))

  @property
  def tokenizer(self) -> str:
    """The run's data.tokenizer as it saved it ('bytes' when its config has none)."""
    return str(self.config.get('data', {}).get('tokenizer', 'bytes'))

  @property
  def lora(self) -> bool:
    return self.config.get('model', {}).get('lora', {}).get('rank', 0) > 0

  # --------------------------------------------------------------------------- the runs it started from
  @property
  def reference(self) -> str:
    return runs.reference(self.config)[1]

  @property
  def warm_start(self) -> str:
    return runs.warm_start(self.config)[1]

  @property
  def lora_base(self) -> str:
    return runs.lora_base(self.config)[1]

  @property
  def sources(self) -> list[str]:
    return runs.source_runs(self.config)
