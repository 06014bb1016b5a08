"""`make bench` smoke tests at toy sizes: every benchmark runs and prints its figures, and with --json ends with
one JSON object of them (no time is asserted)."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env

REPO = pathlib.Path(__file__).parents[1]


def _last_json(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])


def _check_figures(figures: dict, keys: set, non_negative: tuple = ()) -> None:
  """Exactly `keys`, each a finite number, positive (or >= 0 for the names ending in `non_negative`)."""
  assert set(figures) == keys, set(figures) ^ keys
  for k, v in figures.items():
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (k, v)
    assert v >= 0 if k.endswith(non_negative) else v > 0, (k, v)


@pytest.mark.slow
def test_sft_bench_prints_every_figure():
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.bench', '--presets=tiny:2x16', '--iters=1', '--json'],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=subprocess_env(None))
  assert out.returncode == 0, out.stderr[-3000:]
  line = [x for x in out.stdout.splitlines() if x.strip().startswith('tiny')][0]
  for figure in ('batch 2 x 16', 'tok/s', 'GFLOP/step', 'MFU', 'GFLOP/s (float32 matmul, measured)', 'peak'):
    assert figure in line, line
  figures = _last_json(out.stdout)
  assert list(figures) == ['tiny:2x16']
  _check_figures(figures['tiny:2x16'], {'params', 'batch', 'seq_len', 'devices', 'step_s', 'tokens_per_s',
                                        'step_flop_count', 'step_flops', 'peak_flops', 'step_fraction_of_peak',
                                        'compiled_bytes', 'peak_bytes'})
  tiny = figures['tiny:2x16']
  assert (tiny['batch'], tiny['seq_len']) == (2, 16)
  assert math.isclose(tiny['step_fraction_of_peak'], tiny['step_flops'] / tiny['peak_flops'])


def test_bench_preset_shapes():
  from nlhf_jax.cli.bench import parse_preset
  assert parse_preset('125m:4x128', 8, 256) == ('125m', 4, 128)
  assert parse_preset('small', 8, 256) == ('small', 8, 256)


def test_online_bench_flops_count_every_pass_as_computed():
  """The step benchmark's FLOP count is perf.step_flops of its config (the count nlhf-compile uses): sampling (each
  decoding model prefills a prompt once over its slots, logits at its last position; then t - 1 one-token steps
  over the slots written, lp + t - 1 in one loop, the policy for y and y', the reference for y'), the reference
  and the policy (forward, backward) on [x, y] with logits at the response positions, and the reward-model judge
  on x, y and y'."""
  from nlhf_jax import perf
  from nlhf_jax.cli import online_bench
  cfg = online_bench.online_config('tiny', batch=8, new_tokens=4, prompt_len=8)
  m, fwd, b, lp, t = cfg.model, perf.forward_flops_per_token, 8, 8, 4
  head = fwd(m, 0) - fwd(m, 0, False)
  sampling = b * (2 * (lp * fwd(m, lp, False) + head) + 3 * (t - 1) * fwd(m, lp + t - 1))
  sequence = b * ((lp + t - 1) * fwd(m, lp + t - 1, False) + t * head)
  judge = b * (lp * fwd(m, lp, False) + 2 * t * fwd(m, lp + t, False))
  assert perf.step_flops(cfg) == sampling + 4 * sequence + judge


def test_tabular_bench_prints(capsys):
  from nlhf_jax.cli import tabular_bench as bench
  bench.main(num_steps=200, n=5, batch=2)
  out = capsys.readouterr().out
  assert 'steps' in out and 'KL' in out


def test_tabular_bench_json(capsys):
  from nlhf_jax.cli import tabular_bench as bench
  bench.cli(['--num_steps=200', '--actions=5', '--games=2', '--json'])
  out = capsys.readouterr().out
  assert 'KL' in out.splitlines()[-2]
  per_dtype = ('one_game_s', 'step_s', 'games_s', 'final_kl', 'final_exploitability')
  keys = {'num_steps', 'actions', 'games', 'tau'} | {f'{d}_{k}' for d in ('float64', 'float32') for k in per_dtype}
  figures = _last_json(out)
  _check_figures(figures, keys, non_negative=('final_kl', 'final_exploitability'))
  assert (figures['num_steps'], figures['actions'], figures['games']) == (200, 5, 2)


def test_sampling_bench_json(capsys):
  """Toy sizes, in process, float32 and bfloat16: the human-readable lines, then every figure, each dtype's pair
  rate against the square matmul peak of that dtype measured in the same run."""
  from nlhf_jax.cli import sampling_bench as bench
  returned = bench.main(['--preset=tiny', '--batch=2', '--new=3', '--prompt=6', '--min_prompt=3', '--iters=1',
                         '--compute_dtypes=float32,bfloat16', '--json'])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[1].startswith('policy only') and lines[2].startswith('policy + mixture pair')
  assert lines[3].startswith('pair: ') and '1024^3' in lines[3] and 'float32 matmul rates' in lines[3]
  assert 'bfloat16 compute' in lines[4] and 'bfloat16 matmul rates' in lines[7]
  assert lines[8].startswith('  bfloat16 pair / float32 pair') and lines[9].startswith('peak memory')
  figures = json.loads(lines[-1])
  assert figures == returned
  timing = ('s', 'tokens_per_s', 'first_call_s', 'compile_s')
  per_dtype = {f'{w}_{k}' for w in ('policy', 'pair') for k in timing} | {
      'pair_flop_count', 'pair_flops', 'decode_matmul_flops', 'peak_flops', 'pair_fraction_of_peak'}
  keys = per_dtype | {f'{k}_bfloat16' for k in per_dtype} | {'peak_bytes'}
  _check_figures(figures, keys, non_negative=('compile_s', 'compile_s_bfloat16'))
  for suffix in ('', '_bfloat16'):
    assert math.isclose(figures[f'pair_fraction_of_peak{suffix}'],
                        figures[f'pair_flops{suffix}'] / figures[f'peak_flops{suffix}'])
    rate = figures[f'pair_flop_count{suffix}'] / figures[f'pair_s{suffix}']
    assert math.isclose(figures[f'pair_flops{suffix}'], rate)
  with pytest.raises(SystemExit):
    bench.parse_args(['--compute_dtypes=float16'])
  assert "'float16' is not a compute dtype" in capsys.readouterr().err


@pytest.mark.slow
def test_online_bench_times_float32_and_bfloat16_in_one_run():
  """`python -m nlhf_jax.cli.online_bench` at a toy size: both compute dtypes timed in the same process, each against
  its own matmul peak measured there, and bfloat16's log-probabilities compared with float32's on the same
  samples (close, but not equal: the comparison is real)."""
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.online_bench', '--preset=tiny', '--batch_size=2',
                        '--new_tokens=4', '--iters=1', '--json'], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env=subprocess_env(None))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'bfloat16 step / float32 step' in out.stdout
  f = _last_json(out.stdout)
  for key in ('step_s', 'mfu', 'peak_flops', 'step_s_bfloat16', 'mfu_bfloat16', 'peak_bfloat16'):
    assert math.isfinite(f[key]) and f[key] > 0, key
  assert f['compute_dtype'] == 'float32' and f['logprob_abs_diff_vs_float32'] is None
  assert 0 < f['logprob_abs_diff_vs_float32_bfloat16'] < 0.1


@pytest.mark.slow
def test_accelerator_bench_runs_on_small_shapes_and_refuses_a_cpu_by_default():
  """`make bench-gpu`'s command at toy sizes with --allow_cpu (the step as training compiles it, pair sampling
  against the bandwidth bound, peak memory); without --allow_cpu on a CPU it stops with one line saying why."""
  cmd = [sys.executable, '-m', 'nlhf_jax.cli.accelerator_bench', '--preset=tiny', '--step_batch=2', '--step_new=4',
         '--batch=4', '--new=4', '--prompt=8', '--peak_n=256', '--copy_mib=16', '--iters=1', '--json']
  refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, env=subprocess_env(1))
  assert refused.returncode != 0 and 'JAX sees no accelerator' in refused.stderr and '--allow_cpu' in refused.stderr
  out = subprocess.run(cmd + ['--allow_cpu'], capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=subprocess_env(1))
  assert out.returncode == 0, out.stderr[-3000:]
  for line in ('1. Nash-MD-PG step', '2. pair sampling', '3. peak memory'):
    assert line in out.stdout, line
  f = _last_json(out.stdout)
  device, preset = f.pop('device'), f.pop('preset')
  assert device.startswith('cpu') and preset == 'tiny'
  _check_figures(f, {'step_s', 'mfu', 'peak_flops', 'step_flops', 'pair_s', 'sampled_tokens_per_s',
                     'bandwidth_bytes_per_s', 'decode_bytes_per_step', 'weight_bytes', 'bound_tokens_per_s',
                     'fraction_of_bound', 'peak_bytes'})
  assert math.isclose(f['fraction_of_bound'], f['sampled_tokens_per_s'] / f['bound_tokens_per_s'])
  assert math.isclose(f['bound_tokens_per_s'], 2 * 4 * f['bandwidth_bytes_per_s'] / f['decode_bytes_per_step'])


def test_decode_bytes_per_step_counts_both_models_and_their_caches():
  from nlhf_jax.config import ModelConfig
  from nlhf_jax.perf import decode_bytes_per_step
  cfg = ModelConfig(vocab_size=8, d_model=4, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=5, mlp_dim=8)
  # weights 1000 B each; caches: 2 (k, v) x 3 layers x 2 kv heads x 5 x 2 bytes x 3B rows x (prompt + (new-1)/2)
  assert decode_bytes_per_step(cfg, 1000, batch=2, prompt=10, new=5) == 2 * 1000 + 2 * 3 * 2 * 5 * 2 * 6 * 12
