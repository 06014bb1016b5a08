"""The end-to-end NLHF pipeline on the built-in benchmark (docs/pipeline.md).

tokenizer -> data -> sft (mu) -> pairs (sampled from mu, labelled by the oracle) -> preference_model, reward_model
-> policies (RLHF, SP, Nash-MD-PG at several beta, BR, Nash-EMA-PG; offline DPO and IPO on the same pairs) -> eval.

Variants: `tiny` (tests: byte tokenizer, a few steps, three policies), `demo` (CPU, under 15 minutes on 2 cores
with 8 fake devices), `full` (accelerators: realistic sizes).
  nlhf-pipeline --config=experiments/configs/pipeline.py:demo --workdir=runs/demo
  nlhf-eval --workdir=runs/demo --output=runs/demo/eval2   # re-evaluate (--overwrite replaces runs/demo/eval)
Policy names (config.policies, comma-separated): rlhf, sp (beta 0), md_BETA (Nash-MD-PG, e.g. md_0.125),
br (beta 1), ema (Nash-EMA-PG with config.policy.ema_rate), any online objective by its name (rlhf, online_ipo,
and the successors of Nash-MD inpo, comal, mpo, sppo, extragradient with config.policy's eta, iteration_steps,
prox_iterations, group_samples), dpo and ipo (offline, on the pairs, with config.offline: its tau and trainer).
"""
from __future__ import annotations

import ml_collections

from nlhf_jax.config.presets import preset

VARIANTS = ('tiny', 'demo', 'full')
ALL_POLICIES = 'rlhf,sp,md_0.125,md_0.25,md_0.5,md_0.75,br,ema,dpo,ipo'


def _trainer(num_steps: int, batch_size: int, learning_rate: float, warmup: int = 0, every: int = 0):
  return dict(num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup,
              checkpoint_every=every or max(num_steps // 2, 1), log_every=max(num_steps // 10, 1))


def tiny() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'pipeline_tiny'
  c.seed = 0
  # Several seeds: '0,1,2' runs every stage but tokenizer and data once per seed, in DIR/seed_S/STAGE, and pools
  # the evaluations in DIR/eval (docs/pipeline.md); '' runs config.seed alone, in DIR/STAGE.
  c.seeds = ''
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  # 'sentencepiece' (trained on benchmark.language.corpus_text) or 'bytes'.
  c.tokenizer = dict(kind='bytes', vocab_size=320, corpus_size=2000)
  c.data = dict(num_prompts=512, num_demonstrations=512, validation_fraction=0.125, prompt_len=48,
                response_len=32, seq_len=80)
  c.model = preset('tiny', max_len=128)
  c.judge_model = preset('tiny', max_len=128)
  c.sft = _trainer(30, 16, 3e-3, warmup=5)
  # Two responses per prompt from mu; labels 'probabilities' (P*) or 'draws' (0/1 Bernoulli(P*), seeded). They are
  # sampled at pairs.sampling.temperature, policy.sampling.max_new_tokens tokens long.
  c.pairs = dict(num_prompts=128, labels='probabilities', sampling=dict(temperature=1.0), batch_size=64)
  # The judge that labels the pairs and scores the evaluation: 'module:function' (or 'module:factory(args)')
  # giving fn(prompts, responses_a, responses_b) -> P(a > b) over texts; the benchmark's exact oracle P*.
  c.oracle = 'nlhf_jax.benchmark.oracle:preferences'
  c.preference_model = _trainer(20, 16, 1e-3)
  c.reward_model = _trainer(20, 16, 1e-3)
  c.policies = 'rlhf,sp,md_0.25'
  # The successors of Nash-MD (inpo, comal, mpo, sppo): eta, the steps of an iteration, the iterations between the
  # resets of comal's and mpo's moving reference, and sppo's K samples per prompt (docs/online.md). `sampling` is
  # the online policies' config.online.sampling.
  c.policy = dict(tau=0.05, rlhf_tau=0.05, ema_rate=0.9, sampling=dict(max_new_tokens=24, temperature=1.0), eta=2.0,
                  iteration_steps=4, prox_iterations=2, group_samples=4, **_trainer(8, 16, 1e-3))
  # Offline DPO and IPO (policies 'dpo', 'ipo'): tau and the trainer, on the pairs; mu and the start are sft.
  c.offline = dict(tau=0.1, **_trainer(8, 16, 1e-3))
  # Evaluation: num_prompts validation prompts x samples_per_prompt samples = N comparisons per cell.
  c.eval = dict(seed=0, num_prompts=32, samples_per_prompt=1, judgement='expected',
                sampling=dict(max_new_tokens=24, temperature=1.0), batch_size=32, num_shown=3)
  return c


def demo() -> ml_collections.ConfigDict:
  c = tiny()
  c.name = 'pipeline_demo'
  c.tokenizer.update(kind='sentencepiece', vocab_size=300)
  # Enough prompts for ~6k preference pairs: with fewer, the learned PM is weak and every policy exploits it.
  c.data.update(num_prompts=8192, num_demonstrations=4096, prompt_len=16, response_len=16, seq_len=32)
  c.model = preset('tiny', vocab_size=c.tokenizer.vocab_size, max_len=48)
  c.judge_model = preset('tiny', vocab_size=c.tokenizer.vocab_size, max_len=48)
  c.sft = _trainer(300, 32, 3e-3, warmup=20, every=100)
  c.pairs.update(num_prompts=6144, batch_size=128)
  c.preference_model = _trainer(600, 64, 1e-3, warmup=10, every=300)
  c.reward_model = _trainer(600, 64, 1e-3, warmup=10, every=300)
  c.policies = ALL_POLICIES
  c.policy.update(iteration_steps=20, **_trainer(100, 16, 1e-3, every=50))
  c.policy.sampling.max_new_tokens = 12
  c.offline.update(**_trainer(200, 32, 1e-3, every=100))
  c.eval.update(num_prompts=256, samples_per_prompt=2, batch_size=128)
  c.eval.sampling.max_new_tokens = 12
  return c


def full() -> ml_collections.ConfigDict:
  c = demo()
  c.name = 'pipeline_full'
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.tokenizer.update(vocab_size=1024, corpus_size=50_000)
  c.data.update(num_prompts=65_536, num_demonstrations=65_536, prompt_len=24, response_len=24, seq_len=48)
  c.model = preset('small', vocab_size=c.tokenizer.vocab_size, max_len=64)
  c.judge_model = preset('small', vocab_size=c.tokenizer.vocab_size, max_len=96)
  c.sft = _trainer(5000, 256, 1e-3, warmup=200, every=1000)
  c.pairs.update(num_prompts=32_768, batch_size=1024)
  c.preference_model = _trainer(4000, 256, 3e-4, warmup=200, every=1000)
  c.reward_model = _trainer(4000, 256, 3e-4, warmup=200, every=1000)
  c.policy.update(tau=0.008, rlhf_tau=0.05, ema_rate=0.999, eta=10.0, iteration_steps=200,
                  **_trainer(2000, 128, 3e-5, warmup=50, every=500))
  c.policy.sampling.max_new_tokens = 20
  c.offline.update(**_trainer(2000, 128, 3e-5, warmup=50, every=500))
  c.eval.update(num_prompts=1024, samples_per_prompt=2, batch_size=512)
  c.eval.sampling.max_new_tokens = 20
  return c


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  variant = arg or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of pipeline.py; use one of: {", ".join(VARIANTS)}')
  return {'tiny': tiny, 'demo': demo, 'full': full}[variant]()
