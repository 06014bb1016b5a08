"""Where a process's launch settings come from: flags over the environment over the config."""
from nlhf_jax.config import DistributedConfig
from nlhf_jax.distributed import resolve_launch

ENV = {'JAX_COORDINATOR_ADDRESS': 'envhost:1', 'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}


def test_nothing_given_means_a_single_process():
  assert not resolve_launch(DistributedConfig(), {}, environ={}).initialize


def test_initialize_alone_leaves_detection_to_jax():
  got = resolve_launch(DistributedConfig(initialize=True), {}, environ={})
  assert got == DistributedConfig(initialize=True, coordinator_address='', num_processes=0, process_id=-1)


def test_environment_overrides_the_config_and_implies_initialize():
  cfg = DistributedConfig(coordinator_address='cfghost:2', num_processes=2, process_id=0)
  got = resolve_launch(cfg, {'coordinator_address': None, 'num_processes': None, 'process_id': None}, environ=ENV)
  assert (got.initialize, got.coordinator_address, got.num_processes, got.process_id) == (True, 'envhost:1', 4, 3)


def test_flags_override_the_environment_field_by_field():
  got = resolve_launch(DistributedConfig(), {'process_id': 1, 'num_processes': None}, environ=ENV)
  assert (got.coordinator_address, got.num_processes, got.process_id) == ('envhost:1', 4, 1)


def test_config_fields_alone_imply_initialize():
  got = resolve_launch(DistributedConfig(coordinator_address='cfghost:2', num_processes=2, process_id=1), {},
                       environ={})
  assert got.initialize and got.coordinator_address == 'cfghost:2'
