"""Supervised fine-tuning (the reference policy mu of NLHF) on built-in demonstrations.

Variants: `tiny` (tests, seconds), `demo` (CPU, a few minutes), `125m` and `1b` (accelerators), `hf` (a
pretrained model imported by nlhf-import: its shape and tokenizer are read from the run, docs/models.md), `laptop`
(`hf` sized for a 0.6B model on a 24 GiB CPU machine: batch 8 x 256 tokens, scanned and rematerialised layers,
chunked vocabulary; docs/models.md, "Memory per model size").
  nlhf-train --config=experiments/configs/sft.py:tiny --workdir=/tmp/sft
  nlhf-train --config=experiments/configs/sft.py:125m --workdir=DIR \\
      --config.data.source=tfds --config.data.name=demos --config.data.data_dir=DATA \\
      --config.data.tokenizer=DATA/tok.model
  nlhf-train --config=experiments/configs/sft.py:hf --workdir=runs/sft --config.init_checkpoint=runs/qwen \\
      --config.data.name=demos --config.data.data_dir=DATA --config.data.chat_template=true
  nlhf-train --config=experiments/configs/sft.py:laptop --workdir=runs/sft --config.init_checkpoint=runs/qwen \\
      --config.data.name=demos --config.data.data_dir=DATA --config.data.chat_template=true
"""
import ml_collections

from nlhf_jax.config.defaults import defaults

VARIANTS = ('tiny', 'demo', '125m', '1b', 'hf', 'laptop')


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  variant = arg or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of sft.py; use one of: {', '.join(VARIANTS)}")
  c = defaults('tiny' if variant in ('tiny', 'demo', 'hf', 'laptop') else variant)
  c.name = f'sft_{variant}'
  c.optim.update(name='adamw', learning_rate=3e-3, schedule='cosine', warmup_steps=10, end_lr_factor=0.1)
  c.data.update(source='synthetic', tokenizer='bytes', seq_len=64, num_examples=4096)
  c.train.update(objective='sft', num_steps=20, batch_size=16, log_every=5, checkpoint_every=10,
                 eval_every=10, eval_batches=4)
  if variant == 'demo':
    c.model.update(d_model=128, num_layers=2, mlp_dim=256, num_heads=4, head_dim=32)
    c.train.update(num_steps=300, batch_size=32, log_every=25, checkpoint_every=100,
                   eval_every=50, eval_batches=8)
  if variant in ('125m', '1b'):
    c.model.compute_dtype = 'bfloat16'
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.seq_len = 512
    c.optim.update(learning_rate=3e-4 if variant == '125m' else 2e-4, warmup_steps=500)
    c.train.update(num_steps=20_000, batch_size=256, log_every=50, checkpoint_every=1000,
                   eval_every=1000)
  if variant == 'hf':
    from_imported_run(c)
    c.data.update(seq_len=1024)
    c.optim.update(learning_rate=1e-5, warmup_steps=100, weight_decay=0.0)
    c.train.update(num_steps=2000, batch_size=64, log_every=10, checkpoint_every=200,
                   eval_every=200)
  if variant == 'laptop':
    from_imported_run(c)
    small_memory(c)
    c.data.update(seq_len=256)
    c.optim.update(learning_rate=1e-5, warmup_steps=10, weight_decay=0.0)
    c.train.update(num_steps=200, batch_size=8, log_every=5, checkpoint_every=50, eval_every=50,
                   eval_batches=2)
  return c


def small_memory(c: ml_collections.ConfigDict) -> None:
  """The switches every `laptop` variant shares (none changes the numbers): scanned layers, rematerialised
  (each layer keeps its input only) and the vocabulary in chunks (no [B, T, V] logits)."""
  c.model.update(scan_layers=True, remat='full', logits_chunk=16384)


def from_imported_run(c: ml_collections.ConfigDict) -> None:
  """The settings every `hf` variant shares: the model's shape and the tokenizer from the run named by
  config.init_checkpoint (or config.online.reference_checkpoint), data from a TFDS data set (data.name and
  data.data_dir on the command line), FSDP over every device."""
  c.model.update(preset='from_run', compute_dtype='float32')
  c.data.update(source='tfds', name='', tokenizer='from_run')
  c.mesh.update(data=1, fsdp=-1, tensor=1)
