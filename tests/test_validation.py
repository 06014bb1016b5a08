"""Validation during training: val/ metrics at the eval_every steps, equal to the loss on the validation batches
computed directly, the same after a resume, skipped for online objectives, and the config checks."""
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import dpo, preference_model, sft
from helpers import mesh
from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.data import pipelines
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.training import init
from nlhf_jax.trainer.loop import train
from nlhf_jax.trainer.tasks import get_task

ONE = {'mesh.data': 1, 'mesh.fsdp': 1, 'mesh.tensor': 1}


def _config(module, **overrides):
  c = module.get_config('tiny')
  base = {'train.num_steps': 4, 'train.log_every': 1, 'train.checkpoint_every': 2, 'train.eval_every': 2,
          'train.eval_batches': 2, 'train.batch_size': 8, 'train.async_checkpointing': False, **ONE}
  for key, value in {**base, **overrides}.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  return from_config_dict(c, num_devices=1)


def _rows(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _val(rows):
  """{step: {val/ key: value}} (the last row of each step)."""
  out = {}
  for r in rows:
    val = {k: v for k, v in r.items() if k.startswith('val/')}
    if val:
      out[r['step']] = val
  return out


def _direct(cfg, params):
  """The mean over the first eval_batches validation batches of the objective's loss and metrics, unjitted."""
  task = get_task(cfg.train.objective)
  graphdef, _ = init.abstract_model(task.make_model(cfg))
  kind = task.objective.data
  it = pipelines.make_eval_iterator(cfg.data, kind, cfg.train.batch_size, slice(None), seed=cfg.seed,
                                    tokenizer=load_tokenizer(cfg.data.tokenizer),
                                    split_fields=kind != 'demonstrations')
  model = nnx.merge(graphdef, jax.device_get(params))
  totals = {}
  for _ in range(cfg.train.eval_batches):
    batch = next(it)
    assert batch.pop('valid').all()
    loss, metrics = task.loss_fn(model, batch, jax.random.key(0))
    for k, v in dict(metrics, loss=loss).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {f'val/{k}': v / cfg.train.eval_batches for k, v in totals.items()}


@pytest.mark.parametrize('module,accuracy', [(sft, 'val/token_accuracy'), (preference_model, 'val/accuracy')])
def test_val_metrics_at_eval_steps_equal_the_direct_loss(tmp_path, module, accuracy):
  cfg = _config(module)
  state = train(cfg, str(tmp_path), mesh=mesh(1, 1, 1))
  val = _val(_rows(tmp_path))
  assert sorted(val) == [2, 4]
  row = val[4]
  assert accuracy in row and 'val/loss' in row
  if module is preference_model:
    assert {'val/log_loss', 'val/calibration_error'} <= set(row)
  direct = _direct(cfg, state.params)
  for k, v in direct.items():
    np.testing.assert_allclose(row[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  best = min((val[s]['val/loss'], s) for s in (2, 4))
  assert (row['val/best_loss'], row['val/best_step']) == best


def test_resumed_run_gives_the_same_val_metrics(tmp_path):
  cfg = _config(sft, **{'train.num_steps': 6})
  train(cfg, str(tmp_path / 'whole'), mesh=mesh(1, 1, 1))
  train(cfg, str(tmp_path / 'resumed'), mesh=mesh(1, 1, 1), stop_at=3)
  train(cfg, str(tmp_path / 'resumed'), mesh=mesh(1, 1, 1))
  whole, resumed = _val(_rows(tmp_path / 'whole')), _val(_rows(tmp_path / 'resumed'))
  assert sorted(whole) == [2, 4, 6]
  assert resumed == whole  # bitwise: the same floats, best-so-far included


def test_offline_objective_reports_loss_and_implicit_accuracy(tmp_path):
  cfg = _config(dpo, **{'train.num_steps': 2, 'train.eval_batches': 1})
  train(cfg, str(tmp_path), mesh=mesh(1, 1, 1))
  row = _val(_rows(tmp_path))[2]
  assert {'val/loss', 'val/implicit_accuracy', 'val/best_loss', 'val/best_step'} <= set(row)
  assert np.isfinite(row['val/loss'])


def test_eval_settings_are_validated():
  with pytest.raises(ConfigError, match='eval_every'):
    _config(sft, **{'train.eval_every': -1})
  with pytest.raises(ConfigError, match='eval_batches'):
    _config(sft, **{'train.eval_batches': 0})
