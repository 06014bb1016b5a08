"""Supervised fine-tuning (the reference policy mu of NLHF) on built-in demonstrations.

Variants: `tiny` (tests, seconds), `demo` (CPU, a few minutes), `125m` and `1b` (accelerators).
  nlhf-train --config=experiments/configs/sft.py:tiny --workdir=/tmp/sft
"""
import ml_collections

from nlhf_jax.models.presets import preset


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  variant = arg or 'tiny'
  if variant not in ('tiny', 'demo', '125m', '1b'):
    raise ValueError(f"unknown variant {variant!r} of sft.py; use one of: tiny, demo, 125m, 1b")
  c = ml_collections.ConfigDict()
  c.name = f'sft_{variant}'
  c.seed = 0
  c.init_checkpoint = None
  c.model = preset('tiny' if variant in ('tiny', 'demo') else variant)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.optim = dict(name='adamw', learning_rate=3e-3, schedule='cosine', warmup_steps=10, end_lr_factor=0.1,
                 b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)
  c.data = dict(source='synthetic', name='', data_dir='', seq_len=64, num_examples=4096)
  c.train = dict(objective='sft', num_steps=20, batch_size=16, grad_accum_steps=1, log_every=5,
                 checkpoint_every=10, keep_checkpoints=3, async_checkpointing=True)
  c.distributed = dict(initialize=False, coordinator_address='', num_processes=0, process_id=-1)
  if variant == 'demo':
    c.model.d_model, c.model.num_layers, c.model.mlp_dim = 128, 2, 256
    c.model.num_heads, c.model.head_dim = 4, 32
    c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 300, 32, 25, 100
  if variant in ('125m', '1b'):
    c.model.compute_dtype = 'bfloat16'
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.data.seq_len = 512
    c.optim.learning_rate = 3e-4 if variant == '125m' else 2e-4
    c.optim.warmup_steps = 500
    c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.checkpoint_every = 20_000, 256, 50, 1000
  return c
