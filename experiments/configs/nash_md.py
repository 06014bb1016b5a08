"""Nash-MD-PG (docs/math.md section 4): y ~ pi_theta, y' ~ pi^beta, preference-based policy gradient.

Self-play and best response are this algorithm at beta = 0 and beta = 1 (variants `,sp` and `,br`).
Variants: `tiny` (tests and CPU: random reference, programmatic judge), `small` (the benchmark reference size),
`125m` (accelerators: SFT reference and preference-model judge checkpoints given on the command line), `hf` (a
pretrained reference imported by nlhf-import, or an SFT run from one: the policy's shape and tokenizer are read
from config.online.reference_checkpoint; a preference-model judge), `laptop` (`hf` with LoRA rank 16 on a bfloat16
base, a bfloat16 judge, batch 4 x (128 + 64) tokens: a 0.6B model on a 24 GiB CPU machine; docs/models.md).
  nlhf-train --config=experiments/configs/nash_md.py:tiny --workdir=/tmp/nash_md
  nlhf-train --config=experiments/configs/nash_md.py:125m,sp --workdir=gs://bucket/sp \\
      --config.online.reference_checkpoint=gs://bucket/sft --config.online.judge_checkpoint=gs://bucket/pm
  nlhf-train --config=experiments/configs/nash_md.py:hf --workdir=runs/md --config.online.reference_checkpoint=runs/sft \\
      --config.online.judge_checkpoint=runs/pm --config.data.name=my_prompts --config.data.data_dir=DATA
"""
import ml_collections

from nlhf_jax.config.defaults import defaults, sibling

SIZES = ('tiny', 'small', '125m', 'hf', 'laptop')
FLAVOURS = {'md': None, 'sp': 0.0, 'br': 1.0}


def parse(arg: str, name: str, flavours=tuple(FLAVOURS)) -> tuple[str, str]:
  """'SIZE[,FLAVOUR]' -> (size, flavour or ''); an unknown size or a flavour that `name` lacks is an error."""
  size, _, flavour = (arg or 'tiny').partition(',')
  if size not in SIZES or (flavour and flavour not in flavours):
    shape = f'SIZE[,FLAVOUR] with FLAVOUR in {", ".join(flavours)}' if flavours else 'SIZE'
    raise ValueError(f'unknown variant {arg!r} of {name}; use {shape} and SIZE in {", ".join(SIZES)}')
  return size, flavour


def online_config(size: str, objective: str) -> ml_collections.ConfigDict:
  """The shared shape of the online configs (nash_md, nash_ema, rlhf, online_ipo)."""
  c = defaults(size if size in ('small', '125m') else 'tiny')
  c.name = f'{objective}_{size}'
  c.train.objective = objective
  # The longest built-in prompt is 33 tokens (BOS and separator included).
  c.data.update(source='synthetic', tokenizer='bytes', prompt_len=40, num_examples=4096)
  c.online.update(tau=0.05, beta=0.125, samples_per_prompt=1)
  c.online.sampling.update(max_new_tokens=16, temperature=1.0)
  c.online.update(judge='oracle', oracle="nlhf_jax.online.oracles:more_of('aeiou')")
  c.optim.update(name='adamw', learning_rate=1e-3, schedule='constant', warmup_steps=0, grad_clip_norm=1.0)
  c.train.update(num_steps=60, batch_size=16, log_every=10, checkpoint_every=30)
  if size == 'small':
    c.data.update(prompt_len=64)
    c.online.sampling.max_new_tokens = 64
    c.train.update(batch_size=8, num_steps=1000, log_every=20, checkpoint_every=200)
  if size == '125m':
    c.model.compute_dtype = 'bfloat16'
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data.update(source='tfds', name='prompts', prompt_len=256, tokenizer='')
    c.online.update(tau=0.008, judge='preference_model', oracle='')
    c.online.sampling.max_new_tokens = 128
    c.optim.update(learning_rate=1e-5, warmup_steps=100)
    c.train.update(batch_size=128, num_steps=10_000, log_every=50, checkpoint_every=500)
  if size in ('hf', 'laptop'):
    sibling(__file__, 'sft').from_imported_run(c)
    c.data.update(prompt_len=256)
    c.online.update(tau=0.008, judge='preference_model', oracle='')
    c.online.sampling.max_new_tokens = 128
    c.optim.update(learning_rate=1e-6, warmup_steps=20)
    c.train.update(batch_size=32, num_steps=1000, log_every=5, checkpoint_every=50)
  if size == 'laptop':  # LoRA adapters on the bfloat16 base (which is also mu), a bfloat16 judge, short samples
    sibling(__file__, 'sft').small_memory(c)
    c.model.lora.rank = 16
    c.data.update(prompt_len=128)
    c.online.update(frozen_dtype='bfloat16')
    c.online.sampling.max_new_tokens = 64
    c.optim.update(learning_rate=1e-4)
    c.train.update(batch_size=4)
  return c


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  size, flavour = parse(arg, 'nash_md.py')
  c = online_config(size, 'nash_md')
  if flavour and FLAVOURS[flavour] is not None:
    c.online.beta = FLAVOURS[flavour]
    c.name = f'{flavour}_{size}'
  return c
