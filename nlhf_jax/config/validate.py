"""Checking the values of an `ExperimentConfig`, and `from_config_dict`, which makes one from an ml_collections
ConfigDict (or a plain dict): built by config/building.py (every key and type), its values checked here, and with a
device count its mesh and the shapes sharded over it (config/mesh_checks.py).

The value checks need no devices: `check_values` runs every one of them (the model's architecture, the optimizer,
the online and offline objectives, LoRA, the mesh's axis values); `check_sampling` is the one check of the sampling
options (SAMPLING_OPTIONS), also run on evaluation and pipeline sections. Every check runs before any model is built
or any function is compiled, and every error is a ConfigError naming the config key, the bad value and what would
fix it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from nlhf_jax.config import objectives, runs, schema
from nlhf_jax.config.building import build, to_mapping
from nlhf_jax.config.errors import ConfigError, require
from nlhf_jax.config.mesh_checks import check_against_mesh, resolve_mesh_shape


def check_values(cfg: schema.ExperimentConfig) -> None:
  """Checks that do not depend on the devices."""
  m, o, t, d = cfg.model, cfg.optim, cfg.train, cfg.data
  for key, value in [('model.vocab_size', m.vocab_size), ('model.d_model', m.d_model),
                     ('model.num_layers', m.num_layers), ('model.num_heads', m.num_heads),
                     ('model.head_dim', m.head_dim), ('model.mlp_dim', m.mlp_dim), ('model.max_len', m.max_len),
                     ('train.num_steps', t.num_steps), ('train.batch_size', t.batch_size),
                     ('train.grad_accum_steps', t.grad_accum_steps), ('train.log_every', t.log_every),
                     ('train.checkpoint_every', t.checkpoint_every), ('train.keep_checkpoints', t.keep_checkpoints),
                     ('data.seq_len', d.seq_len), ('data.prompt_len', d.prompt_len),
                     ('data.response_len', d.response_len), ('data.num_examples', d.num_examples)]:
    require(value > 0, f'config.{key}={value}: must be a positive integer')
  require(t.eval_every >= 0, f'config.train.eval_every={t.eval_every}: must be >= 0 (0 turns validation off)')
  require(t.eval_batches > 0, f'config.train.eval_batches={t.eval_batches}: must be a positive integer')
  require(m.head_dim % 2 == 0, f'config.model.head_dim={m.head_dim}: RoPE needs an even head dimension')
  check_architecture(m)
  require(m.compute_dtype in ('float32', 'bfloat16'),
          f"config.model.compute_dtype={m.compute_dtype!r}: use 'float32' or 'bfloat16'")
  require(0 <= m.pad_id < m.vocab_size, f'config.model.pad_id={m.pad_id}: must be a token id below vocab_size')
  require(d.seq_len <= m.max_len, f'config.data.seq_len={d.seq_len} exceeds config.model.max_len={m.max_len}')
  require(d.overflow in ('truncate', 'error'), f"config.data.overflow={d.overflow!r}: use 'truncate' or 'error'")
  require(d.source in ('synthetic', 'tfds'), f"config.data.source={d.source!r}: use 'synthetic' or 'tfds'")
  require(d.source != 'tfds' or d.name, "config.data.source='tfds' needs config.data.name (a TFDS dataset name)")
  require(math.isfinite(o.learning_rate) and o.learning_rate > 0,
          f'config.optim.learning_rate={o.learning_rate}: must be a positive number')
  require(o.name in ('adamw', 'adafactor'), f"config.optim.name={o.name!r}: use 'adamw' or 'adafactor'")
  require(o.schedule in ('cosine', 'linear', 'constant'),
          f"config.optim.schedule={o.schedule!r}: use 'cosine', 'linear' or 'constant'")
  require(0 <= o.warmup_steps, f'config.optim.warmup_steps={o.warmup_steps}: must be >= 0')
  require(0 <= o.decay_steps, f'config.optim.decay_steps={o.decay_steps}: must be >= 0 (0: train.num_steps)')
  require(0 <= o.end_lr_factor <= 1, f'config.optim.end_lr_factor={o.end_lr_factor}: must be in [0, 1]')
  require(math.isfinite(o.weight_decay) and o.weight_decay >= 0,
          f'config.optim.weight_decay={o.weight_decay}: must be >= 0')
  for key, value in [('b1', o.b1), ('b2', o.b2)]:
    require(0 <= value < 1, f'config.optim.{key}={value}: must be in [0, 1) (a decay rate of the moment estimates)')
  require(math.isfinite(o.eps) and o.eps > 0, f'config.optim.eps={o.eps}: must be a positive number')
  require(math.isfinite(o.grad_clip_norm), f'config.optim.grad_clip_norm={o.grad_clip_norm}: must be a number '
          '(<= 0: no clipping)')
  require(t.batch_size % t.grad_accum_steps == 0,
          f'config.train.batch_size={t.batch_size} is not divisible by '
          f'config.train.grad_accum_steps={t.grad_accum_steps}')
  require(t.on_nonfinite in ('stop', 'skip'),
          f"config.train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'skip'")
  check_online(cfg)
  check_offline(cfg)
  check_lora(cfg)
  mesh = cfg.mesh
  axes = {'data': mesh.data, 'fsdp': mesh.fsdp, 'tensor': mesh.tensor}
  for name, size in axes.items():
    require(size == -1 or size >= 1, f'config.mesh.{name}={size}: must be >= 1, or -1 to fill')
  require(sum(v == -1 for v in axes.values()) <= 1,
          'config.mesh: at most one of data, fsdp, tensor may be -1')


def check_architecture(m: schema.ModelConfig) -> None:
  """The family fields of config.model (see ModelConfig)."""
  require(m.num_kv_heads >= 0 and m.num_heads % m.kv_heads == 0,
          f'config.model.num_kv_heads={m.num_kv_heads}: must divide config.model.num_heads={m.num_heads} '
          '(0: one kv head per query head)')
  require(m.mlp_activation in ('silu', 'gelu_tanh'),
          f"config.model.mlp_activation={m.mlp_activation!r}: use 'silu' or 'gelu_tanh'")
  for key in ('norm_offset', 'query_pre_attn_scalar', 'attn_logit_softcap', 'final_logit_softcap',
              'rope_local_theta'):
    value = getattr(m, key)
    require(math.isfinite(value) and value >= 0, f'config.model.{key}={value}: must be a number >= 0')
  require(math.isfinite(m.rope_theta) and m.rope_theta > 0, f'config.model.rope_theta={m.rope_theta}: must be > 0')
  require(m.sliding_window >= 0, f'config.model.sliding_window={m.sliding_window}: must be >= 0 (0: off)')
  if m.layer_types:
    require(len(m.layer_types) == m.num_layers,
            f'config.model.layer_types has {len(m.layer_types)} entries for config.model.num_layers='
            f'{m.num_layers}; give one per layer (or none)')
    bad = [t for t in m.layer_types if t not in ('global', 'local')]
    if bad:
      raise ConfigError(f"config.model.layer_types: {bad[0]!r} is not a layer type; use 'global' or 'local'")
    require(m.sliding_window > 0 or 'local' not in m.layer_types,
            'config.model.layer_types names local layers but config.model.sliding_window=0; set the window')
  for key, value, allowed in [('remat', m.remat, ('none', 'dots_saveable', 'full')),
                              ('param_dtype', m.param_dtype, ('float32', 'bfloat16')),
                              ('attention_impl', m.attention_impl, ('einsum', 'dot_product', 'flash'))]:
    require(value in allowed, f'config.model.{key}={value!r}: use {" or ".join(repr(a) for a in allowed)}')
  require(m.logits_chunk >= 0, f'config.model.logits_chunk={m.logits_chunk}: must be >= 0 (0: off)')
  require(m.rope_scaling in ('none', 'linear', 'llama3'),
          f"config.model.rope_scaling={m.rope_scaling!r}: use 'none', 'linear' or 'llama3'")
  if m.rope_scaling != 'none':
    require(m.rope_factor > 0, f'config.model.rope_factor={m.rope_factor}: must be > 0')
  if m.rope_scaling == 'llama3':
    require(0 < m.rope_low_freq_factor < m.rope_high_freq_factor and m.rope_original_max_len > 0,
            'config.model: llama3 rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor and '
            f'rope_original_max_len > 0 (got {m.rope_low_freq_factor}, {m.rope_high_freq_factor}, '
            f'{m.rope_original_max_len})')


# The sampling options, under the names config.online.sampling and nlhf_jax.sampling's SamplingConfig share (the
# `sampling` sections of an evaluation's config and of the pipeline's policy, pairs and eval sections hold some of
# them): (key, test, what the value must be). A new option (a filter such as min-p) adds its row here and a field to
# config/schema.py's SamplingOptions.
SAMPLING_OPTIONS = (
    ('max_new_tokens', lambda v: v >= 1, 'must be at least 1'),
    ('temperature', lambda v: v >= 0, 'must be >= 0 (0: greedy)'),
    ('top_k', lambda v: v >= 0, 'must be >= 0 (0: off)'),
    ('top_p', lambda v: 0.0 < v <= 1.0, 'must be in (0, 1] (1: off)'),
    ('decode_tensor', lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= -1,
     'must be -1 (every device), 0 (off) or the devices that split each model'),
    ('decode_segments', lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
     'must be at least 1 (1: one loop; more: each part attends over the slots filled by its end)'),
    ('kv_cache_dtype', lambda v: v in ('', 'float32', 'bfloat16'), "use '' (auto), 'float32' or 'bfloat16'"),
)

_ABSENT = object()


def _option(section: Any, key: str) -> Any:
  if isinstance(section, Mapping):
    return section.get(key, _ABSENT)
  return getattr(section, key, _ABSENT)


def check_sampling(section: Any, where: str = '', fix: str = '') -> None:
  """The one check of sampling options: each of SAMPLING_OPTIONS that `section` (a config dataclass, a ConfigDict,
  a mapping or a SamplingConfig) holds. The error names `where` + the key and its value, what it must be, and
  `fix` (with {key} filled in) when given."""
  for key, ok, rule in SAMPLING_OPTIONS:
    value = _option(section, key)
    if value is _ABSENT:
      continue
    try:
      good = bool(ok(value))
    except TypeError:  # a string where a number belongs, or the reverse
      good = False
    if not good:
      raise ConfigError(f'{where}{key}={value!r}: {rule}' + (f' ({fix.format(key=key)})' if fix else ''))


def check_online(cfg: schema.ExperimentConfig) -> None:
  """Checks of config.online (always: they are cheap) and of the lengths an objective needs."""
  o, m, d = cfg.online, cfg.model, cfg.data
  require(0.0 <= o.beta <= 1.0, f'config.online.beta={o.beta}: must be in [0, 1] (0: self-play, 1: best response)')
  require(math.isfinite(o.tau) and o.tau >= 0, f'config.online.tau={o.tau}: must be >= 0')
  require(0.0 <= o.ema_rate < 1.0, f'config.online.ema_rate={o.ema_rate}: must be in [0, 1)')
  require(o.samples_per_prompt >= 1, f'config.online.samples_per_prompt={o.samples_per_prompt}: must be >= 1')
  check_sampling(o.sampling, 'config.online.sampling.')
  require(o.frozen_dtype in ('', 'float32', 'bfloat16'),
          f"config.online.frozen_dtype={o.frozen_dtype!r}: use '' (as stored), 'float32' or 'bfloat16'")
  require(o.judge in ('preference_model', 'reward_model', 'oracle', 'prompted'),
          f"config.online.judge={o.judge!r}: use 'preference_model', 'reward_model', 'oracle' or 'prompted'")
  require(len(o.judge_answers) == 2 and len(set(o.judge_answers)) == 2 and all(o.judge_answers),
          f'config.online.judge_answers={tuple(o.judge_answers)!r}: give two different, non-empty answers (the '
          "first for 'the first response is better'), e.g. ('A', 'B')")
  require(o.judge_max_len > 0, f'config.online.judge_max_len={o.judge_max_len}: must be a positive number of '
          'judge tokens')
  objective = cfg.train.objective
  spec = objectives.get(objective)
  if spec.online:
    new = o.sampling.max_new_tokens
    require(d.prompt_len + new <= m.max_len,
            f'config.data.prompt_len={d.prompt_len} + config.online.sampling.max_new_tokens={new} exceeds '
            f'config.model.max_len={m.max_len}')
    require(o.judge in spec.judges,
            f"config.train.objective={objective!r} needs config.online.judge={' or '.join(map(repr, spec.judges))} "
            f'(got {o.judge!r})')
    require(o.judge != 'oracle' or bool(o.oracle),
            "config.online.judge='oracle' needs config.online.oracle ('module:function')")
    require(o.judge == 'oracle' or bool(o.judge_checkpoint),
            f'config.online.judge={o.judge!r} needs config.online.judge_checkpoint (the workdir of that run)')
    require(not spec.needs_positive_tau or o.tau > 0,
            f'config.online.tau={o.tau}: config.train.objective={objective!r} needs tau > 0 '
            f'({spec.needs_positive_tau}); set config.online.tau to a positive number')
    check_successor(cfg, spec)
    default_beta = schema.OnlineConfig.beta
    require(spec.opponent != 'ema' or o.beta == default_beta,
            f'config.online.beta={o.beta}: config.train.objective={objective!r} does not use beta (its opponent is '
            f'the EMA policy alone, whose rate is config.online.ema_rate); leave beta at {default_beta}')
  if spec.kind == 'supervised' and not spec.trains_policy:
    need = d.prompt_len + spec.responses * d.response_len
    twice = f'{spec.responses} * ' if spec.responses > 1 else ''
    require(need <= m.max_len, f'config.model.max_len={m.max_len} is shorter than the {objective} input: '
            f'data.prompt_len + {twice}data.response_len = {need}')


def check_successor(cfg: schema.ExperimentConfig, spec: objectives.Objective) -> None:
  """The values the successors of Nash-MD read (docs/math.md section 8): eta, the iteration's length, the resets
  of the moving reference and the K samples of sppo."""
  o, objective = cfg.online, spec.name
  require(o.samples_per_prompt >= spec.min_samples,
          f'config.online.samples_per_prompt={o.samples_per_prompt}: config.train.objective={objective!r} needs '
          f'K >= {spec.min_samples} samples per prompt (each sample\'s win rate is judged against the other '
          f'K - 1); set config.online.samples_per_prompt to {spec.min_samples} or more')
  if not spec.iterate:
    return
  require(math.isfinite(o.eta) and o.eta > 0, f'config.online.eta={o.eta}: must be a positive number (the step '
          f'size of the mirror step that {objective!r} fits)')
  require(o.iteration_steps >= 1, f'config.online.iteration_steps={o.iteration_steps}: must be >= 1 (the steps '
          'after which pi_t, the policy the samples come from, is refreshed)')
  if spec.prox:
    require(o.prox_iterations >= 1, f'config.online.prox_iterations={o.prox_iterations}: must be >= 1 (the '
            f'iterations between two resets of the {spec.prox} of {objective!r})')
  require(spec.loss != 'mirror_pairs' or o.eta * o.tau <= 1.0,
          f'config.online.eta={o.eta} x config.online.tau={o.tau} = {o.eta * o.tau:g} exceeds 1: the mirror step '
          f'of {objective!r} weighs log pi_t by 1 - eta tau, which must not be negative; lower eta or tau')


REFERENCE_LOGPROBS = ('on_the_fly', 'cached')


def check_offline(cfg: schema.ExperimentConfig) -> None:
  """Checks of config.offline (always) and of the lengths the offline objectives need."""
  o, objective = cfg.offline, cfg.train.objective
  require(math.isfinite(o.tau) and o.tau > 0, f'config.offline.tau={o.tau}: must be > 0 (DPO\'s beta; IPO\'s '
          'target margin is 1 / (2 tau))')
  require(0.0 <= o.label_smoothing < 0.5, f'config.offline.label_smoothing={o.label_smoothing}: must be in '
          '[0, 0.5) (the probability that a label is flipped; 0: off)')
  require(o.frozen_dtype in ('', 'float32', 'bfloat16'),
          f"config.offline.frozen_dtype={o.frozen_dtype!r}: use '' (as stored), 'float32' or 'bfloat16'")
  require(o.reference_logprobs in REFERENCE_LOGPROBS,
          f'config.offline.reference_logprobs={o.reference_logprobs!r}: use one of {", ".join(REFERENCE_LOGPROBS)}'
          ' (mu in every step, or computed once per data set and cached)')
  loss = objectives.get(objective).loss
  if not objectives.get(objective).offline:
    return
  require(loss == 'dpo' or o.label_smoothing == 0.0,
          f'config.offline.label_smoothing={o.label_smoothing}: only dpo smooths labels (ipo takes soft '
          'preferences as they are); set it to 0')
  require(loss == 'ipo' or not o.length_normalized,
          'config.offline.length_normalized=True: only ipo has a length-normalised variant; set it to False')
  d, m = cfg.data, cfg.model
  require(d.prompt_len + d.response_len <= m.max_len,
          f'config.model.max_len={m.max_len} is shorter than data.prompt_len + data.response_len = '
          f'{d.prompt_len + d.response_len} (the policy reads the prompt and one response)')


def check_lora(cfg: schema.ExperimentConfig) -> None:
  """config.model.lora: its values, and the runs LoRA needs (adapters train on top of a base model's weights)."""
  lora, objective = cfg.model.lora, cfg.train.objective
  require(lora.rank >= 0, f'config.model.lora.rank={lora.rank}: must be >= 0 (0: off)')
  if lora.rank == 0:
    return
  require(math.isfinite(lora.alpha) and lora.alpha > 0, f'config.model.lora.alpha={lora.alpha}: must be > 0')
  try:
    re.compile(lora.targets)
  except re.error as e:
    raise ConfigError(f'config.model.lora.targets={lora.targets!r} is not a regular expression ({e})') from None
  check_lora_targets(lora.targets, cfg.model.num_layers, cfg.model.scan_layers)
  spec = objectives.get(objective)
  require(spec.trains_policy,
          f'config.model.lora.rank={lora.rank}: LoRA trains policies (sft, the online and the offline '
          f'objectives), not a {objective!r} run; set config.model.lora.rank=0')
  if spec.offline:
    init, reference = cfg.init_checkpoint, cfg.offline.reference_checkpoint
    require(bool(init or reference), 'config.model.lora.rank > 0 trains adapters on the reference policy\'s '
            'weights: set config.init_checkpoint (or config.offline.reference_checkpoint) to its run')
    require(not (init and reference) or init == reference,
            f'config.init_checkpoint={init} differs from config.offline.reference_checkpoint={reference}: with '
            'LoRA the policy is the reference plus adapters; set only one of them')
    return
  if spec.kind == 'supervised':
    require(bool(cfg.init_checkpoint), 'config.model.lora.rank > 0 trains adapters on a base model: set '
            'config.init_checkpoint to its run (an nlhf-import or sft --workdir)')
    return
  reference = cfg.online.reference_checkpoint
  require(bool(reference), 'config.model.lora.rank > 0 trains adapters on the reference policy\'s weights: set '
          'config.online.reference_checkpoint to its run (an nlhf-import or sft --workdir)')
  require(not cfg.init_checkpoint or cfg.init_checkpoint == reference,
          f'config.init_checkpoint={cfg.init_checkpoint} differs from config.online.reference_checkpoint='
          f'{reference}: with LoRA the policy is the reference plus adapters; leave config.init_checkpoint empty')


LORA_MODULE_KINDS = ('attn', 'mlp')


def lora_modules(num_layers: int) -> list[str]:
  """The module paths that config.model.lora.targets is matched against (models/lora.py adapts the projections of
  every module whose path the regex fully matches): each layer's attention and MLP, named as unrolled layers
  ('layer_0/attn', 'layer_0/mlp', ...) whatever config.model.scan_layers says."""
  return [f'layer_{i}/{kind}' for i in range(num_layers) for kind in LORA_MODULE_KINDS]


def check_lora_targets(targets: str, num_layers: int, scan_layers: bool) -> None:
  """The regex selects at least one module and, with a scanned stack (one set of adapters for every layer), the
  same modules in every layer."""
  chosen = [path for path in lora_modules(num_layers) if re.fullmatch(targets, path)]
  if not chosen:
    raise ConfigError(f'config.model.lora.targets={targets!r} selects no projection: it must fully match a module '
                      f"path such as 'layer_0/attn' or 'layer_0/mlp' (all layers: '.*(attn|mlp)', the attention "
                      "only: '.*attn')")
  if scan_layers:
    per_layer = {kind: [path.split('/')[0] for path in chosen if path.endswith('/' + kind)]
                 for kind in LORA_MODULE_KINDS}
    for kind, layers in per_layer.items():
      if layers and len(layers) != num_layers:
        raise ConfigError(f'config.model.lora.targets={targets!r} adapts {kind} in {", ".join(layers)} only, but '
                          'with config.model.scan_layers=True every layer needs the same adapters; select '
                          f"every layer (e.g. '.*{kind}') or set config.model.scan_layers=False")


def from_config_dict(cfg: Any, num_devices: int | None = None) -> schema.ExperimentConfig:
  """ConfigDict -> validated ExperimentConfig. With `num_devices`, also checks the mesh against the model."""
  exp = build(schema.ExperimentConfig, runs.resolve(to_mapping(cfg)))
  check_values(exp)
  if num_devices is not None:
    check_against_mesh(exp, resolve_mesh_shape(exp.mesh, num_devices))
  return exp

