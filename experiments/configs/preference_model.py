"""The pairwise preference model P(y > y' | x) (docs/math.md section 1): a backbone reading the prompt and both
responses, antisymmetric by construction, trained with binary cross-entropy (soft labels allowed).

Variants: `tiny` (built-in pairs, seconds on CPU), `125m` (a TFDS pairs data set, accelerators), `hf` (the
backbone of a run imported by nlhf-import, with a new head: --config.init_checkpoint=RUN), `laptop` (`hf` sized
for a 0.6B model on a 24 GiB CPU machine: batch 4, prompts of 128 and responses of 64 tokens, scanned and
rematerialised layers).
  nlhf-train --config=experiments/configs/preference_model.py:tiny --workdir=/tmp/pm
  nlhf-train --config=experiments/configs/preference_model.py:125m --workdir=DIR \\
      --config.data.name=tldr_pairs --config.data.data_dir=DATA --config.data.tokenizer=DATA/tok.model
  nlhf-train --config=experiments/configs/preference_model.py:hf --workdir=runs/pm \\
      --config.init_checkpoint=runs/qwen --config.data.name=my_pairs --config.data.data_dir=DATA
"""
import ml_collections

from nlhf_jax.config.defaults import defaults, sibling

VARIANTS = ('tiny', '125m', 'hf', 'laptop')


def pairwise_config(arg: str, objective: str) -> ml_collections.ConfigDict:
  variant = arg or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of {objective}.py; use one of: {", ".join(VARIANTS)}')
  c = defaults('tiny' if variant in ('hf', 'laptop') else variant)
  c.name = f'{objective}_{variant}'
  c.train.objective = objective
  # The longest built-in prompt is 33 tokens and the longest response 26 (special tokens included).
  c.data.update(source='synthetic', tokenizer='bytes', prompt_len=40, response_len=32, num_examples=4096)
  c.optim.update(learning_rate=1e-3, schedule='cosine', warmup_steps=10)
  c.train.update(num_steps=40, batch_size=16, log_every=10, checkpoint_every=20,
                 eval_every=20, eval_batches=4)
  if variant == '125m':
    c.model.compute_dtype = 'bfloat16'
    c.data.update(source='tfds', name='pairs', prompt_len=512, response_len=128, tokenizer='')
    c.optim.update(learning_rate=1e-5, warmup_steps=200)
    c.train.update(num_steps=5000, batch_size=64, log_every=50, checkpoint_every=500,
                   eval_every=500)
  if variant == 'hf':
    sibling(__file__, 'sft').from_imported_run(c)
    c.data.update(prompt_len=512, response_len=256)
    c.optim.update(learning_rate=5e-6, warmup_steps=100)
    c.train.update(num_steps=2000, batch_size=32, log_every=10, checkpoint_every=200,
                   eval_every=200)
  if variant == 'laptop':
    sft = sibling(__file__, 'sft')
    sft.from_imported_run(c)
    sft.small_memory(c)
    c.data.update(prompt_len=128, response_len=64)
    c.optim.update(learning_rate=5e-6, warmup_steps=10)
    c.train.update(num_steps=200, batch_size=4, log_every=5, checkpoint_every=50, eval_every=50,
                   eval_batches=2)
  return c


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  return pairwise_config(arg, 'preference_model')
