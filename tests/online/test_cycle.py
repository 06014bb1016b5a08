"""A deterministic three-way style cycle (A beats B, B beats C, C beats A): the pairwise preference model learns
it, a Bradley-Terry reward model cannot (no scalar orders a cycle: at most 2 of the 3 pair types)."""
import numpy as np
import pytest

from helpers import mesh
from experiments.configs import preference_model
from nlhf_jax.config import from_config_dict
from nlhf_jax.data import pipelines, tfds_builders
from nlhf_jax.objectives.pairwise import evaluate_pairs
from nlhf_jax.trainer import loop

WORDS = ('cat', 'sun', 'owl', 'fig', 'elm', 'bee', 'jay', 'ram', 'yak', 'cod', 'gnu', 'hen')
STYLES = (str.lower, str.upper, str.title)  # A: 'cat sun', B: 'CAT SUN', C: 'Cat Sun'


def cycle_records(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    prompt = 'doc: ' + ' '.join(rng.choice(WORDS, 3))
    text = lambda: ' '.join(rng.choice(WORDS, 2))
    s_a, offset = int(rng.integers(3)), int(rng.integers(1, 3))
    s_b = (s_a + offset) % 3
    # style s beats style s + 1 (mod 3)
    out.append({'prompt': prompt, 'response_a': STYLES[s_a](text()), 'response_b': STYLES[s_b](text()),
                'preference': 1.0 if offset == 1 else 0.0})
  return out


@pytest.mark.slow
def test_preference_model_learns_a_cycle_that_bradley_terry_cannot(tmp_path):
  data_dir = str(tmp_path / 'data')
  tfds_builders.build(cycle_records(1200, 0), 'pairs', 'style_cycle', data_dir, validation_fraction=0.25)
  accuracy = {}
  for objective in ('preference_model', 'reward_model'):
    c = preference_model.pairwise_config('tiny', objective)
    c.data.update(source='tfds', name='style_cycle', data_dir=data_dir, prompt_len=24, response_len=12)
    c.train.update(num_steps=250, batch_size=32, checkpoint_every=1000, log_every=50)
    c.optim.update(learning_rate=3e-3, warmup_steps=20)
    c.mesh.update(data=1)  # learning, not sharding, is under test: one device compiles and steps fastest
    cfg = from_config_dict(c, 1)
    state = loop.train(cfg, str(tmp_path / objective), mesh(data=1))
    from flax import nnx
    from nlhf_jax.trainer.tasks import get_task
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: get_task(objective).make_model(cfg)(nnx.Rngs(0))))
    held_out = pipelines.make_eval_iterator(cfg.data, 'pairs', 32, slice(None))
    metrics = evaluate_pairs(graphdef, state.params, held_out)
    assert metrics['num_pairs'] == 300
    assert metrics['antisymmetry_error'] <= 1e-6
    accuracy[objective] = metrics['accuracy']
  print('held-out accuracy', accuracy)
  assert accuracy['preference_model'] >= 0.95, accuracy
  assert accuracy['reward_model'] <= 0.70, accuracy
