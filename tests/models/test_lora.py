"""LoRA (config.model.lora, nlhf_jax/models/lora.py): fresh adapters change nothing, merged adapters compute what
the adapted model computes, only the adapters train and are checkpointed, and an online run's reference policy is
the base itself (the same weights with the adapters off)."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from experiments.configs import dpo, nash_md, sft
from nlhf_jax.config import ConfigError, LoraConfig, ModelConfig, from_config_dict
from nlhf_jax.data import pipelines
from nlhf_jax.models import Transformer, lora
from nlhf_jax.models.logprobs import response_logprobs
from nlhf_jax.training import checkpointing, optim
from nlhf_jax.trainer import loop, tasks
from tests.helpers import mesh

CFG = ModelConfig(num_layers=2, num_kv_heads=2)
LORA = LoraConfig(rank=4, alpha=8.0)
TOKENS = jax.random.randint(jax.random.key(1), (2, 7), 4, 256)
MASK = jnp.ones((2, 7), bool).at[0, :2].set(False)


def _logits(model):
  return nnx.jit(lambda m: m(TOKENS, MASK)[0])(model)


def _with_b(adapters, value):
  """The adapters with every B set to `value` * its index pattern (a non-zero update)."""
  def leaf(path, x):
    if path[-1].endswith(lora.B_SUFFIX):
      return value * jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
    return x
  flat = traverse_util.flatten_dict(adapters)
  return traverse_util.unflatten_dict({p: leaf(p, x) for p, x in flat.items()})


@pytest.mark.parametrize('scan', [False, True], ids=['unrolled', 'scanned'])
def test_adapters_start_at_the_base_and_merge_into_it(scan):
  cfg = dataclasses.replace(CFG, scan_layers=scan, remat='full' if scan else 'none')
  base = Transformer(cfg, nnx.Rngs(0))
  adapted = lora.apply_lora(base, LORA, nnx.Rngs(1))
  assert isinstance(adapted, Transformer) and lora.is_adapted(adapted) and not lora.is_adapted(base)
  np.testing.assert_array_equal(_logits(adapted), _logits(base))  # B = 0: exactly the base
  np.testing.assert_array_equal(_logits(lora.base_model(adapted)), _logits(base))

  adapters, plain = lora.split_adapters(nnx.to_pure_dict(nnx.state(adapted)))
  assert plain.keys() == nnx.to_pure_dict(nnx.state(base)).keys()
  names = {p[-1] for p in traverse_util.flatten_dict(adapters)}
  assert names == {f'{w}{s}' for w in ('q', 'k', 'v', 'o', 'gate', 'up', 'down') for s in ('_lora_a', '_lora_b')}
  m, r = cfg, LORA.rank
  per_layer = (r * (m.d_model + m.num_heads * m.head_dim) + 2 * r * (m.d_model + m.kv_heads * m.head_dim)
               + r * (m.num_heads * m.head_dim + m.d_model) + 3 * r * (m.d_model + m.mlp_dim))
  assert lora.count(adapters) == m.num_layers * per_layer

  moved = _with_b(adapters, 0.05)
  state = nnx.state(adapted)
  nnx.replace_by_pure_dict(state, lora.combine(plain, moved))
  out = _logits(nnx.merge(nnx.graphdef(adapted), state))
  assert float(jnp.max(jnp.abs(out - _logits(base)))) > 1e-2  # the adapters do act
  merged = lora.merge_adapters(plain, moved, LORA)
  base_state = nnx.state(base)
  nnx.replace_by_pure_dict(base_state, merged)
  np.testing.assert_allclose(_logits(nnx.merge(nnx.graphdef(base), base_state)), out, atol=2e-5)


def test_a_scanned_adapted_model_unrolled_for_decoding_is_the_same_model(monkeypatch):
  """lora.unrolled (the sampler's decode form on GPU): the base's layers and the adapters split per layer, equal
  to the stack's slices, under the same rank and alpha (2.0 here, not the model config's); the same logits with
  and without the cache as the scanned adapted model, with adapters that act."""
  from nlhf_jax.models.transformer import STACK
  from nlhf_jax.sampling import decode_step, prefill, sampler
  cfg = dataclasses.replace(CFG, scan_layers=True)
  scanned = lora.apply_lora(Transformer(cfg, nnx.Rngs(0)), LoraConfig(rank=4, alpha=2.0), nnx.Rngs(1))
  state = nnx.state(scanned)
  nnx.replace_by_pure_dict(state, _acting(nnx.to_pure_dict(state)))
  scanned = nnx.merge(nnx.graphdef(scanned), state)
  model = lora.unrolled(scanned)
  assert lora.is_adapted(model) and not model.cfg.scan_layers and model.lora_config.alpha == 2.0
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam)))
  stacked = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(scanned, nnx.LoRAParam)))
  assert len(flat) == cfg.num_layers * len(stacked)
  for path, value in stacked.items():
    for i in range(cfg.num_layers):
      np.testing.assert_array_equal(flat[(f'layer_{i}',) + path[1:]], value[i])
  assert path[0] == STACK
  base = _logits(lora.base_model(scanned))
  out = _logits(scanned)
  assert float(jnp.max(jnp.abs(out - base))) > 1e-2  # the adapters act
  np.testing.assert_allclose(_logits(model), out, atol=1e-6, rtol=0)

  @nnx.jit
  def cached(m):  # a prefill of 4 positions, then 3 tokens decoded one at a time
    logits, cache = prefill(m, TOKENS[:, :4], MASK[:, :4], 7)
    steps = [logits]
    for t in range(4, 7):
      logits, cache = decode_step(m, cache, TOKENS[:, t - 1], jnp.sum(MASK[:, :t], 1) - 1, jnp.int32(t - 1))
      steps.append(logits)
    return jnp.stack(steps, 1)
  np.testing.assert_allclose(cached(model), cached(scanned), atol=1e-5, rtol=0)
  assert lora.is_adapted(sampler.decode_weights(scanned)) and sampler.decode_weights(scanned).cfg.scan_layers
  monkeypatch.setattr(sampler, 'context_platform', lambda: 'gpu')  # on GPU the sampler decodes the twin
  assert not sampler.decode_weights(scanned).cfg.scan_layers and lora.is_adapted(sampler.decode_weights(scanned))


def _acting(params: dict) -> dict:
  adapters, plain = lora.split_adapters(params)
  return lora.combine(plain, _with_b(adapters, 0.05))


def test_targets_select_modules_by_path():
  base = Transformer(CFG, nnx.Rngs(0))
  adapted = lora.apply_lora(base, dataclasses.replace(LORA, targets='layer_1/mlp'), nnx.Rngs(1))
  adapters, _ = lora.split_adapters(nnx.to_pure_dict(nnx.state(adapted)))
  assert {p[:2] for p in traverse_util.flatten_dict(adapters)} == {('layer_1', 'mlp')}
  with pytest.raises(ValueError, match='selects no projection'):
    lora.apply_lora(base, dataclasses.replace(LORA, targets='embed'), nnx.Rngs(1))
  scanned = Transformer(dataclasses.replace(CFG, scan_layers=True), nnx.Rngs(0))
  with pytest.raises(ValueError, match='every layer needs the same adapters'):
    lora.apply_lora(scanned, dataclasses.replace(LORA, targets='layer_1/mlp'), nnx.Rngs(1))


def test_lora_config_errors():
  def config(objective_module, variant='tiny', **lora_values):
    c = objective_module.get_config(variant)
    c.model.lora.update(rank=4, **lora_values)
    return c
  with pytest.raises(ConfigError, match='config.init_checkpoint'):
    from_config_dict(config(sft))
  with pytest.raises(ConfigError, match='config.online.reference_checkpoint'):
    from_config_dict(config(nash_md))
  c = config(nash_md)
  c.online.reference_checkpoint, c.init_checkpoint = 'runs/sft', 'runs/other'
  with pytest.raises(ConfigError, match='leave config.init_checkpoint empty'):
    from_config_dict(c)
  c = config(sft, targets='(attn')
  c.init_checkpoint = 'runs/sft'
  with pytest.raises(ConfigError, match='not a regular expression'):
    from_config_dict(c)
  from experiments.configs import preference_model
  c = config(preference_model)
  with pytest.raises(ConfigError, match='LoRA trains policies'):
    from_config_dict(c)
  # A regex that selects no module, or different layers of a scanned stack, is refused with the config.
  c = config(sft, targets='embed')
  c.init_checkpoint = 'runs/sft'
  with pytest.raises(ConfigError, match="config.model.lora.targets='embed' selects no projection"):
    from_config_dict(c)
  c = config(sft, targets='layer_1/mlp')
  c.init_checkpoint = 'runs/sft'
  from_config_dict(c)
  c.model.scan_layers = True
  with pytest.raises(ConfigError, match='adapts mlp in layer_1 only, but with config.model.scan_layers=True'):
    from_config_dict(c)


def test_validation_knows_the_modules_that_lora_adapts():
  """config/validate.lora_modules (what a targets regex is checked against before any model is built) names
  exactly the modules that hold adapters when every module is selected."""
  from nlhf_jax.config.validate import lora_modules
  adapted = lora.apply_lora(Transformer(CFG, nnx.Rngs(0)), dataclasses.replace(LORA, targets='.*'), nnx.Rngs(1))
  adapters, _ = lora.split_adapters(nnx.to_pure_dict(nnx.state(adapted)))
  modules = {'/'.join(p[:-1]) for p in traverse_util.flatten_dict(adapters)}
  assert modules == set(lora_modules(CFG.num_layers))


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  """A tiny SFT run: the base that LoRA adapts."""
  c = sft.get_config('tiny')
  c.train.update(num_steps=2, checkpoint_every=2, log_every=2)
  c.mesh.update(data=2, fsdp=2, tensor=1)
  workdir = str(tmp_path_factory.mktemp('lora') / 'sft')
  loop.train(from_config_dict(c, 4), workdir, mesh(data=2, fsdp=2))
  return workdir


def _plain_target(cfg, m):
  return checkpointing.params_target(nnx.split(nnx.eval_shape(lambda: Transformer(cfg.model, nnx.Rngs(0))))[1], m)


def test_lora_sft_trains_and_checkpoints_the_adapters_only(base_run, tmp_path):
  c = sft.get_config('tiny')
  c.train.update(num_steps=3, checkpoint_every=3, log_every=3)
  c.optim.update(learning_rate=1e-2)
  c.mesh.update(data=2, fsdp=2, tensor=1)
  c.model.lora.update(rank=4, alpha=8.0)
  c.init_checkpoint = base_run
  cfg = from_config_dict(c, 4)
  m = mesh(data=2, fsdp=2)
  state = loop.train(cfg, str(tmp_path / 'lora'), m)
  flat = traverse_util.flatten_dict(jax.device_get(state.params))
  assert flat and all(lora.is_adapter(p) for p in flat)  # the state (and so its checkpoint) holds the adapters
  assert any(np.abs(x).max() > 0 for p, x in flat.items() if p[-1].endswith(lora.B_SUFFIX))
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'lora' / 'checkpoints'))
  assert ckpt.all_steps() == [3]
  ckpt.close()

  # A params-only restore of the LoRA run gives the merged weights (evaluation, a reference, nlhf-export).
  target = _plain_target(cfg, m)
  base, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(base_run), target)
  merged, step = checkpointing.restore_params(str(tmp_path / 'lora' / 'checkpoints'), target)
  assert step == 3
  expected = lora.merge_adapters(base, state.params, cfg.model.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), merged, expected)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg.model, nnx.Rngs(0))))
  run = tasks.setup(cfg, tasks.get_task('sft'), optim.make_optimizer(cfg.optim, 3), m)
  adapted = nnx.merge(run.graphdef, lora.combine(base, state.params))
  np.testing.assert_allclose(_logits(nnx.merge(graphdef, merged)), _logits(adapted), atol=2e-5)


def test_lora_nash_md_reference_is_the_base_without_adapters(base_run, tmp_path):
  c = nash_md.get_config('tiny')
  c.train.update(batch_size=8, num_steps=2, checkpoint_every=2, log_every=1)
  c.mesh.update(data=2, fsdp=2, tensor=1)
  c.model.lora.update(rank=4, alpha=8.0, targets='.*attn')
  c.online.reference_checkpoint = base_run
  cfg = from_config_dict(c, 4)
  m = mesh(data=2, fsdp=2)
  task = tasks.get_task('nash_md')
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
  run = tasks.setup(cfg, task, tx, m)
  assert run.lora
  state = jax.jit(run.init, out_shardings=run.shardings)(cfg.seed)
  step, frozen = tasks.build_step(cfg, task, run, tx, optim.schedule(cfg.optim, 2), m, lambda: None)
  assert set(frozen) == {'base', 'judge'}  # mu is the base: no copy of the weights of its own
  batch = next(pipelines.make_iterator(cfg.data, 'prompts', cfg.seed, 8, slice(None)))
  _, grads, out = jax.jit(step.loss_and_grads)(state, frozen, batch)
  # At step 0 the adapters are zero: pi_theta's log-probabilities of y are mu's. The two come from different
  # fusions of one program (the adapted layers add x A B); they agree to the bit in most runs, and once differed by
  # 4.8e-7 in one of 128 (a fresh clone's make test on a loaded host). A wrong mu moves them by tenths.
  np.testing.assert_allclose(np.asarray(out['lp']), np.asarray(out['ref_lp']), rtol=0, atol=2e-6)
  base_model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg.model, nnx.Rngs(0)))), frozen['base'])
  plain = jax.jit(lambda: response_logprobs(base_model, batch['prompt'], batch['prompt_mask'], out['y']['tokens'],
                                            out['y']['mask']))()
  np.testing.assert_allclose(np.asarray(out['ref_lp']), np.asarray(plain), atol=1e-6)
  flat = traverse_util.flatten_dict(grads)
  assert all(lora.is_adapter(p) and p[1] == 'attn' for p in flat)
  assert any(float(jnp.abs(g).max()) > 0 for p, g in flat.items() if p[-1].endswith(lora.B_SUFFIX))

  trained = loop.train(cfg, str(tmp_path / 'md'), m)
  assert all(lora.is_adapter(p) for p in traverse_util.flatten_dict(trained.params))
  merged, _ = checkpointing.restore_params(str(tmp_path / 'md' / 'checkpoints'), _plain_target(cfg, m))
  expected = lora.merge_adapters(frozen['base'], trained.params, cfg.model.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), merged, expected)


def test_lora_dpo_reference_is_the_base_and_the_run_restores_merged(base_run, tmp_path):
  """Offline DPO with LoRA on the SFT base (config.offline.reference_checkpoint): at the first step the adapters
  are zero, so the policy is mu exactly (every h = 0: the loss is log 2, the margin 0); the run's checkpoint holds
  the adapters, and a params-only restore finds the base through config.offline.reference_checkpoint."""
  c = dpo.get_config('tiny')
  c.train.update(batch_size=8, num_steps=2, checkpoint_every=2, log_every=1)
  c.mesh.update(data=2, fsdp=2, tensor=1)
  c.model.lora.update(rank=4, alpha=8.0)
  c.offline.reference_checkpoint = base_run
  cfg = from_config_dict(c, 4)
  m = mesh(data=2, fsdp=2)
  workdir = tmp_path / 'dpo'
  state = loop.train(cfg, str(workdir), m)
  assert all(lora.is_adapter(p) for p in traverse_util.flatten_dict(jax.device_get(state.params)))
  first = json.loads((workdir / 'metrics.jsonl').read_text().splitlines()[0])
  assert first['step'] == 1 and abs(first['implicit_reward_margin']) < 1e-6
  assert math.isclose(first['loss'], math.log(2), rel_tol=1e-6)
  merged, step = checkpointing.restore_params(str(workdir / 'checkpoints'), _plain_target(cfg, m))
  base, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(base_run), _plain_target(cfg, m))
  assert step == 2
  expected = lora.merge_adapters(base, state.params, cfg.model.lora)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), merged, expected)
