"""Eight fake CPU devices for every test, so that sharded code paths run without accelerators.

One persistent XLA compilation cache serves the whole session (both pytest-xdist workers inherit it, and so do
the subprocesses that tests launch with tests.helpers.subprocess_env or tests.multihost.launch.env): restarted and
repeated runs of the same program (kill-and-resume tests, several processes) then compile it once.

Training that runs inside the test process does not draw RUN/curves.png (matplotlib takes about a second a run, and
the suite trains a few hundred times); the commands that tests launch as subprocesses draw them as users see them
(tests/test_own_data.py checks five runs' curves), tests/test_plot_outputs.py tests the drawing itself, and a test that
checks training's own drawing asks for the `training_draws_curves` fixture.
"""
import atexit
import contextlib
import os
import shutil
import tempfile

from xla_cpu import xla_flags  # noqa: E402  (tests/xla_cpu.py: the fast-compiling XLA:CPU flags)

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags(8)).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # the first process of the session makes it and removes it
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='nlhf_jax_xla_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from nlhf_jax import logs  # noqa: E402

logs.setup()


def _skip_curves(workdir):
  del workdir


@pytest.fixture(scope='session', autouse=True)
def _no_curves_in_process():
  from nlhf_jax.trainer import loop
  draw, loop._write_curves = loop._write_curves, _skip_curves
  yield draw
  loop._write_curves = draw


@pytest.fixture(scope='session')
def training_draws_curves(_no_curves_in_process):
  """A context manager for training whose RUN/curves.png a test checks: training draws it inside."""
  @contextlib.contextmanager
  def drawing():
    from nlhf_jax.trainer import loop
    loop._write_curves = _no_curves_in_process
    try:
      yield
    finally:
      loop._write_curves = _skip_curves
  return drawing


@pytest.fixture(scope='session')
def devices():
  assert jax.device_count() == 8, 'tests expect 8 fake CPU devices (XLA_FLAGS set before jax was imported)'
  return jax.devices()


@pytest.fixture(scope='session')
def mini_pipeline(tmp_path_factory, devices):
  """The miniature pipeline (tests/pipeline/mini.py), run once per session: interrupted in sft, resumed."""
  from tests.pipeline.mini import run_interrupted_then_resumed
  return run_interrupted_then_resumed(str(tmp_path_factory.mktemp('pipeline')))

