"""Launching `nlhf-train` subprocesses for the multi-process and fault-tolerance tests.

Every subprocess runs under `timeout -s KILL`, so that a hung collective cannot stall the test run.
"""
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from xla_cpu import xla_flags

REPO = pathlib.Path(__file__).parents[2]
KILL_AFTER_S = 300


def env(devices: int) -> dict:
  keep = ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')
  base = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_')) or k in keep}
  return dict(base, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(devices),
              JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', PYTHONUNBUFFERED='1')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def train_cmd(config: str, workdir, *flags, kill_after: int = KILL_AFTER_S) -> list[str]:
  timeout = shutil.which('timeout')
  assert timeout, 'the tests need coreutils `timeout`'
  return [timeout, '-s', 'KILL', str(kill_after), sys.executable, '-m', 'nlhf_jax.cli.train', f'--config={config}',
          f'--workdir={workdir}', *flags]


def start(cmd: list[str], devices: int, log_path) -> subprocess.Popen:
  log = open(log_path, 'w')
  return subprocess.Popen(cmd, cwd=REPO, env=env(devices), stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log_path, timeout: float = KILL_AFTER_S + 10) -> str:
  return finish_all([proc], [log_path], timeout)[0]


def _first_errors(text: str, limit: int = 12) -> str:
  """The lines where a failing process first said what went wrong (a log tail can hide them behind a stack)."""
  marks = ('Error', 'error', 'Check failed', 'Terminating', 'Traceback', 'timed out', 'DEADLINE', 'UNAVAILABLE')
  hits = [line for line in text.splitlines() if any(m in line for m in marks)]
  return '\n'.join(hits[:limit])


def finish_all(procs: list[subprocess.Popen], log_paths, timeout: float = KILL_AFTER_S + 10) -> list[str]:
  """Waits for every process (all of them, so that a failure reports each one's log), then asserts they exited 0."""
  for proc in procs:
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  texts = [pathlib.Path(p).read_text() for p in log_paths]
  failed = [(i, proc.returncode, text) for i, (proc, text) in enumerate(zip(procs, texts)) if proc.returncode]
  report = '\n\n'.join(f'process {i}: exit status {rc}\nfirst error lines:\n{_first_errors(text)}\n'
                         f'log tail:\n{text[-3000:]}' for i, rc, text in failed)
  assert not failed, report
  return texts


def params_target(cfg):
  """Restore target for a run's parameters: every array whole on the first device."""
  from nlhf_jax.training import init
  from nlhf_jax.trainer.tasks import get_task
  _, abstract = init.abstract_model(get_task(cfg.train.objective).make_model(cfg))
  mesh = jax.sharding.Mesh(jax.devices()[:1], ('x',))
  shard = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard), nnx.to_pure_dict(abstract))


def read_params(workdir, cfg, step=None):
  from nlhf_jax.training import checkpointing
  params, got = checkpointing.restore_params(str(pathlib.Path(workdir) / 'checkpoints'), params_target(cfg), step)
  return jax.device_get(params), got


def checkpoint_steps(workdir) -> list[int]:
  d = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []
