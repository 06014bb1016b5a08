"""Sampling options are built from a `sampling` config section by one function and checked by one check, wherever
they are set (config.online.sampling, an evaluation, the pipeline's policy, pairs and eval sections, SamplingConfig
itself); a key at its former place (config.online.temperature) is refused naming the new one; the strategies
compose as the filters do; the typed decoder steps as `run` loops."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import pipeline
from nlhf_jax.config import ConfigError, ModelConfig
from nlhf_jax.config.runs import SAMPLING_KEYS
from nlhf_jax.config.schema import SamplingOptions
from nlhf_jax.config.validate import SAMPLING_OPTIONS
from nlhf_jax.models import Transformer, preset
from nlhf_jax.sampling import (Decoder, DecodeState, Groups, SamplingConfig, Strategy, filter_logits, pair_groups,
                               row_keys, run)
from tests.helpers import tiny_config

BAD = {'max_new_tokens': 0, 'temperature': -0.5, 'top_k': -1, 'top_p': 0.0, 'kv_cache_dtype': 'float16',
       'decode_tensor': -2, 'decode_segments': 0}
SAMPLER_OPTIONS = [f.name for f in dataclasses.fields(SamplingConfig) if f.name not in ('stop_ids', 'pad_id')]


def test_every_checked_option_is_a_sampling_config_field_and_a_key_of_config_online_sampling():
  """One name per option: SamplingConfig.from_section copies config.online.sampling's keys by name."""
  online = {f.name for f in dataclasses.fields(SamplingOptions)}
  assert {key for key, _, _ in SAMPLING_OPTIONS} == set(BAD) <= set(SAMPLER_OPTIONS)
  assert set(SAMPLER_OPTIONS) <= online


@pytest.mark.parametrize('key', sorted(BAD))
def test_a_bad_option_fails_by_its_name_in_config_online_and_in_sampling_config(key):
  with pytest.raises(ConfigError, match=f'^config.online.sampling.{key}={BAD[key]!r}: '):
    tiny_config(**{f'online.sampling.{key}': BAD[key]})
  with pytest.raises(ConfigError, match=f'^SamplingConfig.{key}={BAD[key]!r}: '):
    SamplingConfig(**{key: BAD[key]})


def test_a_bad_eval_option_fails_with_its_flag():
  from nlhf_jax.evaluation import inputs
  sampling = dict(max_new_tokens=4, temperature=1.0)
  good = dict(num_prompts=2, samples_per_prompt=1, batch_size=2, sampling=sampling)
  inputs.check_settings(ml_collections.ConfigDict(good))
  for key in ('max_new_tokens', 'temperature'):
    with pytest.raises(ConfigError, match=f'^sampling.{key}={BAD[key]!r}: .*\\(--{key}, or eval.sampling.{key} of a '
                                          'pipeline'):
      inputs.check_settings(ml_collections.ConfigDict(dict(good, sampling=dict(sampling, **{key: BAD[key]}))))


def test_the_pipeline_checks_the_pairs_stage_temperature_before_any_stage(tmp_path):
  from nlhf_jax.pipeline import stages
  p = pipeline.get_config('tiny')
  p.pairs.sampling.temperature = -1.0
  with pytest.raises(ConfigError, match="pipeline stage 'pairs': config.pairs.sampling.temperature=-1.0: must be "
                                        ">= 0"):
    stages.stage_configs(p, str(tmp_path))


@pytest.mark.parametrize('key,value,message', [
    ('policy.sampling.max_new_tokens', 0, "pipeline stage 'pairs': config.policy.sampling.max_new_tokens=0: must be "
                                          'at least 1'),
    ('policy.sampling.temperature', -1.0, "pipeline stage 'rlhf': config.online.sampling.temperature=-1.0: must be "
                                          '>= 0.*built from config.policy'),
    ('eval.sampling.max_new_tokens', 0, "pipeline stage 'eval': sampling.max_new_tokens=0: must be at least 1 "
                                        r'\(--max_new_tokens, or eval.sampling.max_new_tokens of a pipeline config\)'),
    ('eval.sampling.temperature', -1.0, "pipeline stage 'eval': sampling.temperature=-1.0: must be >= 0"),
])
def test_the_pipeline_checks_every_sampling_section_by_its_key(tmp_path, key, value, message):
  """policy.sampling (the policies' config.online.sampling and the pairs' length) and eval.sampling, before any
  stage runs."""
  from nlhf_jax.pipeline import stages
  p = pipeline.get_config('tiny')
  section, _, field = key.split('.')
  p[section].sampling[field] = value
  with pytest.raises(ConfigError, match=message):
    stages.stage_configs(p, str(tmp_path))


@pytest.mark.parametrize('key', SAMPLING_KEYS)
def test_an_online_sampling_option_at_its_former_place_is_refused_naming_its_new_key(key):
  value = {'sharded_decode': True, 'kv_cache_dtype': 'float32', 'top_k': 3, 'max_new_tokens': 8}.get(key, 0.5)
  with pytest.raises(ConfigError) as e:
    tiny_config(**{f'online.{key}': value})
  assert str(e.value) == (f'config.online.{key} is now config.online.sampling.{key}: set '
                          f'config.online.sampling.{key} instead (--config.online.sampling.{key}=... on the command '
                          'line)')


@pytest.mark.parametrize('key', ['pairs.temperature', 'policy.max_new_tokens', 'policy.temperature',
                                 'eval.max_new_tokens', 'eval.temperature'])
def test_a_pipeline_sampling_option_at_its_former_place_is_refused_naming_its_new_key(tmp_path, key):
  from nlhf_jax.pipeline import stages
  p = pipeline.get_config('tiny')
  section, field = key.split('.')
  p[section][field] = 1
  with pytest.raises(ConfigError) as e:
    stages.stage_configs(p, str(tmp_path))
  assert str(e.value) == (f'config.{key} is now config.{section}.sampling.{field}: set '
                          f'config.{section}.sampling.{field} instead (--config.{section}.sampling.{field}=... on '
                          'the command line)')


def test_from_section_reads_config_online_sampling_and_an_eval_config_sampling_by_name():
  cfg = tiny_config(**{'online.sampling.temperature': 0.7, 'online.sampling.top_k': 5, 'online.sampling.top_p': 0.9,
                       'online.sampling.max_new_tokens': 9, 'online.sampling.sharded_decode': True,
                       'online.sampling.kv_cache_dtype': 'bfloat16'})
  got = SamplingConfig.from_section(cfg.online.sampling, (2, 3), 1)
  assert got == SamplingConfig(max_new_tokens=9, temperature=0.7, top_k=5, top_p=0.9, stop_ids=(2, 3), pad_id=1,
                               sharded_decode=True, kv_cache_dtype='bfloat16')
  ecfg = ml_collections.ConfigDict(dict(sampling=dict(max_new_tokens=7, temperature=0.0), batch_size=4, seed=1))
  assert SamplingConfig.from_section(ecfg.sampling, 5, 0) == SamplingConfig(max_new_tokens=7, temperature=0.0,
                                                                            stop_ids=(5,))


@pytest.mark.parametrize('temperature,top_k,top_p', [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.0, 4, 0.7)])
def test_the_strategy_is_the_filters_in_their_order(temperature, top_k, top_p):
  logits = jax.random.normal(jax.random.key(0), (2, 3, 16)) * 3
  strategy = Strategy.of(SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
  expect = filter_logits(logits, temperature or 1.0, top_k, top_p)
  np.testing.assert_array_equal(strategy.logits(logits), expect)
  assert strategy.greedy == (temperature == 0.0)
  assert strategy.truncates(16) == (top_k > 0 or top_p < 1.0)
  assert not Strategy.of(SamplingConfig(top_k=16)).truncates(16)  # k = V keeps every token


def test_the_decoder_steps_as_run_loops_and_its_state_is_a_frozen_pytree():
  """prefill, then step by step until every row is done, then finish: what `run` returns, bit for bit."""
  cfg = ModelConfig(**dict(preset('tiny'), vocab_size=32, d_model=32, num_layers=1, mlp_dim=64))
  graphdef, policy = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  _, ref = nnx.split(Transformer(cfg, nnx.Rngs(1)))
  scfg = SamplingConfig(max_new_tokens=4, temperature=0.9, top_k=8, stop_ids=(3,))
  mask = jnp.asarray([[False, True, True], [True, True, True]])
  batch = {'prompt': jnp.where(mask, jnp.asarray([[0, 5, 6], [7, 8, 9]]), 0).astype(jnp.int32),
           'prompt_mask': mask, 'example_index': jnp.asarray([4, 2], jnp.int32)}
  groups = pair_groups(0.5)
  keys = row_keys(jax.random.key(0), batch['example_index'], groups.total)
  decoder = Decoder(graphdef, graphdef, scfg, groups, 0.5)
  params = (policy, ref)
  state = jax.jit(decoder.prefill)(params, batch, keys)
  assert isinstance(state, DecodeState) and state.prompt_width == 3 and int(state.t) == 1
  assert set(state.caches) == {'policy', 'ref'}
  with pytest.raises(dataclasses.FrozenInstanceError):
    state.t = 0
  step = jax.jit(decoder.step)
  while int(state.t) < scfg.max_new_tokens and int(state.running()):
    state = step(params, state)
  got = decoder.finish(state)
  expect = jax.jit(lambda p, r: run(nnx.merge(graphdef, p), nnx.merge(graphdef, r), batch, keys, scfg, groups,
                                    0.5))(policy, ref)
  for k in ('tokens', 'mask', 'logprobs'):
    np.testing.assert_array_equal(got[k], expect[k])
  assert Groups(n_policy=1).decoders() == (('policy', 0, 1),)  # a model with no rows does not decode
