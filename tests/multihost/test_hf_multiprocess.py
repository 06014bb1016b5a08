"""nlhf-import and nlhf-export on two processes x 4 CPU devices: each process places only its devices' slices,
process 0 writes the files, and the exported tensors are the original ones, bitwise."""
import shutil
import sys

import numpy as np

from multihost import launch
from nlhf_jax.models.hf.safetensors import SafetensorsReader
from tests.models import hf_models


def _two_processes(module: str, tmp_path, name: str, *args: str) -> list[str]:
  port = launch.free_port()
  procs, logs = [], []
  for i in range(2):
    cmd = [shutil.which('timeout'), '-s', 'KILL', str(launch.KILL_AFTER_S), sys.executable, '-m', module,
           *args, f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}']
    logs.append(tmp_path / f'{name}.{i}.log')
    procs.append(launch.start(cmd, 4, logs[-1]))
  try:
    return launch.finish_all(procs, logs)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def test_two_process_import_then_export_gives_the_tensors_back(tmp_path):
  tensors = hf_models.write_checkpoint(tmp_path / 'hf', max_shard_bytes=20_000)
  run, out = tmp_path / 'run', tmp_path / 'out'
  _two_processes('nlhf_jax.cli.hf_import', tmp_path, 'import', f'--hf_dir={tmp_path / "hf"}',
                 f'--workdir={run}', '--mesh=data=2,fsdp=4')
  assert (run / 'config.json').exists() and (run / 'checkpoints' / '0').is_dir()
  _two_processes('nlhf_jax.cli.export', tmp_path, 'export', f'--workdir={run}', f'--out={out}',
                 '--max_shard_gb=0.00002')
  reader = SafetensorsReader(str(out))
  assert sorted(reader.names()) == sorted(tensors)
  for name, value in tensors.items():
    np.testing.assert_array_equal(np.asarray(reader.array(name)), value)
