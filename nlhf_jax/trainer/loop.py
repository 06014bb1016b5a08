"""The outer training loop: no math here, only order of events (restore, step, guard, log, checkpoint, stop).

Start-up, in order, each stage one log line with its time: the input checks (trainer/preflight.py; then, in a
workdir with checkpoints, the config of the one to resume, `_check_resumable`), the data pipeline, the step
compiled against abstract inputs and its memory checked (trainer/memory.py: a step that does not fit is refused
before any weight is read), the state (resumed, restored from the warm start onto abstract
targets without a random initialisation, or initialised), the frozen inputs (the reference, the judge, the LoRA
base). The first step runs the program compiled at start-up.

Besides checkpoints, a run leaves RUN/config.json (the resolved config), RUN/run.json (one session per start:
command, versions, devices, mesh, start and end, outcome), RUN/metrics.jsonl and RUN/tb (training.metrics), and at
the end RUN/curves.png (trainer.plot). With config.train.eval_every > 0 the validation metrics (trainer.validation)
join the metrics row of every eval_every-th step.
"""
from __future__ import annotations

import logging
import os
import time

import jax
from etils import epath
from jax.sharding import Mesh

from nlhf_jax.config import ExperimentConfig, runs
from nlhf_jax.distributed import global_batch, local_batch_rows, make_mesh, within_mesh
from nlhf_jax.training import checkpointing, init, optim
from nlhf_jax.trainer import memory, plot, preflight, validation
from nlhf_jax.training.guards import NonFiniteGuard, check_resume_compatible, config_to_json, guard_step
from nlhf_jax.training.metrics import MetricWriter, Progress, RunRecord
from nlhf_jax.training.preemption import PreemptionWatcher
from nlhf_jax.training.run import Run, absolute
from nlhf_jax.training.state import TrainState
from nlhf_jax.trainer.tasks import get_task, plan_step, setup, timed

__all__ = ['train', 'config_to_json', 'check_resume_compatible']

log = logging.getLogger(__name__)

# CPU collectives can deadlock when too many steps are queued without a sync; block at least this often.
_MAX_QUEUED_STEPS = 8


def train(cfg: ExperimentConfig, workdir: str, mesh: Mesh | None = None, stop_at: int | None = None
          ) -> TrainState:
  """Trains `cfg.train.objective` for cfg.train.num_steps steps, resuming from workdir if it holds a run.

  The mesh is built from cfg.mesh over all devices unless one is given (e.g. over a subset of devices). On
  SIGTERM (or JAX's preemption notice) the state at the step reached is checkpointed and returned early;
  `stop_at` does the same after that step (an interruption at a known step, e.g. to test a resume).
  """
  task = get_task(cfg.train.objective)
  preflight.check_inputs(cfg, workdir)  # the workdir and the runs the config names, before any data or compile
  checked = _check_resumable(cfg, os.path.join(workdir, 'checkpoints'))  # another model's run: before any data
  mesh = make_mesh(cfg.mesh) if mesh is None else mesh
  optim.warn_if_unusual(cfg.optim, cfg.train.num_steps)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  with timed('building the data pipeline'):
    data = task.make_data(cfg, local_batch_rows(cfg.train.batch_size, mesh))
  run = setup(cfg, task, tx, mesh)
  target = init.abstract_state(run.shardings, jax.eval_shape(run.init, cfg.seed))
  plan = _plan_step(cfg, task, run, tx, mesh)
  step_fn = jit_step(cfg, run, plan.step, mesh)
  with timed('compiling the training step (before any weight is read)') as compiling:  # jit keeps it for step 1
    compiled = step_fn.lower(target, plan.target(), memory.abstract_batch(data, mesh)).compile()
  memory.check_step_fits(compiled, cfg, task, mesh)  # before any weight is read
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=cfg.train.checkpoint_every,
                                    keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing)
  try:
    state, meta = _restore_or_init(cfg, task, ckpt, run, data, tx, target, checked)
    checkpointing.write_run_config(workdir, config_to_json(cfg))  # after the resume check: it may refuse the run
    frozen = plan.load()
    validator = validation.make_validator(cfg, task, run, mesh)
    if validator is not None:
      validator.set_state(meta.get('validation'))
  except BaseException:
    ckpt.close()
    raise
  start = int(jax.device_get(state.step))
  guard = NonFiniteGuard(cfg.train.on_nonfinite, skipped=int(meta.get('skipped_updates', 0)))
  writer, progress, watcher = MetricWriter(workdir), Progress(start, cfg.train.num_steps, cfg.train.log_every), None
  record, outcome = RunRecord(workdir, mesh, start, cfg.train.num_steps), None
  try:
    watcher = PreemptionWatcher()
    state, outcome = _run(cfg, state, step_fn, frozen, data, mesh, ckpt, guard, writer, progress, watcher, start,
                          stop_at, validator, compiling['seconds'])
  except BaseException as e:
    outcome = 'interrupted' if isinstance(e, KeyboardInterrupt) else 'failed'
    record.end(progress.last_step, outcome, error=f'{type(e).__name__}: {e}'[:2000])
    raise
  finally:
    if watcher is not None:
      watcher.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    progress.close()
  record.end(progress.last_step, outcome)
  _write_curves(workdir)
  return state


def _write_curves(workdir: str) -> None:
  """RUN/curves.png from the run's metrics (process 0); a plot that fails is a warning, never a failed run."""
  if jax.process_index() != 0:
    return
  try:
    path = plot.write_curves([workdir])
    if path:
      log.info('training curves: %s (nlhf-plot --workdir=%s redraws them, several runs overlaid)', path, workdir)
  except Exception as e:  # noqa: BLE001  (matplotlib, fonts, a damaged metrics file: none may fail the run)
    log.warning('could not draw the training curves of %s: %s: %s', workdir, type(e).__name__, e)


def _run(cfg, state, step_fn, frozen, data, mesh, ckpt, guard, writer, progress, watcher, start,
         stop_at=None, validator=None, compiled_in=None) -> tuple[TrainState, str]:
  """The steps after `start`; returns the state and how the loop ended: finished, preempted or stopped."""
  t = cfg.train
  for step in range(start + 1, t.num_steps + 1):
    batch = global_batch(mesh, next(data))
    if step == start + 1:
      progress.compiling(step, compiled_in)
    state, metrics = step_fn(state, frozen, batch)
    progress.after_step(step, metrics)  # the first step waits for its compilation and logs it
    guard.add(step, metrics)
    eval_now = validator is not None and validator.due(step)
    log_now = step % t.log_every == 0 or step == t.num_steps or eval_now
    save_now = step % t.checkpoint_every == 0 or step == t.num_steps
    sync = log_now or save_now or step % _MAX_QUEUED_STEPS == 0
    signalled = watcher.requested(step, sync)
    preempted = signalled or step == stop_at
    if sync or preempted:
      guard.check()  # before any save: a non-finite state is never checkpointed
      metrics = dict(jax.device_get(metrics), skipped_updates=guard.skipped)
      if eval_now:
        metrics.update(validator.evaluate(step, state.params, frozen))
      if log_now:
        writer.write(step, progress.update(step, metrics))  # with the interval's rates (sampled_tokens_per_s)
      else:
        progress.update(step, None)
    if save_now or preempted:
      _save(cfg, ckpt, state, data, guard, validator)
    if preempted:
      log.warning('preempted: checkpoint at step %d written to %s; start the same command again to continue',
                  step, ckpt.directory)
      return state, 'preempted' if signalled else 'stopped'
  return state, 'finished'


def _save(cfg, ckpt, state, data, guard, validator=None) -> None:
  meta = {'data': data.get_state(), 'config': config_to_json(cfg), 'skipped_updates': guard.skipped,
          'processes': jax.process_count(), 'devices': jax.device_count()}
  if validator is not None:
    meta['validation'] = validator.get_state()  # the best val/loss so far, for a resumed run
  ckpt.save(state, meta, force=True)


def _check_resumable(cfg: ExperimentConfig, directory: str) -> dict | None:
  """When `directory` holds checkpoints, checks the meta of the newest one that reads (the one a resume checks
  first, Checkpointer.restore_latest_usable) against `cfg`, so that a run of another model is refused before the
  step is compiled; returns that meta (None when there is none). Nothing is created when there is no folder."""
  if not epath.Path(absolute(directory)).is_dir():
    return None
  ckpt = checkpointing.Checkpointer(directory)
  try:
    for step in sorted(ckpt.all_steps(), reverse=True):
      try:
        meta = ckpt.read_meta(step)
      except Exception:  # noqa: BLE001 - an unreadable step is set aside by the restore, which says so
        continue
      check_resume_compatible(meta, cfg, ckpt.directory)
      return meta
  finally:
    ckpt.close()
  return None


def _restore_or_init(cfg, task, ckpt, run, data, tx, target, checked=None) -> tuple[TrainState, dict]:
  """The latest usable checkpoint of the run, else a fresh state: the parameters restored from the warm start
  (no random initialisation is computed for them), or initialised from the seed. `target`: the state's
  ShapeDtypeStructs with shardings; `checked`: a meta that _check_resumable checked already (not again)."""
  start = time.perf_counter()
  found = ckpt.restore_latest_usable(
      target, lambda meta: None if meta == checked else check_resume_compatible(meta, cfg, ckpt.directory))
  if found is not None:
    state, meta, step = found
    data.set_state(meta['data'])
    log.info('resumed from step %d in %s (written by %s process(es), %s devices; now %d and %d): %.1f s', step,
             ckpt.directory, meta.get('processes', '?'), meta.get('devices', '?'), jax.process_count(),
             jax.device_count(), time.perf_counter() - start)
    return state, meta
  # The warm start (config/runs.py: init_checkpoint, else the reference); LoRA adapters start at zero on their
  # frozen base (read with the step's frozen inputs), so nothing is warm-started.
  _, warm_start = runs.warm_start(cfg)
  if not warm_start or run.lora:
    with timed(f'initialising the parameters (seed {cfg.seed})'):
      return jax.block_until_ready(jax.jit(run.init, out_shardings=run.shardings)(cfg.seed)), {}
  what = 'policy' if task.objective.trains_policy else task.objective.model.replace('_', ' ')
  with timed(f'restoring the {what} from {warm_start}') as restoring:
    params, step = _warm_start_params(warm_start, target.params, lambda: _initial_params(run, cfg.seed, 'backbone'))
    state = jax.block_until_ready(run.start_from(cfg.seed, params, tx))
    restoring['what'] += f' (its step {step})'
  return state, {}


def _initial_params(run, seed: int, leave_out: str = '') -> dict:
  """The initial parameters of `seed` (without the `leave_out` subtree, which is then never computed: the jitted
  function does not return it), sharded as the train state's."""
  if not leave_out:  # the program that initialises the state: compiled once for both
    return jax.jit(run.init, out_shardings=run.shardings)(seed).params

  def params(seed):
    return {k: v for k, v in run.init(seed).params.items() if k != leave_out}
  shardings = {k: v for k, v in run.shardings.params.items() if k != leave_out}
  return jax.jit(params, out_shardings=shardings)(seed)


def _warm_start_params(path: str, params_target, initial) -> tuple[dict, int]:
  """The parameters restored from the run at `path` onto `params_target` (ShapeDtypeStructs: nothing else is
  allocated): the whole model, or, for a judge that starts from a language model (an SFT or imported run), its
  backbone, with the rest (the head) from `initial` (a dict, or a function that gives it)."""
  source = Run(path)
  directory = source.checkpoints
  if 'backbone' in params_target and preflight.init_is_language_model(source):
    backbone, step = checkpointing.restore_params(directory, params_target['backbone'])
    rest = initial() if callable(initial) else initial
    return {**rest, 'backbone': backbone}, step
  return checkpointing.restore_params(directory, params_target)


def _plan_step(cfg, task, run, tx, mesh):
  lr = optim.schedule(cfg.optim, cfg.train.num_steps)
  return plan_step(cfg, task, run, tx, lr, mesh, lambda: _initial_params(run, cfg.seed))


def jit_step(cfg: ExperimentConfig, run, step, mesh: Mesh):
  """`step(state, frozen, batch)` as training runs it (the benches time this too): the non-finite guard, the
  activations sharded by the rule table, jitted with the train state's shardings and the state donated."""
  step = within_mesh(guard_step(step, cfg.train.on_nonfinite), mesh)
  return jax.jit(step, in_shardings=(run.shardings, None, None), out_shardings=(run.shardings, None),
                 donate_argnums=0)
