"""`make bench` smoke tests at toy sizes: every benchmark runs and prints its figures (no time is asserted)."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]


@pytest.mark.slow
def test_sft_bench_prints_every_figure():
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.bench', '--presets=tiny:2x16', '--iters=1'],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  assert out.returncode == 0, out.stderr[-3000:]
  line = [x for x in out.stdout.splitlines() if x.strip().startswith('tiny')][0]
  for figure in ('batch 2 x 16', 'tok/s', 'GFLOP/step', 'MFU', 'GFLOP/s (float32 matmul, measured)', 'peak'):
    assert figure in line, line


def test_bench_preset_shapes():
  from nlhf_jax.bench import parse_preset
  assert parse_preset('125m:4x128', 8, 256) == ('125m', 4, 128)
  assert parse_preset('small', 8, 256) == ('small', 8, 256)


@pytest.mark.slow
def test_online_step_bench_prints_every_figure():
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.online.bench', '--preset=tiny', '--batch_size=2',
                        '--new_tokens=4', '--iters=1'], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  assert out.returncode == 0, out.stderr[-3000:]
  line = out.stdout.strip().splitlines()[-1]
  for figure in ('step', 'sampled tok/s', 'GFLOP/step', 'MFU', 'GFLOP/s (float32 matmul, measured)', 'peak'):
    assert figure in line, line


def test_tabular_bench_prints(capsys):
  from nlhf_jax.tabular import bench
  bench.main(num_steps=200, n=5, batch=2)
  out = capsys.readouterr().out
  assert 'steps' in out and 'KL' in out
