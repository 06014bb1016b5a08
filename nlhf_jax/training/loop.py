"""The outer training loop: no math here, only order of events (restore, step, log, checkpoint)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import jax
from jax.sharding import Mesh

from nlhf_jax.config import ConfigError, ExperimentConfig
from nlhf_jax.distributed import global_batch, local_batch_rows, make_mesh, param_specs
from nlhf_jax.training import checkpointing, init, optim
from nlhf_jax.training.metrics import MetricWriter, Progress
from nlhf_jax.training.state import TrainState
from nlhf_jax.training.tasks import build_step, get_task

log = logging.getLogger(__name__)

# CPU collectives can deadlock when too many steps are queued without a sync; block at least this often.
_MAX_QUEUED_STEPS = 8


def config_to_json(cfg: ExperimentConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_resume_compatible(saved: dict, cfg: ExperimentConfig, directory: str) -> None:
  """A checkpoint written for another model shape cannot be continued: say what differs."""
  now = config_to_json(cfg)['model']
  before = saved.get('config', {}).get('model', {})
  diff = [f'model.{k}: checkpoint {before.get(k)!r}, config {now.get(k)!r}'
          for k in sorted(set(now) | set(before)) if before.get(k) != now.get(k) and k != 'preset']
  if diff:
    raise ConfigError(f'the checkpoint in {directory} was written with another model; nothing was overwritten. '
                      f'Differences: {"; ".join(diff)}. Use a new --workdir or the original config.')


def train(cfg: ExperimentConfig, workdir: str, mesh: Mesh | None = None) -> TrainState:
  """Trains `cfg.train.objective` for cfg.train.num_steps steps, resuming from workdir if it holds a run.

  The mesh is built from cfg.mesh over all devices unless one is given (e.g. over a subset of devices).
  """
  task = get_task(cfg.train.objective)
  mesh = make_mesh(cfg.mesh) if mesh is None else mesh
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  data = task.make_data(cfg, local_batch_rows(cfg.train.batch_size))
  make_model = task.make_model(cfg)
  graphdef, init_fn, shardings = _initializer(task, make_model, tx, mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), every=cfg.train.checkpoint_every,
                                    keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing)
  params_target = init.abstract_state(shardings, jax.eval_shape(init_fn, cfg.seed)).params
  state = _restore_or_init(cfg, task, ckpt, init_fn, shardings, data, params_target)
  step_fn, frozen = _compile_step(cfg, task, graphdef, tx, shardings, mesh, init_fn, params_target)
  writer, start = MetricWriter(workdir), int(jax.device_get(state.step))
  progress = Progress(start, cfg.train.num_steps, cfg.train.log_every)
  try:
    for step in range(start + 1, cfg.train.num_steps + 1):
      state, metrics = step_fn(state, frozen, global_batch(mesh, next(data)))
      log_now = step % cfg.train.log_every == 0 or step == cfg.train.num_steps
      save_now = step % cfg.train.checkpoint_every == 0 or step == cfg.train.num_steps
      if log_now or save_now or step % _MAX_QUEUED_STEPS == 0:
        metrics = _check_finite(jax.device_get(metrics), step)
        progress.update(step, metrics if log_now else None)
        if log_now:
          writer.write(step, metrics)
      if save_now:
        ckpt.save(state, {'data': data.get_state(), 'config': config_to_json(cfg)}, force=True)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
    progress.close()
  return state


def _initializer(task, make_model, tx, mesh):
  if not task.ema:
    return init.state_initializer(make_model, tx, mesh)
  _, abstract = init.abstract_model(make_model)
  return init.state_initializer(make_model, tx, mesh, make_extras=lambda params: {'ema': params},
                                extras_specs={'ema': param_specs(abstract)})


def _restore_or_init(cfg, task, ckpt, init_fn, shardings, data, params_target) -> TrainState:
  latest = ckpt.latest_step()
  if latest is not None:
    meta = ckpt.read_meta(latest)
    check_resume_compatible(meta, cfg, ckpt.directory)
    shapes = jax.eval_shape(init_fn, cfg.seed)
    state, meta = ckpt.restore(init.abstract_state(shardings, shapes), latest)
    data.set_state(meta['data'])
    log.info('resumed from step %d in %s', latest, ckpt.directory)
    return state
  state = jax.jit(init_fn, out_shardings=shardings)(cfg.seed)
  # An online policy starts from the reference policy unless told otherwise.
  warm_start = cfg.init_checkpoint or (cfg.online.reference_checkpoint if task.online else '')
  if warm_start:
    params, step = checkpointing.restore_params(checkpointing.checkpoints_dir(warm_start), params_target)
    log.info('initialised parameters from %s (step %d)', warm_start, step)
    extras = {'ema': params} if task.ema else state.extras
    state = state.replace(params=params, extras=extras)
  return state


def _compile_step(cfg, task, graphdef, tx, shardings, mesh, init_fn, params_target):
  lr = optim.schedule(cfg.optim, cfg.train.num_steps)
  initial_params = lambda: jax.jit(init_fn, out_shardings=shardings)(cfg.seed).params
  step, frozen = build_step(cfg, task, graphdef, tx, lr, mesh, initial_params, params_target)
  jitted = jax.jit(step, in_shardings=(shardings, None, None), out_shardings=(shardings, None), donate_argnums=0)
  return jitted, frozen


def _check_finite(metrics: dict, step: int) -> dict:
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise FloatingPointError(f'non-finite loss {loss} at step {step}; the last checkpoint (before this step) is '
                             'kept. Lower the learning rate or check the data.')
  return metrics
