"""The objective table dispatches: an objective defined here alone (its row and its loss, each by its registry
call) trains through nlhf-train's loop with validation, and a row whose loss no module registers is refused."""
import json
import pathlib

import jax
import pytest

from experiments.configs import dpo
from nlhf_jax.config import ConfigError, from_config_dict, objectives
from nlhf_jax.config.objectives import LANGUAGE_MODEL, Objective
from nlhf_jax.objectives import registry
from nlhf_jax.trainer import loop, tasks

LIBRARY = pathlib.Path(__file__).parents[1] / 'nlhf_jax'
TOY = 'toy_hinge'  # a name no library file holds: the test defines it whole


def hinge(h, p, o):
  """A SLiC-style hinge on the implicit reward margin, expected over which response wins: the per-pair loss of an
  offline objective (registry.py's offline signature); 1 for every pair where pi = mu (h = 0)."""
  return p * jax.nn.relu(1.0 - o.tau * h) + (1.0 - p) * jax.nn.relu(1.0 + o.tau * h)


@pytest.fixture
def table(monkeypatch):
  """The table and the registry of losses, restored after the test."""
  monkeypatch.setattr(objectives, 'OBJECTIVES', dict(objectives.OBJECTIVES))
  monkeypatch.setattr(registry, 'LOSSES', dict(registry.LOSSES))


def test_a_toy_objective_defined_in_the_test_trains_through_the_loop(table, tmp_path, devices):
  objectives.register(Objective(TOY, 'offline', LANGUAGE_MODEL, 'pairs', loss=TOY))
  registry.register_loss(TOY, 'offline', hinge)
  c = dpo.offline_config('tiny', TOY)
  c.data.num_examples = 64
  c.train.update(num_steps=2, log_every=1, checkpoint_every=2, eval_every=2, eval_batches=1,
                 async_checkpointing=False)
  loop.train(from_config_dict(c, num_devices=jax.device_count()), str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [1, 2]
  # Step 1 starts at pi = mu, where the hinge is 1 for every pair: the row's loss is the one trained.
  assert rows[0]['loss'] == pytest.approx(1.0, abs=1e-5) and rows[0]['implicit_reward_margin'] == 0.0
  assert 'val/loss' in rows[1] and 'val/implicit_accuracy' in rows[1]
  holding = [str(p) for p in LIBRARY.rglob('*.py') if TOY in p.read_text()]
  assert not holding, holding  # no library file names it


def test_a_row_whose_loss_is_not_registered_is_refused(table):
  objectives.register(Objective('toy_unregistered', 'offline', LANGUAGE_MODEL, 'pairs', loss='nowhere'))
  with pytest.raises(ConfigError, match=r"config.train.objective='toy_unregistered' names the loss 'nowhere', which "
                     r'is not registered .*registered offline losses: dpo, ipo'):
    tasks.get_task('toy_unregistered')
  objectives.register(Objective('toy_mismatch', 'offline', LANGUAGE_MODEL, 'pairs', loss='nash_md_pg'))
  with pytest.raises(ConfigError, match=r"'toy_mismatch' is offline but names the online loss 'nash_md_pg'"):
    tasks.get_task('toy_mismatch')


def test_the_table_and_the_registry_refuse_a_name_twice(table):
  with pytest.raises(ValueError, match=r"the objective 'dpo' is in the table already"):
    objectives.register(Objective('dpo', 'offline', LANGUAGE_MODEL, 'pairs', loss='dpo'))
  with pytest.raises(ValueError, match=r"the loss 'dpo' is registered already"):
    registry.register_loss('dpo', 'offline', hinge)
  with pytest.raises(ValueError, match=r"the loss 'x' has the kind 'pairs'"):
    registry.register_loss('x', 'pairs', hinge)
  assert set(registry.names()) == {o.loss for o in objectives.OBJECTIVES.values()}  # every row's loss, no other
