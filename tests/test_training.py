"""The SFT train step: identical results on every mesh, exact resume, resume across mesh shapes."""

import jax
import numpy as np
import pytest

from helpers import mesh, tiny_config
from nlhf_jax.training import checkpointing
from nlhf_jax.trainer.loop import train

MESHES = {'data2_tensor4': (2, 1, 4), 'fsdp8': (1, 8, 1), 'data8': (8, 1, 1)}


def _cfg(steps, **kw):
  overrides = {'train.num_steps': steps, 'train.log_every': 1, 'train.checkpoint_every': 4,
               'train.async_checkpointing': False, 'train.batch_size': 16, **kw}
  return tiny_config(**overrides)


def _last_loss(workdir):
  import json
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return json.loads(lines[-1])['loss']


@pytest.fixture(scope='module')
def single_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('single')
  state = train(_cfg(5), str(workdir), mesh=mesh(1, 1, 1))
  return jax.device_get(state.params), _last_loss(workdir)


@pytest.mark.parametrize('name', list(MESHES))
def test_five_steps_on_a_mesh_match_a_single_device(name, single_device_run, tmp_path):
  params_1, loss_1 = single_device_run
  state = train(_cfg(5), str(tmp_path), mesh=mesh(*MESHES[name]))
  assert abs(_last_loss(tmp_path) - loss_1) <= 1e-5
  diffs = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), jax.device_get(state.params), params_1)
  assert max(jax.tree.leaves(diffs)) <= 1e-5


def _resume_cfg(steps, **kw):
  """An 8-step run (2 warmup steps, then cosine decay over steps 3-8) of which the first `steps` are run: the
  schedule spans optim.decay_steps=8 in both parts, so the resumed steps get the rates of the full run."""
  return _cfg(steps, **{'optim.warmup_steps': 2, 'optim.decay_steps': 8, **kw})


@pytest.fixture(scope='module')
def uninterrupted_8_steps(tmp_path_factory):
  return jax.device_get(train(_resume_cfg(8), str(tmp_path_factory.mktemp('full')), mesh=mesh(2, 1, 4)))


def test_resume_on_another_mesh_equals_an_uninterrupted_run(tmp_path, uninterrupted_8_steps):
  """4 steps on mesh (data=2, tensor=4), checkpoint, restore on (data=8) and continue to 8 steps.

  The comparison is against an uninterrupted 8-step run on (data=2, tensor=4). Restoring itself is exact
  (checked bitwise below); the last 4 steps run on another mesh, whose reductions add in another order, so
  the final parameters agree to <= 1e-6 rather than bitwise.
  """
  full = uninterrupted_8_steps
  first = train(_resume_cfg(4), str(tmp_path / 'split'), mesh=mesh(2, 1, 4))
  restored, step = checkpointing.restore_params(str(tmp_path / 'split' / 'checkpoints'),
                                                _abstract_on(first.params, mesh(8, 1, 1)))
  assert step == 4
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, first.params)
  resumed = train(_resume_cfg(8, **{'mesh.data': 8, 'mesh.tensor': 1}), str(tmp_path / 'split'),
                  mesh=mesh(8, 1, 1))
  assert int(resumed.step) == 8
  assert resumed.params['embed'].sharding.mesh.shape == {'data': 8, 'fsdp': 1, 'tensor': 1}
  np.testing.assert_array_equal(jax.device_get(resumed.rng), full.rng)
  for name, tree in (('params', 'params'), ('optimizer state', 'opt_state')):
    diffs = jax.tree.map(lambda a, b: np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max(),
                         getattr(resumed, tree), getattr(full, tree))
    assert max(jax.tree.leaves(diffs)) <= 1e-6, name


def test_resume_on_the_same_mesh_is_bitwise(tmp_path, uninterrupted_8_steps):
  full = uninterrupted_8_steps
  train(_resume_cfg(4), str(tmp_path / 'split'), mesh=mesh(2, 1, 4))
  resumed = train(_resume_cfg(8), str(tmp_path / 'split'), mesh=mesh(2, 1, 4))
  for a, b in zip(jax.tree.leaves(jax.device_get((resumed.params, resumed.opt_state, resumed.rng))),
                  jax.tree.leaves(jax.device_get((full.params, full.opt_state, full.rng)))):
    np.testing.assert_array_equal(a, b)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
  """With equal token counts per micro-batch, accumulating 2 micro-batches equals one full batch."""
  from nlhf_jax.models import Transformer
  from nlhf_jax.objectives import sft_loss
  from nlhf_jax.training import init, optim, steps
  cfg = _cfg(1)
  tx = optim.make_optimizer(cfg.optim, 1)
  lr = optim.schedule(cfg.optim, 1)
  make = lambda rngs: Transformer(cfg.model, rngs)
  graphdef, state, _ = init.create_state(make, tx, mesh(1, 1, 1), seed=0)
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(4, 200, (8, 16)).astype(np.int32), 'mask': np.ones((8, 16), bool),
           'loss_mask': np.ones((8, 16), np.float32)}
  one = jax.jit(steps.make_train_step(graphdef, sft_loss, tx, lr, 1))(state, batch)
  two = jax.jit(steps.make_train_step(graphdef, sft_loss, tx, lr, 2))(state, batch)
  np.testing.assert_allclose(one[1]['loss'], two[1]['loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one[0].params), jax.tree.leaves(two[0].params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _abstract_on(params, m):
  from nlhf_jax.distributed import named
  specs = jax.tree.map(lambda x: x.sharding.spec, params)
  shard = named(m, specs)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shard)
