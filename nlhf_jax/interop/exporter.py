"""A run -> a Hugging Face model directory that transformers and vLLM load (`export_run`; the command is
`nlhf-export`, nlhf_jax/cli/export.py). On several hosts every process calls it; process 0 writes.

Writes config.json (the family's own keys; native models as llama), the weights in the family's tensor names and
layouts (model.safetensors, or shards of at most 5 GB with model.safetensors.index.json), generation_config.json
and the tokenizer files of the run's tokenizer (a Hugging Face tokenizer folder; the built-in byte and
sentencepiece tokenizers have no Hugging Face files and are reported). A run that descends from an import
(through its init / reference checkpoints) starts config.json and generation_config.json from the imported
originals: every key the run did not change keeps its JSON value (nlhf_jax/models/hf/config.exported_config).

The default --dtype is that of the imported checkpoint's weights (torch_dtype/dtype of its config.json; float32
for native runs). When --dtype is narrower than the run's parameters, the run's change (trained minus the weights
it started from) is measured per tensor after the cast (`measure_change`): the summary is printed, and an export
that keeps less than half of the change's norm is refused unless --allow_lossy.

Every input is checked before anything is read or written: the run (a folder with checkpoints, of a kind that
exports, the step), the flags, and --out, which may not be (or lie inside) the run or hold it, and which must be
absent or empty unless --overwrite. The files are written into a temporary folder renamed into place at the end.

Preference and reward models export their backbone as the causal LM plus their head as two extra tensors,
`nlhf.head.weight` [d_model] and `nlhf.head.bias` [] (the judge's score is head . h + bias at the last real token,
docs/models.md); config.json then names the judge in `nlhf_head`.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from nlhf_jax.config import ConfigError, MeshConfig, ModelConfig
from nlhf_jax.config.objectives import model_family
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.distributed import is_leader, make_mesh
from nlhf_jax.distributed.multihost import smallest_over_processes
from nlhf_jax.interop import runs
from nlhf_jax.models import Transformer, hf
from nlhf_jax.models.judges import PreferenceModel, RewardModel
from nlhf_jax.outputs import check_dir
from nlhf_jax.training import checkpointing
from nlhf_jax.training.run import Run

log = logging.getLogger(__name__)

DTYPES = ('float32', 'bfloat16', 'float16')
HEAD_TENSORS = ('nlhf.head.weight', 'nlhf.head.bias')
KINDS = ('language_model', 'preference_model', 'reward_model')
LOSSY_BELOW = 0.5  # refused (without allow_lossy) when less than this share of the change's norm survives


class ExportPlan:
  """What an export reads and writes, every input checked (`plan`)."""

  def __init__(self, workdir, out, dtype, step, run_cfg, kind, originals, token_ids):
    self.workdir, self.out, self.dtype, self.step = workdir, out, dtype, step
    self.run_cfg, self.kind, self.originals, self.token_ids = run_cfg, kind, originals, token_ids


def _kind(objective: str) -> str:
  return model_family(objective)


def _token_ids(tokenizer_spec: str) -> dict:
  """bos/eos/pad ids for config.json and generation_config.json ({} without a tokenizer)."""
  if not tokenizer_spec:
    return {}
  tok = load_tokenizer(tokenizer_spec)
  stops = list(tok.stop_ids)
  return {'bos_token_id': tok.bos_id, 'eos_token_id': stops[0] if len(stops) == 1 else stops,
          'pad_token_id': tok.pad_id}


def _check_run(workdir: str, step: int | None) -> tuple[str, int]:
  """(the run's checkpoints directory, the step to export): the run exists, is a folder and holds that step."""
  if not os.path.exists(workdir):
    raise FileNotFoundError(f'--workdir={workdir} does not exist; give the --workdir of an nlhf-train or '
                            'nlhf-import run')
  if not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir} is a file; give the folder of an nlhf-train or nlhf-import run')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    if any(n.endswith('.safetensors') for n in os.listdir(workdir)):
      raise ConfigError(f'--workdir={workdir} is a Hugging Face model folder, not a run: it is already in the '
                        'exported form (nlhf-import turns it into a run)')
    inner = sorted(n for n in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, n, 'checkpoints')))
    hint = f' (it holds the runs {", ".join(inner[:6])}: give one of them)' if inner else ''
    raise FileNotFoundError(f'--workdir={workdir} holds no checkpoints/ folder; give the --workdir of an '
                            f'nlhf-train or nlhf-import run{hint}')
  directory = checkpointing.checkpoints_dir(workdir)
  manager = ocp.CheckpointManager(directory)
  steps = sorted(manager.all_steps())
  manager.close()
  if not steps:
    raise FileNotFoundError(f'--workdir={workdir}: no checkpoint in {directory} (the run saved none yet; train '
                            'it until its first checkpoint_every step)')
  if step is not None and step not in steps:
    raise ConfigError(f'--step={step}: the run has no checkpoint of that step; it has {", ".join(map(str, steps))}')
  return directory, steps[-1] if step is None else step


def _check_out(out: str, workdir: str, sources: list[str], overwrite: bool) -> None:
  if runs.inside(out, workdir):
    raise ConfigError(f'--out={out} is or lies inside the run --workdir={workdir}; the export would overwrite '
                      'the run\'s files: give a folder outside the run')
  for run in [workdir, *sources]:
    if '://' not in run and runs.inside(run, out):
      raise ConfigError(f'--out={out} holds the run {run}; replacing it would delete the run: give another folder')
  check_dir(out, overwrite=overwrite, empty=True)
  runs.check_writable(out, '--out')


def plan(workdir: str, out: str, dtype: str | None = None, step: int | None = None, overwrite: bool = False,
         max_shard_bytes: int = 5 * 10**9) -> ExportPlan:
  """Checks every input of an export before any weight is read or anything written; the ExportPlan."""
  workdir = checkpointing.absolute(os.path.expanduser(workdir))
  out = os.path.abspath(os.path.expanduser(out))
  if dtype is not None and dtype not in DTYPES:
    raise ConfigError(f'--dtype={dtype}: give one of {", ".join(DTYPES)}')
  if max_shard_bytes <= 0:
    raise ConfigError(f'--max_shard_gb must be positive (got {max_shard_bytes / 1e9:g})')
  _, step = _check_run(workdir, step)
  run_cfg = Run(workdir, '--workdir').config_at(step)
  objective = run_cfg.get('train', {}).get('objective', 'sft')
  kind = _kind(objective)
  if kind not in KINDS:
    raise ConfigError(f'--workdir={workdir} is a run of objective {objective!r}, which holds no model to export')
  _check_out(out, workdir, runs.source_runs(run_cfg), overwrite)
  originals = runs.originals(workdir, run_cfg)
  dtype = dtype or hf.original_dtype(originals.get('config.json', {}))
  cfg = ModelConfig.from_dict(run_cfg.get('model', {}))
  token_ids = _token_ids(run_cfg.get('data', {}).get('tokenizer', ''))
  hf.exported_config(cfg, dtype, token_ids, originals.get('config.json'))  # an inexpressible model fails here
  return ExportPlan(workdir, out, dtype, step, run_cfg, kind, originals, token_ids)


def _model_cls(kind: str):
  return {'language_model': Transformer, 'preference_model': PreferenceModel, 'reward_model': RewardModel}[kind]


def _restore(run: str, cfg, kind: str, mesh, step: int | None = None):
  cls = _model_cls(kind)
  _, abstract = nnx.split(nnx.eval_shape(lambda: cls(cfg, nnx.Rngs(0))))
  target = checkpointing.params_target(abstract, mesh)
  return checkpointing.restore_params(checkpointing.checkpoints_dir(run), target, step)


def _backbone(params: dict, kind: str) -> dict:
  return params if kind == 'language_model' else params['backbone']


def _initial(p: ExportPlan, cfg, mesh):
  """The language-model parameters the run started from (its first source run's latest checkpoint), or None with
  a warning when there is none or it cannot be read."""
  sources = runs.source_runs(p.run_cfg)
  if not sources:
    log.warning('the run names no checkpoint it started from: the change that --dtype=%s keeps is not measured',
                p.dtype)
    return None
  problem = ''
  try:
    source = Run(sources[0])
    kind = _kind(source.config.get('train', {}).get('objective', 'sft'))
    source_model = source.model_config
    if kind not in KINDS or source_model.vocab_size != cfg.vocab_size:
      problem = f'a {kind} of vocab_size {source_model.vocab_size}'
  except Exception as e:  # pylint: disable=broad-except  # the export itself does not need it
    problem = f'{type(e).__name__}: {e}'
  # The restore below is collective: every process reads the source, or none does (no process waits alone).
  if smallest_over_processes(0.0 if problem else 1.0) < 1.0:
    log.warning('cannot read the weights the run started from (%s: %s): the change that --dtype=%s keeps is not '
                'measured', sources[0], problem or 'another process cannot', p.dtype)
    return None
  try:
    params, _ = _restore(sources[0], cfg, kind, mesh)
  except Exception as e:  # pylint: disable=broad-except
    log.warning('cannot read the weights the run started from (%s: %s: %s): the change that --dtype=%s keeps is '
                'not measured', sources[0], type(e).__name__, e, p.dtype)
    return None
  return _backbone(params, kind)


def measure_change(trained: dict, initial: dict, dtype: str) -> tuple[float, list[tuple[str, float, float]]]:
  """How much of the change trained - initial survives casting both to `dtype`: (the share of the change's norm
  kept over all tensors, 1 - ||cast(t) - cast(i) - (t - i)|| / ||t - i||, or 1.0 when nothing changed; per
  tensor (path, that share, the share of changed elements that still differ after the cast)), tensors sorted by
  the share kept. Tensors that did not change are left out."""
  @jax.jit
  def sums(t, i):
    t, i = t.astype(jnp.float32), i.astype(jnp.float32)
    d = t - i
    dc = t.astype(dtype).astype(jnp.float32) - i.astype(dtype).astype(jnp.float32)
    changed = d != 0
    return jnp.sum(d * d), jnp.sum((dc - d) ** 2), jnp.sum(changed), jnp.sum(changed & (dc != 0))

  per, total, error = [], 0.0, 0.0
  flat_t = jax.tree_util.tree_flatten_with_path(trained)[0]
  flat_i = dict(jax.tree_util.tree_flatten_with_path(initial)[0])
  for path, t in flat_t:
    i = flat_i.get(path)
    if i is None or i.shape != t.shape:
      continue
    norm, err, changed, still = (float(x) for x in jax.device_get(sums(t, i)))
    if changed == 0:
      continue
    total, error = total + norm, error + err
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    per.append((name, max(0.0, 1.0 - float(np.sqrt(err / norm))), still / changed))
  kept = 1.0 if total == 0 else max(0.0, 1.0 - float(np.sqrt(error / total)))
  return kept, sorted(per, key=lambda x: x[1])


def _summary(dtype: str, kept: float, per: list) -> str:
  if not per:
    return f'--dtype={dtype}: the weights equal those the run started from; nothing to lose'
  worst = ', '.join(f'{name} {share:.0%}' for name, share, _ in per[:3])
  differ = sum(s for _, _, s in per) / len(per)
  return (f'--dtype={dtype} keeps {kept:.1%} of the run\'s change to its weights (norm of the change after the '
          f'cast; {len(per)} tensors changed, on average {differ:.0%} of their changed weights still differ); '
          f'least kept: {worst}')


def check_change(p: ExportPlan, cfg, params: dict, mesh, allow_lossy: bool) -> str:
  """'' when --dtype is not narrower than the run's parameters; else the measured summary (refused with a
  ConfigError when less than LOSSY_BELOW of the change survives and not `allow_lossy`)."""
  if jnp.finfo(jnp.dtype(p.dtype)).nmant >= jnp.finfo(jnp.dtype(cfg.param_dtype)).nmant:
    return ''
  initial = _initial(p, cfg, mesh)
  if initial is None:
    return ''
  kept, per = measure_change(_backbone(params, p.kind), initial, p.dtype)
  summary = _summary(p.dtype, kept, per)
  if kept < LOSSY_BELOW and not allow_lossy:
    raise ConfigError(f'{summary}: most of the training is lost in {p.dtype}; export with --dtype=float32, or pass '
                      '--allow_lossy to write it anyway')
  return summary


def export_run(workdir: str, out: str, dtype: str | None = None, step: int | None = None, mesh=None,
               max_shard_bytes: int = 5 * 10**9, overwrite: bool = False, allow_lossy: bool = False) -> list[str]:
  """Writes the Hugging Face directory of the run at `workdir` into `out`; returns the files written."""
  p = plan(workdir, out, dtype, step, overwrite, max_shard_bytes)
  cfg = ModelConfig.from_dict(p.run_cfg.get('model', {}))
  mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)) if mesh is None else mesh
  params, step = _restore(p.workdir, cfg, p.kind, mesh, p.step)
  summary = check_change(p, cfg, params, mesh, allow_lossy)
  if summary:
    log.warning('%s', summary)
  extra = None
  if p.kind != 'language_model':
    extra = dict(zip(HEAD_TENSORS, (params['head'], params['bias'])))
    params = params['backbone']
  config = hf.exported_config(cfg, p.dtype, p.token_ids, p.originals.get('config.json'))
  if extra is not None:
    config['nlhf_head'] = _head_note(p.kind)
  with runs.staging(p.out, 'export') as tmp:
    files = hf.save_pretrained(tmp, cfg, params, p.dtype, extra, p.token_ids, max_shard_bytes, config=config)
    if is_leader():
      files += _tokenizer_files(p, tmp)
  if not is_leader():
    return []
  log.info('exported %s (step %d, %s, %s) to %s: %s', p.workdir, step, cfg.family or 'native as llama', p.dtype,
           p.out, ', '.join(files))
  return files


def _tokenizer_files(p: ExportPlan, out: str) -> list[str]:
  """The run's tokenizer files, then generation_config.json: the imported original, else the tokenizer folder's,
  else one made of the token ids."""
  spec = p.run_cfg.get('data', {}).get('tokenizer', '')
  copied = runs.copy_tokenizer_files(spec, out) if spec and os.path.isdir(spec) else []
  if not copied:
    log.warning('the run\'s tokenizer (%r) is not a Hugging Face tokenizer folder: no tokenizer files written; '
                'give the exported model a tokenizer of its own before serving it', spec or 'none')
  generation = p.originals.get('generation_config.json')
  if generation is not None:
    with open(os.path.join(out, 'generation_config.json'), 'w') as f:
      json.dump(generation, f, indent=2)
  elif 'generation_config.json' not in copied and p.token_ids:
    runs.write_json(os.path.join(out, 'generation_config.json'), dict(p.token_ids, _from_model_config=False))
  if generation is not None or p.token_ids or 'generation_config.json' in copied:
    copied = [n for n in copied if n != 'generation_config.json'] + ['generation_config.json']
  return copied


def _head_note(kind: str) -> dict:
  return {'kind': kind, 'tensors': list(HEAD_TENSORS),
          'score': 'head.weight . h_last + head.bias, h_last: the final-norm hidden state of the last real token' +
                   ('; P(a > b | x) = sigmoid(score(x, a, b) - score(x, b, a)) on the joint text x a b'
                    if kind == 'preference_model' else '; P(a > b | x) = sigmoid(r(x, a) - r(x, b))')}

