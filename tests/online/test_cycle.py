"""A deterministic three-way style cycle (A beats B, B beats C, C beats A): the pairwise preference model learns
it, a Bradley-Terry reward model cannot (no scalar orders a cycle: at most 2 of the 3 pair types)."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from experiments.configs import preference_model
from helpers import subprocess_env
from multihost import launch
from nlhf_jax.config import from_config_dict
from nlhf_jax.data import pipelines, tfds_builders
from nlhf_jax.objectives.pairwise import evaluate_pairs
from nlhf_jax.trainer.tasks import get_task
from xla_cpu import xla_flags

REPO = pathlib.Path(__file__).parents[2]

WORDS = ('cat', 'sun', 'owl', 'fig', 'elm', 'bee', 'jay', 'ram', 'yak', 'cod', 'gnu', 'hen')
STYLES = (str.lower, str.upper, str.title)  # A: 'cat sun', B: 'CAT SUN', C: 'Cat Sun'


def cycle_records(n, seed):
  """n pairs and the pair of styles of each (a frozenset: which edge of the cycle it asks about)."""
  rng = np.random.default_rng(seed)
  out, edges = [], []
  for _ in range(n):
    prompt = 'doc: ' + ' '.join(rng.choice(WORDS, 3))
    text = lambda: ' '.join(rng.choice(WORDS, 2))
    s_a, offset = int(rng.integers(3)), int(rng.integers(1, 3))
    s_b = (s_a + offset) % 3
    # style s beats style s + 1 (mod 3)
    out.append({'prompt': prompt, 'response_a': STYLES[s_a](text()), 'response_b': STYLES[s_b](text()),
                'preference': 1.0 if offset == 1 else 0.0})
    edges.append(frozenset((s_a, s_b)))
  return out, edges


def bradley_terry_ceiling(edges) -> float:
  """The best accuracy any Bradley-Terry model can have on pairs whose label depends on the styles alone: a
  scalar reward orders the three styles on a line, so it gets at least one edge of the cycle wrong on every one of
  its pairs; at best it is right on all the pairs of the two most frequent edges."""
  counts = sorted(edges.count(e) for e in set(edges))
  return 1.0 - counts[0] / len(edges) if len(counts) == 3 else 1.0


def _train(objective: str, steps: int, data_dir: str, workdir):
  """`nlhf-train` of the pairwise objective on the style cycle (one device): hundreds of steps of a tiny model, so
  the process compiles with LLVM at -O1 (tests/xla_cpu.py); the validated config it ran."""
  flags = {'data.source': 'tfds', 'data.name': 'style_cycle', 'data.data_dir': data_dir, 'data.prompt_len': 24,
           'data.response_len': 12, 'train.num_steps': steps, 'train.batch_size': 32, 'train.checkpoint_every': steps,
           'train.log_every': 50, 'optim.learning_rate': 3e-3, 'optim.warmup_steps': 20,
           'mesh.data': 1}  # learning, not sharding, is under test: one device compiles and steps fastest
  config = REPO / 'experiments' / 'configs' / f'{objective}.py'
  env = dict(subprocess_env(None), XLA_FLAGS=xla_flags(None, llvm_level=1))
  out = subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.train', f'--config={config}:tiny', f'--workdir={workdir}',
                        *(f'--config.{k}={v}' for k, v in flags.items())], capture_output=True, text=True,
                       timeout=900, cwd=REPO, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  c = preference_model.pairwise_config('tiny', objective)
  for key, value in flags.items():
    section, name = key.split('.')
    c[section][name] = value
  return from_config_dict(c, 1)


@pytest.mark.slow
def test_preference_model_learns_a_cycle_that_bradley_terry_cannot(tmp_path):
  data_dir = str(tmp_path / 'data')
  records, edges = cycle_records(1200, 0)
  tfds_builders.build(records, 'pairs', 'style_cycle', data_dir, validation_fraction=0.25)
  held_out_edges = [edges[i] for i in tfds_builders.split_indices(len(records), 0.25, 0)['validation']]
  ceiling = bradley_terry_ceiling(held_out_edges)
  accuracy = {}
  for objective in ('preference_model', 'reward_model'):
    # The preference model sits on a plateau (loss log 2) until it tells the styles apart, which happens after
    # 100 to 250 steps depending on the seed and on the processor's float32 rounding; 300 steps leave room.
    steps = 300 if objective == 'preference_model' else 250
    cfg = _train(objective, steps, data_dir, tmp_path / objective)
    params, step = launch.read_params(tmp_path / objective, cfg)
    assert step == steps
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: get_task(objective).make_model(cfg)(nnx.Rngs(0))))
    held_out = pipelines.make_eval_iterator(cfg.data, 'pairs', 32, slice(None))
    metrics = evaluate_pairs(graphdef, params, held_out)
    assert metrics['num_pairs'] == 300
    assert metrics['antisymmetry_error'] <= 1e-6
    accuracy[objective] = metrics['accuracy']
  print('held-out accuracy', accuracy, 'Bradley-Terry ceiling', ceiling)
  # The bounds come from the claim, not from one machine's figures. The preference model learns the cycle: its
  # errors are at most half of the pairs of the rarest edge, so it is right on at least half of the pairs of every
  # edge, which no scalar reward is; that is accuracy (1 + ceiling) / 2, about 0.84 (with 300 steps it reached
  # 0.99-1.0 over four seeds on an AMD EPYC host; 250 steps gave 0.93 with seed 0 there). The Bradley-Terry model
  # cannot: it stays under the ceiling, give or take two standard errors of a held-out accuracy that the content
  # words (random, independent of the label) could make lucky.
  assert accuracy['preference_model'] >= (1.0 + ceiling) / 2, (accuracy, ceiling)
  assert accuracy['reward_model'] <= ceiling + 2 * np.sqrt(0.25 / len(held_out_edges)), (accuracy, ceiling)
