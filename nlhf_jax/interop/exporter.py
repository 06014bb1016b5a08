"""`nlhf-export`: a run -> a Hugging Face model directory that transformers and vLLM load.

  nlhf-export --workdir=runs/nash_md --out=exported/nash_md [--dtype=bfloat16] [--step=N]
  (on several hosts: the same command on each, with the launch flags of nlhf-train; process 0 writes)

Writes config.json (the family's own keys; native models as llama), the weights in the family's tensor names and
layouts (model.safetensors, or shards of at most 5 GB with model.safetensors.index.json), generation_config.json
and the tokenizer files of the run's tokenizer (a Hugging Face tokenizer folder; the built-in byte and
sentencepiece tokenizers have no Hugging Face files and are reported). Preference and reward models export their
backbone as the causal LM plus their head as two extra tensors, `nlhf.head.weight` [d_model] and
`nlhf.head.bias` [] (the judge's score is head . h + bias at the last real token, docs/models.md); config.json
then names the judge in `nlhf_head`.
"""
from __future__ import annotations

import json
import logging
import os

from absl import app, flags

from nlhf_jax import commands, logs

log = logging.getLogger(__name__)



def _define_flags() -> None:
  """The command's flags, defined when it runs (so that the library functions import without them)."""
  commands.define_launch_flags()
  flags.DEFINE_string('workdir', None, 'The run to export (an nlhf-train or nlhf-import --workdir).')
  flags.DEFINE_string('out', None, 'The directory to write.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'float16'], 'dtype of the weights written.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_float('max_shard_gb', 5.0, 'Largest safetensors file, in GB (1e9 bytes).')
  flags.mark_flags_as_required(['workdir', 'out'])

HEAD_TENSORS = ('nlhf.head.weight', 'nlhf.head.bias')


def _kind(objective: str) -> str:
  from nlhf_jax.config.objectives import model_family
  return model_family(objective)


def _token_ids(tokenizer_spec: str) -> dict:
  """bos/eos/pad ids for config.json and generation_config.json ({} without a tokenizer)."""
  if not tokenizer_spec:
    return {}
  from nlhf_jax.data.tokenizer import load_tokenizer
  tok = load_tokenizer(tokenizer_spec)
  stops = list(tok.stop_ids)
  return {'bos_token_id': tok.bos_id, 'eos_token_id': stops[0] if len(stops) == 1 else stops,
          'pad_token_id': tok.pad_id}


def _tokenizer_files(tokenizer_spec: str, out: str, token_ids: dict) -> list[str]:
  from nlhf_jax.interop.runs import copy_tokenizer_files, write_json
  copied = copy_tokenizer_files(tokenizer_spec, out) if tokenizer_spec and os.path.isdir(tokenizer_spec) else []
  if not copied:
    log.warning('the run\'s tokenizer (%r) is not a Hugging Face tokenizer folder: no tokenizer files written; '
                'give the exported model a tokenizer of its own before serving it', tokenizer_spec or 'none')
  if 'generation_config.json' not in copied and token_ids:
    write_json(os.path.join(out, 'generation_config.json'), dict(token_ids, _from_model_config=False))
    copied.append('generation_config.json')
  return copied


def export_run(workdir: str, out: str, dtype: str = 'float32', step: int | None = None, mesh=None,
               max_shard_bytes: int = 5 * 10**9) -> list[str]:
  """Writes the Hugging Face directory of the run at `workdir` into `out`; returns the files written."""
  from flax import nnx

  from nlhf_jax.config import MeshConfig, ModelConfig
  from nlhf_jax.distributed import is_leader, make_mesh
  from nlhf_jax.models import Transformer, hf
  from nlhf_jax.models.judges import PreferenceModel, RewardModel
  from nlhf_jax.training import checkpointing
  run_cfg = checkpointing.read_run_config(workdir, step)
  cfg = ModelConfig.from_dict(run_cfg.get('model', {}))
  kind = _kind(run_cfg.get('train', {}).get('objective', 'sft'))
  token_ids = _token_ids(run_cfg.get('data', {}).get('tokenizer', ''))
  hf.hf_config(cfg, dtype, token_ids)  # an inexpressible model fails here, before any read
  cls = {'language_model': Transformer, 'preference_model': PreferenceModel, 'reward_model': RewardModel}[kind]
  mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)) if mesh is None else mesh
  _, abstract = nnx.split(nnx.eval_shape(lambda: cls(cfg, nnx.Rngs(0))))
  target = checkpointing.params_target(abstract, mesh)
  params, step = checkpointing.restore_params(checkpointing.checkpoints_dir(workdir), target, step)
  extra = None
  if kind != 'language_model':
    extra = dict(zip(HEAD_TENSORS, (params['head'], params['bias'])))
    params = params['backbone']
  files = hf.save_pretrained(out, cfg, params, dtype, extra, token_ids, max_shard_bytes)
  if not is_leader():
    return []
  if extra is not None:
    _note_head(out, kind)
  files += _tokenizer_files(run_cfg.get('data', {}).get('tokenizer', ''), out, token_ids)
  log.info('exported %s (step %d, %s, %s) to %s: %s', workdir, step, cfg.family or 'native as llama', dtype, out,
           ', '.join(files))
  return files


def _note_head(out: str, kind: str) -> None:
  path = os.path.join(out, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config['nlhf_head'] = {'kind': kind, 'tensors': list(HEAD_TENSORS),
                         'score': 'head.weight . h_last + head.bias, h_last: the final-norm hidden state of the '
                                  'last real token' + ('; P(a > b | x) = sigmoid(score(x, a, b) - score(x, b, a)) '
                                                       'on the joint text x a b' if kind == 'preference_model' else
                                                       '; P(a > b | x) = sigmoid(r(x, a) - r(x, b))')}
  with open(path, 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logs.setup()
  commands.launch()
  f = flags.FLAGS
  files = export_run(f.workdir, f.out, f.dtype, f.step, max_shard_bytes=int(f.max_shard_gb * 1e9))
  if files:
    print(f'exported to {os.path.abspath(f.out)}: {", ".join(files)}', flush=True)


def run() -> None:
  _define_flags()
  commands.run(main)


if __name__ == '__main__':
  run()
