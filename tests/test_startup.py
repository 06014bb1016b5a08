"""Training start-up (trainer/loop.py, trainer/memory.py): the step is compiled against abstract inputs and its
memory checked before any weight is read, a step that does not fit is one error naming the figures and the fields;
a warm start restores onto abstract targets (no random initialisation); every stage is one timed log line."""
import dataclasses
import importlib
import json
import logging
import re

import jax
import numpy as np
import psutil
import pytest

from experiments.configs import nash_md
from helpers import mesh, tiny_config
from nlhf_jax import perf
from nlhf_jax.config import ConfigError, from_config_dict
from nlhf_jax.training import checkpointing, init, optim
from nlhf_jax.training.guards import config_to_json
from nlhf_jax.trainer import loop, tasks

ONE = {'mesh.data': 1, 'mesh.fsdp': 1, 'mesh.tensor': 1}


def _cfg(**kw):
  return tiny_config(**{'train.num_steps': 2, 'train.log_every': 1, 'train.checkpoint_every': 2,
                        'train.async_checkpointing': False, 'train.eval_every': 0, **ONE, **kw})


@pytest.fixture(scope='module')
def base_run(tmp_path_factory, devices):
  """An sft run of two steps: the run that the others start from."""
  path = str(tmp_path_factory.mktemp('startup') / 'base')
  loop.train(_cfg(), path, mesh=mesh())
  return path


def test_a_step_too_large_for_the_device_is_refused_before_any_weight_is_read(base_run, tmp_path, monkeypatch):
  def read(*args, **kwargs):
    raise AssertionError('a weight was read (or a state built) before the memory check')
  monkeypatch.setattr(checkpointing, 'restore_params', read)
  monkeypatch.setattr(checkpointing.Checkpointer, 'restore_latest_usable', read)
  monkeypatch.setattr(tasks.Setup, 'start_from', read)
  monkeypatch.setattr(perf, 'device_memory', lambda devices: (100_000.0, 'a figure set by the test'))
  with pytest.raises(ConfigError) as e:
    loop.train(_cfg(init_checkpoint=base_run), str(tmp_path / 'run'), mesh=mesh())
  message = str(e.value)
  assert '\n' not in message, message
  figures = re.fullmatch(
      r"the sft step needs ([0-9.]+) MiB per device \(XLA's compiled figures: arguments ([0-9.]+) MiB \+ outputs "
      r"[0-9.]+ MiB \+ temporaries [0-9.]+ MiB - donated [0-9.]+ MiB\), but a device has 97.7 KiB \(a figure set by "
      r"the test\); to fit, lower train.batch_size \(16\) or data.seq_len \(64\), raise train.grad_accum_steps \(1: "
      r"the same batch in smaller micro-batches\), set model.remat=full \(now 'none'\), or train LoRA adapters "
      r"\(model.lora.rank=16\)", message)
  assert figures, message
  assert float(figures.group(2)) > 0 and float(figures.group(1)) >= float(figures.group(2))
  assert not (tmp_path / 'run').exists()  # nothing written either


def test_the_cpu_devices_of_a_process_share_the_available_host_memory(devices):
  available = psutil.virtual_memory().available
  per_device, where = perf.device_memory(devices[:4])
  assert 0.8 * available < 4 * per_device < 1.2 * available
  assert where.endswith('shared by 4 CPU device(s)')


def test_a_warm_start_restores_the_checkpoint_without_a_random_initialisation(base_run, tmp_path):
  cfg = _cfg(init_checkpoint=base_run)
  task, tx = tasks.get_task('sft'), optim.make_optimizer(cfg.optim, 2)
  run = tasks.setup(cfg, task, tx, mesh())
  target = init.abstract_state(run.shardings, jax.eval_shape(run.init, cfg.seed))
  fresh = jax.jit(run.init, out_shardings=run.shardings)(cfg.seed)

  def random_init(seed):
    raise AssertionError('the random initialisation was computed for a warm start')
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'))
  try:
    state, meta = loop._restore_or_init(cfg, task, ckpt, dataclasses.replace(run, init=random_init), None, tx,
                                        target)
  finally:
    ckpt.close()
  expected, step = checkpointing.restore_params(checkpointing.checkpoints_dir(base_run), target.params)
  assert step == 2 and meta == {} and int(state.step) == 0
  equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(equal, state.params, expected)
  jax.tree.map(equal, state.opt_state, fresh.opt_state)  # a new optimizer state, as a fresh run's
  equal(state.rng, fresh.rng)
  jax.tree.map(lambda x, t: x.sharding == t.sharding or pytest.fail(f'{x.sharding} != {t.sharding}'), state, target)


def test_the_start_up_says_what_it_does_and_compiles_the_step_once_before_reading(base_run, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger='nlhf_jax')
  caplog.set_level(logging.DEBUG, logger='jax._src.dispatch')
  loop.train(_cfg(init_checkpoint=base_run), str(tmp_path / 'run'), mesh=mesh())
  messages = [r.getMessage() for r in caplog.records]
  lines = {}
  for name, prefix in [('data', 'building the data pipeline: '),
                       ('compile', 'compiling the training step (before any weight is read): '),
                       ('restore', f'restoring the policy from {base_run} (its step 2): ')]:
    found = [i for i, m in enumerate(messages) if m.startswith(prefix)]
    assert len(found) == 1 and re.fullmatch(r'[0-9]+\.[0-9] s', messages[found[0]][len(prefix):]), (prefix, found)
    lines[name] = found[0]
  assert lines['data'] < lines['compile'] < lines['restore']
  compiled = [(i, re.match(r'Finished XLA compilation of (.*) in ([0-9.]+) sec', m)) for i, m in enumerate(messages)]
  compiled = [(i, m.group(1), float(m.group(2))) for i, m in compiled if m]
  step = max((c for c in compiled if lines['data'] < c[0] < lines['compile']), key=lambda c: c[2])[1]
  assert [i for i, name, _ in compiled if name == step and i > lines['compile']] == []  # the first step reuses it
  assert any(m.startswith('compiled the training step in ') and 'before any weight was read' in m for m in messages)


def test_the_reference_is_compiled_against_what_is_read(base_run, caplog):
  """The online step's frozen inputs before they are read (what the step compiles against) have the shapes,
  dtypes and shardings of the restored ones, so that the first step reuses the compiled program."""
  c = nash_md.get_config('tiny')
  c.online.update(reference_checkpoint=base_run, frozen_dtype='bfloat16')
  c.mesh.update(data=2, fsdp=2, tensor=1)
  cfg = from_config_dict(c, 4)
  m = mesh(data=2, fsdp=2)
  task, tx = tasks.get_task('nash_md'), optim.make_optimizer(cfg.optim, 2)
  run = tasks.setup(cfg, task, tx, m)
  plan = tasks.plan_step(cfg, task, run, tx, optim.schedule(cfg.optim, 2), m, lambda: None)
  caplog.set_level(logging.INFO, logger='nlhf_jax')
  loaded = plan.load()
  assert any(re.fullmatch(f'restoring the reference from {re.escape(base_run)}: [0-9.]+ s', r.getMessage())
             for r in caplog.records)
  target = plan.target()
  assert set(loaded) == set(target) == {'reference', 'judge'} and loaded['judge'] is None
  same = lambda x, t: (x.shape, x.dtype, x.sharding) == (t.shape, t.dtype, t.sharding) or pytest.fail(f'{x} {t}')
  jax.tree.map(same, loaded['reference'], target['reference'])
  assert {x.dtype for x in jax.tree.leaves(loaded['reference'])} == {np.dtype('bfloat16')}


@pytest.mark.parametrize('name', ['sft', 'preference_model', 'nash_md'])
def test_the_laptop_variants_are_the_hf_ones_with_less_memory(name, tmp_path):
  saved = config_to_json(tiny_config())
  saved['train']['objective'] = 'import'
  saved['model']['max_len'] = 2048
  (tmp_path / 'config.json').write_text(json.dumps(saved))  # an imported run, as far as the configs read it
  module = importlib.import_module(f'experiments.configs.{name}')
  cfgs = {}
  for variant in ('hf', 'laptop'):
    c = module.get_config(variant)
    c.update(init_checkpoint=str(tmp_path))
    c.data.name = 'data'
    if name == 'nash_md':
      c.online.update(reference_checkpoint=str(tmp_path), judge_checkpoint=str(tmp_path))
    cfgs[variant] = from_config_dict(c, num_devices=1)  # a laptop: one CPU device
  hf, laptop = cfgs['hf'], cfgs['laptop']
  assert laptop.model.d_model == hf.model.d_model == saved['model']['d_model']  # the run's shape
  assert (laptop.model.scan_layers, laptop.model.remat, laptop.model.logits_chunk) == (True, 'full', 16384)
  assert laptop.train.batch_size * 4 <= hf.train.batch_size
  assert laptop.data.seq_len + laptop.data.prompt_len + laptop.data.response_len < (
      hf.data.seq_len + hf.data.prompt_len + hf.data.response_len)
  if name == 'nash_md':  # online: adapters on a bfloat16 base (mu), a bfloat16 judge, shorter samples
    assert (laptop.model.lora.rank, laptop.online.frozen_dtype) == (16, 'bfloat16')
    assert laptop.online.sampling.max_new_tokens < hf.online.sampling.max_new_tokens
    assert (laptop.online.tau, laptop.online.beta) == (hf.online.tau, hf.online.beta)


def test_the_fields_named_follow_the_objective_and_the_model(devices):
  from nlhf_jax.trainer import memory
  c = nash_md.get_config('tiny')
  c.model.vocab_size = 32768
  cfg = from_config_dict(c, 8)
  named = memory.fixes(cfg, tasks.get_task('nash_md'), mesh(data=8))
  assert named.startswith('lower train.batch_size (16) or data.prompt_len (40) or online.sampling.max_new_tokens '
                          '(16), ')
  for field in ('model.remat=full', 'model.logits_chunk=16384', 'online.frozen_dtype=bfloat16',
                'model.lora.rank=16', 'mesh.fsdp=1, mesh.data=8'):
    assert field in named, (field, named)
  named = memory.fixes(tiny_config(**ONE, **{'model.remat': 'full'}), tasks.get_task('sft'), mesh())
  assert 'remat' not in named and 'logits_chunk' not in named and 'frozen_dtype' not in named
