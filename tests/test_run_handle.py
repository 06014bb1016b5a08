"""One home for a run (training/run.py, the rule of config/runs.py): the precedence of the reference, the warm
start and the LoRA base in every case, as the trainer and the restores apply it; a run's config read once per
handle; an imported run and a trained run read alike."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import dpo, nash_md
from helpers import mesh
from nlhf_jax.config import from_config_dict, runs
from nlhf_jax.interop.importer import import_run
from nlhf_jax.models import Transformer
from nlhf_jax.trainer import tasks
from nlhf_jax.training import checkpointing, optim
from nlhf_jax.training import run as run_module
from nlhf_jax.training.run import Run
from nlhf_jax.training.state import TrainState
from tests.models import hf_models

I, R, S = '/runs/init', '/runs/reference', '/runs/stray'  # S: a reference of the other kind, never read


def _values(objective: str, init: str = '', online: str = '', offline: str = '') -> dict:
  return {'init_checkpoint': init, 'train': {'objective': objective},
          'online': {'reference_checkpoint': online}, 'offline': {'reference_checkpoint': offline}}


def _rule(values) -> tuple[str, str, str]:
  return runs.reference(values)[1], runs.warm_start(values)[1], runs.lora_base(values)[1]


@pytest.mark.parametrize('objective,section', [('nash_md', 'online'), ('dpo', 'offline')])
def test_the_reference_given_is_mu_and_the_warm_start_unless_init_names_another(objective, section):
  assert _rule(_values(objective, **{section: R})) == (R, R, R)
  assert _rule(_values(objective, init=I, **{section: R})) == (R, I, R)
  assert runs.reference(_values(objective, **{section: R}))[0] == f'config.{section}.reference_checkpoint'


@pytest.mark.parametrize('objective', ['nash_md', 'dpo'])
def test_a_warm_start_alone_is_also_mu(objective):
  assert _rule(_values(objective, init=I)) == (I, I, I)
  assert runs.reference(_values(objective, init=I))[0] == 'config.init_checkpoint'


def test_the_lora_base_of_sft_is_its_warm_start_and_of_a_policy_mu():
  assert _rule(_values('sft', init=I)) == (I, I, I)
  assert runs.lora_base(_values('nash_md', init=R, online=R)) == ('config.online.reference_checkpoint', R)
  assert runs.lora_base(_values('dpo', offline=R)) == ('config.offline.reference_checkpoint', R)


@pytest.mark.parametrize('objective', ['sft', 'nash_md', 'dpo', 'preference_model', 'import', 'unknown'])
def test_no_run_named_is_none(objective):
  assert _rule(_values(objective)) == ('', '', '')
  assert runs.source_runs(_values(objective)) == []


def test_a_reference_of_the_other_kind_is_never_read():
  """An offline run's stray online.reference_checkpoint (and the reverse) names neither mu nor the LoRA base;
  the LoRA restore once took it before the offline reference."""
  assert _rule(_values('dpo', offline=R, online=S)) == (R, R, R)
  assert _rule(_values('nash_md', online=R, offline=S)) == (R, R, R)
  assert _rule(_values('sft', online=S, offline=S)) == ('', '', '')
  assert runs.source_runs(_values('dpo', init=I, offline=R, online=S)) == [I, R]


def test_from_run_reads_the_warm_start():
  assert runs._source(_values('nash_md', init=I, online=R)) == ('config.init_checkpoint', I)
  assert runs._source(_values('nash_md', online=R)) == ('config.online.reference_checkpoint', R)
  with pytest.raises(runs.ConfigError, match="'from_run' .* needs a run"):
    runs._source(_values('sft', online=S))


def _online(**online):
  c = nash_md.get_config('tiny')
  c.online.update(**online)
  c.mesh.update(data=1, fsdp=1, tensor=1)
  return c


@pytest.mark.parametrize('init,reference,mu', [(I, '', I), (I, R, R), ('', R, R), ('', '', '')])
def test_the_trainer_reads_mu_and_starts_from_the_warm_start_by_the_rule(init, reference, mu, devices):
  """The online step's frozen reference is restored from mu (the warm start when no reference is named: it was
  the seed's random initialisation even when the policy started from config.init_checkpoint)."""
  c = _online(reference_checkpoint=reference)
  c.init_checkpoint = init
  cfg = from_config_dict(c, 1)
  task, tx = tasks.get_task('nash_md'), optim.make_optimizer(cfg.optim, 2)
  assert tasks.reference_run(cfg, task) == mu
  assert runs.warm_start(cfg)[1] == (init or reference)
  run = tasks.setup(cfg, task, tx, mesh())
  plan = tasks.plan_step(cfg, task, run, tx, optim.schedule(cfg.optim, 2), mesh(), lambda: None)
  what = plan.frozen['reference'].what
  assert what == (f'restoring the reference from {mu}' if mu else
                  "initialising the reference (the policy's initial parameters)")


def test_the_offline_trainer_agrees():
  c = dpo.get_config('tiny')
  c.init_checkpoint = I
  cfg = from_config_dict(c, jax.device_count())
  assert tasks.reference_run(cfg, tasks.get_task('dpo')) == I
  c.offline.reference_checkpoint = R
  cfg = from_config_dict(c, jax.device_count())
  assert tasks.reference_run(cfg, tasks.get_task('dpo')) == R and runs.warm_start(cfg)[1] == I


# ----------------------------------------------------------------------------------------- runs on disk


@pytest.fixture(scope='module')
def imported(tmp_path_factory, devices):
  """An nlhf-import run of the small Llama (no tokenizer files: the run records none)."""
  root = tmp_path_factory.mktemp('run_handle')
  hf_models.write_checkpoint(root / 'hf')
  return import_run(str(root / 'hf'), str(root / 'imported'), mesh=mesh())


@pytest.fixture(scope='module')
def trained(imported, tmp_path_factory):
  """A run laid out as nlhf-train leaves it: RUN/config.json and a full train state at step 3 (the imported
  parameters, a small optimizer state), whose config names the import as its warm start."""
  path = str(tmp_path_factory.mktemp('run_handle') / 'trained')
  config = dict(Run(imported).config, init_checkpoint=imported, train={'objective': 'sft', 'num_steps': 3})
  params, _ = checkpointing.restore_params(Run(imported).checkpoints, _target(Run(imported)))
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state={'count': jnp.zeros((), jnp.int32)},
                     rng=jnp.zeros((2,), jnp.uint32), extras={})
  ckpt = checkpointing.Checkpointer(os.path.join(path, 'checkpoints'), async_save=False)
  ckpt.save(state, {'config': config}, force=True)
  ckpt.close()
  checkpointing.write_run_config(path, config)
  return path


def _target(run: Run):
  _, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(run.model_config, nnx.Rngs(0))))
  return checkpointing.params_target(abstract, mesh())


def test_the_importer_writes_what_the_checkpointer_writes(imported, trained):
  """The import is a params-only step of Checkpointer.save_params: the items params and meta, which a trained
  run's step also has (with its training state beside them)."""
  step0 = set(os.listdir(os.path.join(imported, 'checkpoints', '0')))
  step3 = set(os.listdir(os.path.join(trained, 'checkpoints', '3')))
  assert {'params', 'meta'} <= step0 and not {'opt_state', 'train'} & step0
  assert step0 <= step3 and {'opt_state', 'train'} <= step3


def test_an_imported_and_a_trained_run_read_alike(imported, trained):
  a, b = Run(imported), Run(trained)
  assert (a.objective, b.objective) == ('import', 'sft') and a.imported and not b.imported
  assert a.family == b.family == 'language_model'
  assert a.model_config == b.model_config and a.model_config.d_model == hf_models.SMALL_LLAMA.d_model
  assert a.tokenizer == b.tokenizer == ''  # the import found no tokenizer files
  assert (a.latest_step(), b.latest_step()) == (0, 3)
  assert (a.warm_start, b.warm_start, b.reference, b.sources) == ('', imported, imported, [imported])
  for run in (a, b):  # RUN/config.json and the newest checkpoint's meta say the same; so does RUN/checkpoints
    assert run.config == Run(run.checkpoints).config == run.config_at(run.latest_step())
    assert Run(run.checkpoints).root == run.root
  pa, _ = checkpointing.restore_params(a.checkpoints, _target(a))
  pb, _ = checkpointing.restore_params(b.checkpoints, _target(b))
  jax.tree.map(np.testing.assert_array_equal, pa, pb)
  _, _, model_cfg = checkpointing.frozen_target(b, Transformer, mesh())
  assert model_cfg == b.model_config


def test_the_config_is_read_once_per_handle(imported, trained, monkeypatch):
  reads = []
  real_json, real_meta = runs.read_saved_config, run_module.read_meta
  monkeypatch.setattr(runs, 'read_saved_config', lambda *a: reads.append('json') or real_json(*a))
  monkeypatch.setattr(run_module, 'read_meta', lambda *a: reads.append('meta') or real_meta(*a))
  run = Run(trained)
  for _ in range(3):
    run.config, run.objective, run.family, run.model_config, run.tokenizer, run.reference, run.sources
  assert reads == ['json']
  alone = Run(Run(imported).checkpoints)  # a checkpoints/ folder given alone: its run's config.json
  alone.config, alone.family, alone.model_config
  assert reads == ['json', 'json']


def test_a_run_without_config_json_reads_its_newest_checkpoint(trained, tmp_path):
  """Runs written before RUN/config.json existed: the meta of the newest checkpoint is their config."""
  old = tmp_path / 'old'
  shutil.copytree(os.path.join(trained, 'checkpoints'), old / 'checkpoints')
  assert Run(str(old)).config == Run(trained).config


def test_missing_runs_name_the_key(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'config.init_checkpoint=.*nowhere: checkpoint path .* does not '):
    Run(str(tmp_path / 'nowhere'), 'config.init_checkpoint').config
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match=r'--workdir=.*empty: no checkpoint in'):
    Run(str(tmp_path / 'empty'), '--workdir').require_checkpoint()

