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


def test_online_step_flops_count_every_pass():
  """The step benchmark's FLOP count: sampling + reference and policy (forward, backward) on [x, y] + judge."""
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.perf import forward_flops_per_token as fwd
  from nlhf_jax.perf import nash_md_step_flops as step_flops
  cfg = ModelConfig(vocab_size=100, d_model=8, num_layers=1, num_heads=2, head_dim=4, mlp_dim=16)
  b, lp, t = 2, 3, 2
  sampling = 3 * b * (lp * fwd(cfg, lp) + fwd(cfg, lp) + fwd(cfg, lp + 1))
  body = 4 * fwd(cfg, 4, False)
  head = 2 * 2 * 8 * 100
  judge = b * (lp * fwd(cfg, lp, False) + 2 * t * fwd(cfg, 5, False))
  assert step_flops(cfg, b, lp, t) == sampling + 4 * b * (body + head) + judge


def test_tabular_bench_prints(capsys):
  from nlhf_jax.tabular import bench
  bench.main(num_steps=200, n=5, batch=2)
  out = capsys.readouterr().out
  assert 'steps' in out and 'KL' in out
