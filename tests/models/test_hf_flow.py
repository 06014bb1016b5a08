"""A tiny imported model through the whole flow, as a user runs it (docs/models.md):

nlhf-import (a Qwen 2.5-style model with its tokenizer and chat template) -> SFT on chat-rendered
demonstrations -> a preference model on the imported backbone (conversational pairs) -> nash_md with the imported
reference and that judge, interrupted and resumed on another mesh -> nlhf-eval of the runs by path ->
nlhf-export, which transformers loads with the same logits and tokenizer.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.config import from_config_dict
from nlhf_jax.config.defaults import sibling
from nlhf_jax.data import synthetic, tfds_builders
from tests.helpers import mesh, subprocess_env
from tests.models import hf_models

pytest.importorskip('transformers')
ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'experiments' / 'configs'


def _cli(module: str, *args: str, status: int = 0) -> subprocess.CompletedProcess:
  out = subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(subprocess_env(8), HOME=os.environ.get('HOME', '/tmp')))
  assert out.returncode == status, out.stderr[-3000:]
  return out


def _config(name: str, variant: str, **overrides):
  c = sibling(str(CONFIGS / 'x.py'), name).get_config(variant)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _data(data_dir: str) -> None:
  """Demonstrations (plain text, rendered by the chat template), conversational pairs and prompts."""
  demos, pairs, prompts = [], [], []
  for i in range(48):
    prompt, response = synthetic.sort_demonstration(0, i)
    demos.append({'prompt': prompt, 'response': response})
    wrong = ' '.join(response.split(' ')[::-1]) if ' ' in response else response + ' ' + response
    chosen, rejected = (response, wrong) if i % 2 else (wrong, response)  # a noisy but learnable label
    pairs.append({'prompt': [{'role': 'user', 'content': prompt}],
                  'chosen': [{'role': 'assistant', 'content': chosen}],
                  'rejected': [{'role': 'assistant', 'content': rejected}]})
    prompts.append({'prompt': prompt})
  tfds_builders.build(demos, 'demonstrations', 'demos', data_dir, 0.25)
  tfds_builders.build(pairs, 'pairs', 'pairs', data_dir, 0.25)
  tfds_builders.build(prompts, 'prompts', 'prompts', data_dir, 0.25)


@pytest.fixture(scope='module')
def imported(tmp_path_factory, devices):
  from tests.hf_assets import make_tokenizer_dir
  root = tmp_path_factory.mktemp('flow')
  model_dir = str(root / 'hf_qwen')
  make_tokenizer_dir(model_dir, 'qwen')
  from nlhf_jax.data.tokenizer import load_tokenizer
  vocab = -(-load_tokenizer(model_dir).vocab_size // 8) * 8
  model, _ = hf_models.make_model('qwen2', model_dir, vocab_size=vocab, num_hidden_layers=1)
  run = str(root / 'import')
  out = _cli('nlhf_jax.cli.hf_import', f'--hf_dir={model_dir}', f'--workdir={run}')
  assert 'imported run' in out.stdout
  data_dir = str(root / 'data')
  _data(data_dir)
  return root, model, run, data_dir


def test_import_writes_a_run_that_commands_accept(imported):
  root, model, run, _ = imported
  saved = json.loads(pathlib.Path(run, 'config.json').read_text())
  assert saved['train']['objective'] == 'import' and saved['model']['family'] == 'qwen2'
  assert saved['data']['tokenizer'] == os.path.join(run, 'tokenizer')
  assert {'tokenizer.json', 'tokenizer_config.json'} <= set(os.listdir(os.path.join(run, 'tokenizer')))
  # Training into the imported run itself is refused before any work.
  from nlhf_jax.config import ConfigError
  from nlhf_jax.trainer.preflight import check_workdir
  with pytest.raises(ConfigError, match='holds an imported model'):
    check_workdir(run)


@pytest.mark.slow
def test_the_whole_flow(imported, tmp_path):
  import torch
  import transformers
  from nlhf_jax.trainer.loop import train
  root, model, run, data_dir = imported
  common = {'data.data_dir': data_dir, 'data.chat_template': True, 'data.prompt_len': 48,
            'data.response_len': 32, 'data.seq_len': 80, 'mesh.fsdp': 2, 'mesh.data': 4, 'train.batch_size': 8,
            'train.log_every': 2, 'train.checkpoint_every': 2, 'optim.warmup_steps': 0}
  # SFT from the imported model: its shape and tokenizer come from the run.
  sft_cfg = from_config_dict(_config('sft', 'hf', **common, init_checkpoint=run, **{
      'data.name': 'demos', 'train.num_steps': 3, 'optim.learning_rate': 1e-3}), num_devices=8)
  assert sft_cfg.model.family == 'qwen2' and sft_cfg.model.num_kv_heads == 2 and sft_cfg.model.qkv_bias
  sft_dir = str(tmp_path / 'sft')
  assert int(train(sft_cfg, sft_dir).step) == 3
  # A preference model whose backbone starts from the import (a new head), on conversational pairs.
  pm_cfg = from_config_dict(_config('preference_model', 'hf', **common, init_checkpoint=run, **{
      'data.name': 'pairs', 'train.num_steps': 2, 'optim.learning_rate': 1e-3}), num_devices=8)
  pm_dir = str(tmp_path / 'pm')
  _check_backbone_warm_start(pm_cfg, run)
  assert int(train(pm_cfg, pm_dir).step) == 2
  # Nash-MD from the SFT policy with the imported reference and the learned judge; interrupted, then resumed on
  # another mesh.
  md = dict(common, **{'data.name': 'prompts', 'online.reference_checkpoint': run,
                       'online.judge_checkpoint': pm_dir, 'online.sampling.max_new_tokens': 6,
                       'train.num_steps': 4, 'optim.learning_rate': 1e-4}, init_checkpoint=sft_dir)
  md_dir = str(tmp_path / 'md')
  cfg = from_config_dict(_config('nash_md', 'hf', **md), num_devices=8)
  assert int(train(cfg, md_dir, stop_at=2).step) == 2
  cfg2 = from_config_dict(_config('nash_md', 'hf', **dict(md, **{'mesh.data': 2, 'mesh.fsdp': 2,
                                                                  'mesh.tensor': 2})), num_devices=8)
  state = train(cfg2, md_dir, mesh=mesh(data=2, fsdp=2, tensor=2))
  assert int(state.step) == 4
  lines = [json.loads(x) for x in pathlib.Path(md_dir, 'metrics.jsonl').read_text().splitlines()]
  assert lines[-1]['step'] == 4 and np.isfinite(lines[-1]['loss'])
  # nlhf-eval of the runs by path, judged by the preference model.
  out_eval = str(tmp_path / 'eval')
  _cli('nlhf_jax.cli.eval', f'--policies=sft={sft_dir},md={md_dir}', f'--judge={pm_dir}',
       '--prompts=prompts', f'--data_dir={data_dir}', '--num_prompts=8', '--max_new_tokens=6', '--batch_size=8',
       f'--output={out_eval}')
  result = json.loads(pathlib.Path(out_eval, 'matrix.json').read_text())
  assert result['policies'] == ['sft', 'md'] and 'oracle' not in result
  # What each policy was trained with comes from its run, whatever it is called here.
  assert result['per_policy']['md']['run'] == {'objective': 'nash_md', 'num_steps': 4, 'tau': cfg2.online.tau,
                                               'beta': cfg2.online.beta}
  assert result['per_policy']['sft']['run']['objective'] == 'sft'
  assert f'nash_md beta {cfg2.online.beta:g} tau {cfg2.online.tau:g}, 4 steps' in (
      pathlib.Path(out_eval, 'matrix.md').read_text())
  # The same with repeated --policy and the prompts from a JSONL file (no data set).
  prompts_file = tmp_path / 'prompts.jsonl'
  prompts_file.write_text(''.join(json.dumps({'prompt': f'sort: {w} a'}) + '\n' for w in 'bcdefghi'))
  out_file = str(tmp_path / 'eval_file')
  _cli('nlhf_jax.cli.eval', f'--policy=first={sft_dir}', f'--policy=second={md_dir}', f'--judge={pm_dir}',
       f'--prompts={prompts_file}', '--num_prompts=8', '--max_new_tokens=6', '--batch_size=8', f'--output={out_file}')
  result_file = json.loads(pathlib.Path(out_file, 'matrix.json').read_text())
  assert result_file['policies'] == ['first', 'second'] and result_file['num_prompts'] == 8
  assert result_file['per_policy']['second']['run']['objective'] == 'nash_md'
  win = np.asarray(result['preference_model']['win'])
  np.testing.assert_allclose(win + win.T, 1.0, atol=1e-6)
  # nlhf-export: transformers loads the trained policy, with the same logits and the tokenizer.
  exported = str(tmp_path / 'exported')
  _cli('nlhf_jax.cli.export', f'--workdir={md_dir}', f'--out={exported}')
  back = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation='eager').eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'sort: b a'}], add_generation_prompt=True,
                                      return_dict=True)['input_ids']
  tokens = np.asarray([ids], np.int32)
  ours = _policy_logits(md_dir, tokens)
  with torch.no_grad():
    theirs = back(torch.tensor(tokens.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # A preference model exports its backbone plus its head.
  from nlhf_jax.interop.exporter import export_run
  pm_out = str(tmp_path / 'pm_exported')
  export_run(pm_dir, pm_out, mesh=mesh(data=8))
  from nlhf_jax.models.hf.safetensors import SafetensorsReader
  reader = SafetensorsReader(pm_out)
  assert reader.shape('nlhf.head.weight') == (64,) and reader.shape('nlhf.head.bias') == ()
  assert json.loads(pathlib.Path(pm_out, 'config.json').read_text())['nlhf_head']['kind'] == 'preference_model'


def _check_backbone_warm_start(pm_cfg, run):
  """The judge's initial parameters: the imported model's, bitwise, as the backbone; the head at its init."""
  from flax import nnx

  from nlhf_jax.models.judges import PreferenceModel
  from nlhf_jax.training import checkpointing
  from nlhf_jax.trainer.loop import _warm_start_params
  m = mesh(data=4, fsdp=2)
  _, abstract = nnx.split(nnx.eval_shape(lambda: PreferenceModel(pm_cfg.model, nnx.Rngs(0))))
  target = checkpointing.params_target(abstract, m)
  initial = jax.tree.map(lambda x: jnp.full(x.shape, 7.0, x.dtype), target)
  params, step = _warm_start_params(run, target, initial)
  _, lm_abstract = nnx.split(nnx.eval_shape(lambda: __import__('nlhf_jax.models', fromlist=['Transformer'])
                                            .Transformer(pm_cfg.model, nnx.Rngs(0))))
  lm, _ = checkpointing.restore_params(checkpointing.checkpoints_dir(run), checkpointing.params_target(lm_abstract, m))
  assert step == 0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params['backbone'], lm)
  assert float(params['head'][0]) == 7.0


def _policy_logits(run: str, tokens: np.ndarray) -> np.ndarray:
  from nlhf_jax.evaluation.generate import load_policy
  policy = load_policy(run, mesh(data=1))
  logits = jax.jit(lambda params, t: policy.module(params)(t, jnp.ones(t.shape, bool))[0])(policy.params,
                                                                                           jnp.asarray(tokens))
  return np.asarray(logits)
