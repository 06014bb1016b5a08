"""Offline DPO on a pairs data set (prompt, chosen, rejected or a soft preference), against a frozen reference mu:
the binary cross-entropy of sigmoid(tau h), h the difference of the two responses' log-ratios log pi / mu, with
optional label smoothing (conservative DPO). docs/math.md section 5; ipo.py is the same with IPO's loss.

Variants: `tiny` (built-in pairs, seconds on CPU; mu is the initial policy unless --config.init_checkpoint names
an SFT run), `125m` (a TFDS pairs data set, accelerators), `hf` (a run imported by nlhf-import or an SFT run on
it: --config.init_checkpoint=RUN, which is also mu).
  nlhf-train --config=experiments/configs/dpo.py:tiny --workdir=/tmp/dpo [--config.init_checkpoint=/tmp/sft]
  nlhf-train --config=experiments/configs/dpo.py:hf --workdir=runs/dpo --config.init_checkpoint=runs/sft \\
      --config.data.name=my_pairs --config.data.data_dir=DATA [--config.model.lora.rank=16]
"""
import ml_collections

from nlhf_jax.config.defaults import defaults, sibling

VARIANTS = ('tiny', '125m', 'hf')


def offline_config(arg: str, objective: str) -> ml_collections.ConfigDict:
  variant = arg or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of {objective}.py; use one of: {", ".join(VARIANTS)}')
  c = defaults('tiny' if variant == 'hf' else variant)
  c.name = f'{objective}_{variant}'
  c.train.objective = objective
  # The built-in pairs: prompts of up to 33 tokens, responses of up to 26 (special tokens included).
  c.data.update(source='synthetic', tokenizer='bytes', prompt_len=40, response_len=32, num_examples=4096)
  c.offline.tau = 0.1
  c.optim.update(learning_rate=1e-3, schedule='cosine', warmup_steps=10)
  c.train.update(num_steps=40, batch_size=16, log_every=10, checkpoint_every=20,
                 eval_every=20, eval_batches=4)
  if variant == '125m':
    c.model.compute_dtype = 'bfloat16'
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(source='tfds', name='pairs', prompt_len=512, response_len=256, tokenizer='')
    c.offline.frozen_dtype = 'bfloat16'
    c.optim.update(learning_rate=5e-7, warmup_steps=100, weight_decay=0.0)
    c.train.update(num_steps=2000, batch_size=64, log_every=50, checkpoint_every=500,
                   eval_every=500)
  if variant == 'hf':
    sibling(__file__, 'sft').from_imported_run(c)
    c.data.update(prompt_len=512, response_len=512)
    c.model.max_len = max(c.model.max_len, 1024)
    c.offline.frozen_dtype = 'bfloat16'
    c.optim.update(learning_rate=5e-7, warmup_steps=100, weight_decay=0.0)
    c.train.update(num_steps=2000, batch_size=32, log_every=10, checkpoint_every=200,
                   eval_every=200)
  return c


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  return offline_config(arg, 'dpo')
