"""Orbax checkpoints of the full train state, restorable onto any mesh, and params-only restores.

Layout of step N under DIR/checkpoints/N/: items `params`, `opt_state`, `train` (step, rng, extras) as
sharded arrays, and `meta` (JSON: the data iterator's state and the config that wrote it). A run that holds a
model and no training state (nlhf-import) has the items `params` and `meta` alone (`Checkpointer.save_params`).
Where a run's files are and what its config says: training/run.py.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from nlhf_jax.config import ConfigError, ModelConfig, runs
from nlhf_jax.distributed import named, param_specs
from nlhf_jax.models import Transformer, lora
from nlhf_jax.training import layouts
from nlhf_jax.training.run import Run, absolute, read_meta, upgrade_meta
from nlhf_jax.training.state import TrainState

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A workdir's checkpoints exist but none can be restored."""


def _abstract(tree_with_shardings) -> Any:
  """ShapeDtypeStructs that carry concrete NamedShardings: the restore target."""
  def leaf(x):
    sharding = x.sharding
    if isinstance(sharding, NamedSharding) and not isinstance(sharding.mesh, jax.sharding.Mesh):
      raise ValueError('restore targets need a concrete mesh, not an AbstractMesh')
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree_with_shardings)


@functools.cache
def _save_replicated_arrays_whole_on_cpu() -> None:
  """On CPU devices, Orbax's replica-parallel saving (its default there) cuts every replicated array into one slice
  per device, each an eagerly compiled slice op, only to copy the slices within host memory: a tiny model's save
  took 0.25 s on 8 CPU devices with it and 0.14 s without (the first save of a process 1.1 s and 0.2 s). There
  the arrays are saved whole from their first replica; on GPU and TPU Orbax's own default stays. The same files
  either way: a checkpoint written with one setting restores with the other. Once per process (Orbax's handler
  table is global)."""
  if jax.default_backend() != 'cpu':
    return
  absl_log = logging.getLogger('absl')
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # the table logs a warning whenever a handler is replaced
  try:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)
  finally:
    absl_log.setLevel(level)


class Checkpointer:
  """Saves every `every` steps (asynchronously), keeps the last `keep`, restores the latest."""

  def __init__(self, directory: str, every: int = 1, keep: int = 3, async_save: bool = True):
    self.directory = absolute(directory)
    _save_replicated_arrays_whole_on_cpu()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                           enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, meta: dict, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        train=ocp.args.StandardSave({'step': state.step, 'rng': state.rng, 'extras': state.extras}),
        meta=ocp.args.JsonSave(meta))
    saved = self._manager.save(step, args=args, force=force)
    if saved:
      log.info('saving checkpoint at step %d to %s', step, self.directory)
    return saved

  def save_params(self, step: int, params: Any, meta: dict) -> None:
    """Step `step` with the items `params` and `meta` alone: a model without a training state (an imported run),
    which `restore_params` reads as it reads a trained run's parameters. Waits until it is written."""
    self._manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
    self.wait()

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores onto the shardings that `target` (arrays or ShapeDtypeStructs with shardings) carries."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = _abstract(target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state),
        train=ocp.args.StandardRestore({'step': abstract.step, 'rng': abstract.rng, 'extras': abstract.extras}),
        meta=ocp.args.JsonRestore()))
    train = restored['train']
    state = TrainState(step=train['step'], params=restored['params'], opt_state=restored['opt_state'],
                       rng=train['rng'], extras=train['extras'])
    return state, restored['meta']

  def restore_latest_usable(self, target: TrainState, check_meta: Callable[[dict], None]
                            ) -> tuple[TrainState, dict, int] | None:
    """The newest step that reads back, or None when there is none.

    `check_meta(meta)` runs before any array is read and its errors propagate (a config mismatch is not a
    damaged checkpoint). A step whose files cannot be read is reported, moved aside to `N.unreadable` (kept
    for inspection, never deleted) and the previous complete step is used; interrupted saves (Orbax's
    temporary directories) are reported and ignored. When every step is unreadable it raises CheckpointError
    rather than let the run start again from step 0 (the cause may be a passing storage error).
    """
    self._report_incomplete()
    set_aside = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any failure to read means the step is unusable
        set_aside.append(self._set_aside(step, e))
        continue
      check_meta(meta)
      try:
        state, meta = self.restore(target, step)
      except Exception as e:  # noqa: BLE001
        set_aside.append(self._set_aside(step, e))
        continue
      return state, meta, step
    if set_aside:
      raise CheckpointError(
          f'no checkpoint in {self.directory} can be read; the run stops instead of starting again from step 0. '
          f'The steps were moved to {", ".join(p.name for p in set_aside)}: if the storage error has passed, '
          'move them back (e.g. `mv 4.unreadable 4`) and start again; to train afresh, use a new --workdir')
    return None

  def _report_incomplete(self) -> None:
    root = epath.Path(self.directory)
    if not root.is_dir():
      return
    for path in sorted(root.iterdir()):
      if 'tmp' in path.name and path.name.split('.')[0].isdigit():
        log.warning('ignoring an incomplete checkpoint %s (a save that was interrupted)', path)

  def _set_aside(self, step: int, error: Exception) -> epath.Path:
    path = epath.Path(self.directory) / str(step)
    aside = path.parent / f'{step}.unreadable'
    log.error('checkpoint step %d in %s cannot be read (%s: %s); it is moved to %s and the previous complete '
              'step is used', step, self.directory, type(error).__name__, (str(error).splitlines() or [''])[0][:300],
              aside)
    if jax.process_index() == 0 and path.is_dir():
      n = 1
      while aside.exists():
        aside, n = path.parent / f'{step}.unreadable{n}', n + 1
      path.rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'nlhf_set_aside_{step}')
    self._manager.reload()
    return aside

  def read_meta(self, step: int | None = None) -> dict:
    """The meta of step `step` (default the newest), its config in the current layout (training/run.py
    `upgrade_meta`): what a resume compares with the current config."""
    step = self.latest_step() if step is None else step
    return upgrade_meta(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def params_target(abstract_params, mesh) -> Any:
  """ShapeDtypeStructs of a model's parameters (nnx abstract state) with the rule table's shardings on `mesh`:
  the restore target of a params-only read."""
  shardings = named(mesh, param_specs(abstract_params))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nnx.to_pure_dict(abstract_params), shardings)


def as_dtype(target: Any, dtype: str) -> Any:
  """Restore targets (ShapeDtypeStructs) with floating-point leaves in `dtype` ('': unchanged)."""
  if not dtype:
    return target
  floating = lambda x: jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
  cast = lambda x: jax.ShapeDtypeStruct(x.shape, jax.numpy.dtype(dtype) if floating(x) else x.dtype,
                                        sharding=x.sharding)
  return jax.tree.map(cast, target)


def restore_params(directory: str, abstract_params, step: int | None = None) -> tuple[Any, int]:
  """Only the parameters of a checkpoint (for evaluation or a warm start), onto `abstract_params`' shardings
  and dtypes (cast as they are read), in its layout (unrolled or scanned layers: training/layouts.py) whatever
  the checkpoint's.
  `directory` is a run's checkpoints directory."""
  meta, step = read_meta(absolute(directory), step)
  manager = ocp.CheckpointManager(absolute(directory))
  saved = meta.get('config', {}).get('model', {})
  target = _abstract(abstract_params)
  # Orbax casts each array to the target's dtype as it reads it (a float32 checkpoint into a bfloat16 reference).
  read = layouts.saved_target(target, bool(saved.get('scan_layers', False)) if saved else None)
  if saved.get('lora', {}).get('rank', 0) > 0:
    params = _restore_lora_run(manager, step, meta['config'], read)
  else:
    params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(read)))['params']
  manager.close()
  return layouts.to_target(params, target), step


def _restore_lora_run(manager, step: int, config: dict, read: Any) -> Any:
  """The merged weights (base + adapters) of a LoRA run, in the run's layout (`read`: its base's target). Its
  checkpoint holds the adapters; the base is the run that its config names (config/runs.py `lora_base`: the
  objective's reference checkpoint, else init_checkpoint), restored itself by `restore_params` (a LoRA run's base
  may be one too)."""
  base_run = runs.lora_base(config)[1]
  if not base_run:
    raise CheckpointError(f'{manager.directory} holds LoRA adapters but its config names no base run')
  base, _ = restore_params(checkpoints_dir(base_run), read)
  model_cfg = ModelConfig.from_dict(config['model'])
  abstract = nnx.state(nnx.eval_shape(lambda: lora.apply_lora(Transformer(model_cfg, nnx.Rngs(0)), model_cfg.lora,
                                                              nnx.Rngs(0))))
  mesh = next(x.sharding.mesh for x in jax.tree.leaves(read))
  adapters_target = lora.split_adapters(params_target(abstract, mesh))[0]
  adapters = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(adapters_target)))['params']
  return jax.jit(lora.merge_adapters, static_argnums=2)(base, adapters, model_cfg.lora)


def write_run_config(workdir: str, config_json: dict) -> None:
  """RUN/config.json: the run's experiment config, where other commands and configs (model.preset='from_run')
  read it without opening a checkpoint. Written by process 0."""
  if jax.process_index() != 0:
    return
  root = epath.Path(absolute(workdir))
  root.mkdir(parents=True, exist_ok=True)
  tmp = root / 'config.json.tmp'
  tmp.write_text(json.dumps(config_json, indent=2))
  tmp.replace(root / 'config.json')


def checkpoints_dir(path: str) -> str:
  """A run's workdir or its checkpoints directory -> the checkpoints directory (clear error if neither).
  Local paths and URLs that Orbax reads (gs://...) alike."""
  return Run(path).checkpoints


def read_run_config(path: str, step: int | None = None) -> dict:
  """The experiment config (as JSON) that the run at `path` was written with (`Run.config`), or that wrote its
  checkpoint `step`."""
  return Run(path).config_at(step)


# ------------------------------------------------------------------- frozen models (references, judges)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (holds arrays)
class FrozenModel:
  """A model restored params-only from a run's checkpoint, for use inside jitted steps."""
  graphdef: nnx.GraphDef
  params: Any
  model_cfg: ModelConfig

  def module(self, params=None) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params if params is None else params)


def frozen_target(path: str | Run, model_cls, mesh: Mesh, dtype: str = '', attention_impl: str = ''
                  ) -> tuple[nnx.GraphDef, Any, ModelConfig]:
  """(graphdef, target, model config) of the `model_cls` that the run at `path` (or the Run) holds, from its
  saved config alone: the target is ShapeDtypeStructs sharded on `mesh` by the rule table, floating-point leaves
  in `dtype` ('': as the run stored them). What a step is compiled against before any weight is read.
  `attention_impl` ('': the run's): how the model computes attention here (the training config's
  config.model.attention_impl), which changes no parameter."""
  model_cfg = (path if isinstance(path, Run) else Run(path)).model_config
  if attention_impl:
    model_cfg = dataclasses.replace(model_cfg, attention_impl=attention_impl)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_cls(model_cfg, nnx.Rngs(0))))
  return graphdef, as_dtype(params_target(abstract, mesh), dtype), model_cfg


def load_frozen(path: str | Run, model_cls, mesh: Mesh, dtype: str = '') -> FrozenModel:
  """Restores `model_cls` (its config read from the run) sharded on `mesh` by the rule table, its parameters cast
  to `dtype` ('': as the run stored them), onto `frozen_target` (no other copy is made)."""
  run = path if isinstance(path, Run) else Run(path)
  graphdef, target, model_cfg = frozen_target(run, model_cls, mesh, dtype)
  params, _ = restore_params(run.checkpoints, target)
  return FrozenModel(graphdef, params, model_cfg)


def load_policy(path: str, target: Any) -> Any:
  """A language model's parameters from a run's checkpoint, restored onto `target` (ShapeDtypeStructs with
  shardings: the policy's parameters). The reference policy mu must have the policy's architecture: the two are
  mixed token by token."""
  try:
    params, _ = restore_params(checkpoints_dir(path), target)
  except ValueError as e:
    raise ConfigError(f'the checkpoint in {path} does not fit the policy model (config.model): {e}') from e
  return params
