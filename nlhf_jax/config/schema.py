"""Frozen, validated experiment configuration.

ml_collections files (experiments/configs/*.py) are convenient to write and override from the command line;
the library itself only ever sees these frozen dataclasses, built by `from_config_dict`, so that every
mistake is caught once, up front, with the name of the offending key.
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """config.model.lora: low-rank adapters on the Transformer's projections (nlhf_jax/models/lora.py).

  `rank` 0 is off. Otherwise every projection (q, k, v, o; gate, up, down) of a module whose path relative to
  the Transformer ('layer_0/attn', 'layer_3/mlp', with scan_layers too) fully matches the regex
  `targets` computes x W + (alpha / rank) x A B; only A and B are trained (and checkpointed), the base weights
  stay frozen, and the reference policy of an online run is the base itself (the adapters off).
  """
  rank: int = 0
  alpha: float = 16.0
  targets: str = '.*(attn|mlp)'


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only Transformer. The defaults are the native Llama-style model (RMSNorm, RoPE, SwiGLU, one KV
  head per query head); the other fields select the conventions of the pretrained families (docs/models.md):

  - `num_kv_heads` (0: num_heads): grouped-query attention; the KV cache holds kv heads only.
  - `qkv_bias`, `out_bias`: biases on the q/k/v projections (Qwen 2.5) and on the output projection.
  - `qk_norm`: RMSNorm over head_dim on every query and key head, before RoPE (Qwen 3, Gemma 3).
  - `norm_offset`: RMSNorm multiplies by (norm_offset + weight); Gemma stores weight - 1 (norm_offset=1).
  - `scale_embeddings`: token embeddings multiplied by sqrt(d_model) (Gemma).
  - `mlp_activation`: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU with the tanh approximation, Gemma).
  - `post_norms`: RMSNorm also after attention and after the MLP, before each residual add (Gemma 2/3).
  - `query_pre_attn_scalar` (0: head_dim): attention logits are scaled by query_pre_attn_scalar ** -0.5.
  - `attn_logit_softcap`, `final_logit_softcap` (0: off): cap * tanh(x / cap) on the attention and output
    logits (Gemma 2).
  - `sliding_window` (0: off) and `layer_types`: a 'local' layer attends to the last sliding_window positions
    only (itself included); `layer_types` names each layer 'global' or 'local' (empty: every layer is local when
    sliding_window > 0, as in Mistral, else global).
  - `rope_local_theta` (0: rope_theta): the RoPE base of local layers, which then get no rope scaling (Gemma 3).
  - `rope_scaling`: 'none', 'linear' (positions divided by rope_factor) or 'llama3' (the frequency-dependent
    scaling of Llama 3.1, with rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len).
  - `family`: the Hugging Face family a model was imported from (llama, qwen2, qwen3, mistral, gemma2,
    gemma3_text) and is exported to; '' for native models (exported as llama).

  Memory and speed switches (docs/architecture.md, "Memory at size"), none of which changes the function:
  - `scan_layers`: one stack of layers run by jax.lax.scan (compile time independent of depth) instead of
    unrolled layers; parameters and caches get a leading layer axis (checkpoints convert between the two).
  - `remat`: 'none', 'dots_saveable' (keep matmul outputs) or 'full' (keep each layer's input only).
  - `param_dtype`: 'float32' or 'bfloat16' storage of the parameters (compute follows `compute_dtype`).
  - `attention_impl`: 'einsum', 'dot_product' (jax.nn.dot_product_attention for training and prefill) or 'flash'
    (a Pallas flash-attention kernel on GPU: models/flash.py). The frozen models of a step (reference, judge) run
    with this value too, whatever their runs saved: it changes no parameter.
  - `logits_chunk` (0: off): log-probabilities over vocabulary chunks of this many ids, never a [B, T, V] array.

  `lora` (LoraConfig): train low-rank adapters instead of the parameters.
  """
  preset: str = 'tiny'
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 128
  max_len: int = 128
  tie_embeddings: bool = True
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  compute_dtype: str = 'float32'  # 'float32' or 'bfloat16'; params and logits stay float32.
  pad_id: int = 0
  num_kv_heads: int = 0
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  norm_offset: float = 0.0
  scale_embeddings: bool = False
  mlp_activation: str = 'silu'
  post_norms: bool = False
  query_pre_attn_scalar: float = 0.0
  attn_logit_softcap: float = 0.0
  final_logit_softcap: float = 0.0
  sliding_window: int = 0
  layer_types: tuple[str, ...] = ()
  rope_local_theta: float = 0.0
  rope_scaling: str = 'none'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  family: str = ''
  scan_layers: bool = False
  remat: str = 'none'
  param_dtype: str = 'float32'
  attention_impl: str = 'einsum'
  logits_chunk: int = 0
  lora: LoraConfig = LoraConfig()

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def is_local(self, layer: int) -> bool:
    """Whether `layer` attends through a sliding window."""
    if not self.sliding_window:
      return False
    return not self.layer_types or self.layer_types[layer] == 'local'

  @classmethod
  def from_dict(cls, values: dict) -> 'ModelConfig':
    """A ModelConfig from a saved (JSON) model section: unknown keys dropped, missing keys at their defaults,
    lists as tuples (configs are hashed as static arguments)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    if isinstance(out.get('lora'), dict):
      lora_names = {f.name for f in dataclasses.fields(LoraConfig)}
      out['lora'] = LoraConfig(**{k: v for k, v in out['lora'].items() if k in lora_names})
    return cls(**out)


# Model fields that do not change the parameters or what the model computes in float32: a checkpoint of one
# restores onto another that differs in these only (scan_layers and param_dtype by converting the layout or the
# dtype on restore).
MODEL_RUNTIME_FIELDS = ('preset', 'compute_dtype', 'max_len', 'pad_id', 'scan_layers', 'remat', 'param_dtype',
                        'attention_impl', 'logits_chunk')


def architecture(model: ModelConfig | dict) -> dict:
  """The model fields that fix its parameters and its function (everything but MODEL_RUNTIME_FIELDS), with
  defaults for keys a saved config lacks. `lora` is left out: a LoRA run restores as its merged weights, a
  model of the same architecture (a resume compares the whole model section, lora included)."""
  values = dataclasses.asdict(model) if isinstance(model, ModelConfig) else model
  full = dataclasses.asdict(ModelConfig.from_dict(values))
  return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()
          if k not in MODEL_RUNTIME_FIELDS and k != 'lora'}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh; one axis may be -1 (filled with the remaining devices)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  name: str = 'adamw'  # 'adamw' or 'adafactor'
  learning_rate: float = 1e-3
  schedule: str = 'cosine'  # 'cosine', 'linear' or 'constant' (after warmup)
  warmup_steps: int = 0
  # Steps over which the schedule decays (warmup included); 0: train.num_steps. Set it when a run may later be
  # extended with a larger train.num_steps, so that the steps already taken keep their learning rates.
  decay_steps: int = 0
  end_lr_factor: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0  # <= 0 disables clipping


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where batches come from and how text becomes tokens.

  `source='synthetic'` is the built-in data (no download); `source='tfds'` reads the TFDS dataset `name` from
  `data_dir` (built by `nlhf-data build`). Prompts are left-padded to `prompt_len` tokens, responses right-padded
  to `response_len`; `seq_len` bounds a packed demonstration (prompt + response) for SFT.
  """
  source: str = 'synthetic'
  name: str = ''
  data_dir: str = ''
  split: str = 'train'
  eval_split: str = 'validation'
  # 'bytes' (built-in byte vocabulary), the path of a sentencepiece .model file, or a Hugging Face tokenizer
  # directory (tokenizer.json and tokenizer_config.json, e.g. the tokenizer/ folder of an nlhf-import run).
  tokenizer: str = 'bytes'
  # Plain-text prompts (and responses) rendered with the tokenizer's chat template as a one-turn conversation;
  # conversational records (lists of {role, content} messages) always are.
  chat_template: bool = False
  seq_len: int = 64
  prompt_len: int = 32
  response_len: int = 32
  overflow: str = 'truncate'  # a too-long example: 'truncate' (and count it) or 'error'
  num_examples: int = 4096  # size of the built-in synthetic data sets


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  objective: str = 'sft'
  num_steps: int = 100
  batch_size: int = 8  # global batch (all processes, all devices)
  grad_accum_steps: int = 1
  log_every: int = 10
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  on_nonfinite: str = 'stop'  # a non-finite loss or gradient: 'stop' (error naming the step) or 'skip' (count it)
  # Validation (supervised and offline objectives; trainer/validation.py): every eval_every steps (0: off) the
  # objective's loss and metrics on the first eval_batches global batches of data.eval_split.
  eval_every: int = 0
  eval_batches: int = 8


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """config.online.sampling: how the online objectives sample responses (nlhf_jax/sampling/config.py builds a
  SamplingConfig from it; an evaluation's config and the pipeline's config hold the same section)."""
  max_new_tokens: int = 32
  temperature: float = 1.0  # applied after mixing the policy and anchor logits
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1.0: off
  # Keep the parameters sharded over 'fsdp' while decoding (models larger than one device) instead of gathering
  # them once at the decode loop's boundary.
  sharded_decode: bool = False
  # Decode tensor-parallel: N consecutive devices of the mesh split each decoding model's weights (heads, MLP,
  # vocabulary) while sampling and the device groups split the rows; -1: all devices in one group; 0: off
  # (the training mesh's layout). nlhf_jax/sampling/config.py, SamplingConfig.decode_tensor.
  decode_tensor: int = 0
  # The decode loop in this many parts, each attending over the cache slots filled by its end (each step reads at
  # most 1/parts of the generated slots beyond the filled ones); one compiled copy of the loop's body each.
  # nlhf_jax/sampling/config.py, SamplingConfig.decode_segments.
  decode_segments: int = 1
  # On GPU, decode scanned models from an unrolled copy of their layers (faster; the weights' memory once more at
  # their sharding); False keeps the stack. nlhf_jax/sampling/config.py, SamplingConfig.unroll_layers.
  unroll_layers: bool = True
  # dtype of the decode loop's KV caches: '' (auto: the compute dtype; float32 on CPU, where XLA handles a
  # bfloat16 cache slowly), 'float32' or 'bfloat16' (nlhf_jax/sampling/config.py, SamplingConfig).
  kv_cache_dtype: str = ''


def decode_parts(max_new_tokens: int, decode_segments: int) -> tuple[int, ...]:
  """The steps of each part of the decode loop (SamplingOptions.decode_segments): the max_new_tokens - 1 one-token
  steps after the prefill's token, in at most `decode_segments` parts of equal length, the last one shorter. A part
  ending after step n (n tokens fed in all) attends over the prompt's slots and n more."""
  steps = max_new_tokens - 1
  if steps <= 0:
    return ()
  length = -(-steps // min(decode_segments, steps))
  return tuple(min(length, steps - start) for start in range(0, steps, length))


def decode_spans(max_new_tokens: int, decode_segments: int, prompt_width: int) -> list[tuple[int, int]]:
  """(steps, span) of each part of `decode_parts`: its one-token steps and the cache slots they attend over, those
  its last step has written (the prompt's width + the tokens fed by then; the last step feeds token n - 1 at slot
  prompt_width + n - 1), no further."""
  out, fed = [], 0
  for steps in decode_parts(max_new_tokens, decode_segments):
    fed += steps
    out.append((steps, prompt_width + fed))
  return out


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
  """Online NLHF objectives (nash_md, nash_ema, rlhf, online_ipo, ipo_md and the successors inpo, comal, mpo, sppo,
  extragradient): sampling (the `sampling` section), judge and regularisation.

  Self-play is nash_md with beta = 0 and best response is nash_md with beta = 1.
  """
  beta: float = 0.125  # weight of mu in the opponent's token-level mixture (nash_md, ipo_md); nash_ema has none
  tau: float = 0.008  # KL(pi || mu) regularisation
  ema_rate: float = 0.999  # nash_ema: theta_bar <- ema_rate * theta_bar + (1 - ema_rate) * theta
  samples_per_prompt: int = 1
  reward_to_go: bool = True  # variance-reduced KL term (positions >= n only)
  reference_checkpoint: str = ''  # the SFT run (mu); empty: mu is the policy's initial parameters
  judge: str = 'oracle'  # 'preference_model', 'reward_model', 'oracle' or 'prompted'
  judge_checkpoint: str = ''  # the preference_model / reward_model run; 'prompted': a language model's run
  # judge='prompted' (nlhf_jax/online/prompted.py): the prompt template file ('': the built-in pairwise prompt,
  # with the fields {prompt}, {response_a}, {response_b}), the two answers meaning "the first is better" and "the
  # second is better" (each one token of the judge's tokenizer), and the judge's input length in its tokens.
  judge_template: str = ''
  judge_answers: tuple[str, ...] = ('A', 'B')
  judge_max_len: int = 1024
  oracle: str = ''  # 'module:function' or 'module:factory(args)' for judge='oracle'
  binary_judgements: bool = False  # replace P(y > y') by a 0/1 draw (the model-free variant)
  # dtype of the frozen reference and judge parameters ('': as stored); 'bfloat16' halves them at real sizes.
  frozen_dtype: str = ''
  # The successors of Nash-MD (inpo, comal, mpo, sppo; docs/math.md section 8): the step size eta of the mirror
  # step their loss fits (the papers' 1 / eta for INPO and COMAL), the steps of one iteration (pi_t, the policy
  # the samples come from, is refreshed after every iteration_steps steps), and for comal and mpo the iterations
  # between two resets of their moving reference (the prox centre, the magnet) to the policy.
  eta: float = 1.0
  iteration_steps: int = 20
  prox_iterations: int = 4
  sampling: SamplingOptions = SamplingOptions()


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  """Offline preference optimisation (dpo, ipo) on a pairs data set against a frozen reference mu
  (nlhf_jax/objectives/offline.py)."""
  tau: float = 0.1  # the KL regularisation: DPO's beta; IPO's target margin is 1 / (2 tau)
  label_smoothing: float = 0.0  # dpo: the probability that a label is flipped (conservative DPO); 0: off
  length_normalized: bool = False  # ipo: log-ratios as token means (the length-normalised IPO variant)
  reference_checkpoint: str = ''  # the run of mu (the SFT run); empty: mu is the policy's initial parameters
  frozen_dtype: str = ''  # dtype of mu's parameters ('': as stored)
  # mu's log-probabilities of both responses: 'on_the_fly' (mu runs in every step) or 'cached' (computed once
  # per data set and split, before the first step, kept in the file below; the step then holds no mu).
  reference_logprobs: str = 'on_the_fly'
  # where 'cached' keeps them: '' is DATA_DIR/reference_logprobs beside the data set (data.source='tfds'); with
  # the built-in synthetic data, '' keeps them in memory only (computed again by every run).
  reference_cache_dir: str = ''


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process launch. With `initialize=True` the run calls jax.distributed.initialize; empty fields are
  read from the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or detected by JAX
  (TPU pods, Slurm). Setting any field (or JAX_COORDINATOR_ADDRESS) implies initialize."""
  initialize: bool = False
  coordinator_address: str = ''
  num_processes: int = 0  # 0: let JAX detect it (TPU, Slurm) or read the environment
  process_id: int = -1


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = 'experiment'
  seed: int = 0
  model: ModelConfig = ModelConfig()
  mesh: MeshConfig = MeshConfig()
  optim: OptimConfig = OptimConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  online: OnlineConfig = OnlineConfig()
  offline: OfflineConfig = OfflineConfig()
  distributed: DistributedConfig = DistributedConfig()
  init_checkpoint: Optional[str] = ''  # params-only warm start (e.g. an SFT model); '' (or None): none
