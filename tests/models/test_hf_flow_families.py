"""Every supported family through the whole flow of docs/models.md, light: nlhf-import -> SFT -> a preference
model on the imported backbone -> nash_md (the imported reference, that judge) -> evaluation of the SFT and nash_md
policies by the judge -> nlhf-export, which transformers loads with our logits.

tests/models/test_hf_flow.py runs the commands themselves on a Qwen 2.5-style model (longer runs, a resume on
another mesh); here the functions behind them run in process for each other family, on the smallest model with
the family's features (Gemma's interleaved local and global layers need two layers, the others one), one step
per stage on one device, short lengths and four prompts, with the family's tokenizer style.
"""
import json
import pathlib

import numpy as np
import pytest

from nlhf_jax.config import from_config_dict
from tests.helpers import mesh
from tests.models import hf_models
from tests.models.test_hf_flow import _config, _data, _policy_logits

pytest.importorskip('transformers')
FAMILIES = [f for f in hf_models.FAMILIES if f != 'qwen2']  # qwen2: test_hf_flow.py
_TOKENIZER_STYLE = {'llama': 'llama3', 'gemma2': 'gemma', 'gemma3_text': 'gemma'}
_LAYERS = {'gemma2': 2, 'gemma3_text': 2}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('flow_data'))
  _data(path)
  return path


def _import_family(family: str, root: pathlib.Path) -> str:
  """A tiny `family` model with its tokenizer, imported by nlhf-import's function: the run's folder."""
  from nlhf_jax.data.tokenizer import load_tokenizer
  from nlhf_jax.interop.importer import import_run
  from tests.hf_assets import make_tokenizer_dir
  model_dir = str(root / f'hf_{family}')
  make_tokenizer_dir(model_dir, _TOKENIZER_STYLE.get(family, 'qwen'))
  vocab = -(-load_tokenizer(model_dir).vocab_size // 8) * 8
  extra = {'layer_types': ['sliding_attention', 'full_attention']} if family == 'gemma3_text' else {}
  hf_models.make_model(family, model_dir, vocab_size=vocab, num_hidden_layers=_LAYERS.get(family, 1), **extra)
  return import_run(model_dir, str(root / 'import'))


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_the_flow_of_every_family(family, data_dir, tmp_path, devices):
  import torch
  import transformers
  from nlhf_jax.evaluation import from_runs
  from nlhf_jax.evaluation import evaluate, report
  from nlhf_jax.interop.exporter import export_run
  from nlhf_jax.trainer.loop import train
  run = _import_family(family, tmp_path)
  assert json.loads(pathlib.Path(run, 'config.json').read_text())['model']['family'] == family
  one = mesh(data=1)
  common = {'data.data_dir': data_dir, 'data.chat_template': True, 'data.prompt_len': 40, 'data.response_len': 16,
            'data.seq_len': 56, 'mesh.data': 1, 'train.batch_size': 4, 'train.num_steps': 1, 'train.log_every': 1,
            'train.checkpoint_every': 1, 'optim.warmup_steps': 0, 'optim.learning_rate': 1e-3}
  sft_dir, pm_dir, md_dir = (str(tmp_path / name) for name in ('sft', 'pm', 'md'))
  sft_cfg = from_config_dict(_config('sft', 'hf', **common, init_checkpoint=run, **{'data.name': 'demos'}), 1)
  assert sft_cfg.model.family == family and int(train(sft_cfg, sft_dir, one).step) == 1
  pm_cfg = from_config_dict(_config('preference_model', 'hf', **common, init_checkpoint=run,
                                    **{'data.name': 'pairs'}), 1)
  assert int(train(pm_cfg, pm_dir, one).step) == 1
  md_cfg = from_config_dict(_config('nash_md', 'hf', **common, init_checkpoint=sft_dir, **{
      'data.name': 'prompts', 'online.reference_checkpoint': run, 'online.judge_checkpoint': pm_dir,
      'online.sampling.max_new_tokens': 4}), 1)
  assert int(train(md_cfg, md_dir, one).step) == 1
  out_eval = str(tmp_path / 'eval')
  ecfg = from_runs.runs_config([('sft', sft_dir), ('md', md_dir)], judge=pm_dir, prompts='prompts', data_dir=data_dir,
                              num_prompts=4, max_new_tokens=4, batch_size=4, output=out_eval)
  report.write(evaluate.evaluate(ecfg, one), out_eval)
  result = json.loads(pathlib.Path(out_eval, 'matrix.json').read_text())
  assert result['policies'] == ['sft', 'md'] and result['per_policy']['md']['run']['objective'] == 'nash_md'
  win = np.asarray(result['preference_model']['win'])
  np.testing.assert_allclose(win + win.T, 1.0, atol=1e-6)
  exported = str(tmp_path / 'exported')
  export_run(md_dir, exported, mesh=one)
  back = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation='eager').eval()
  assert back.config.model_type == family
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'sort: b a d c e'}], add_generation_prompt=True,
                                      return_dict=True)['input_ids']
  tokens = np.asarray([ids], np.int32)
  assert tokens.shape[1] > hf_models.WINDOW  # the sliding windows of the local layers cut in
  with torch.no_grad():
    theirs = back(torch.tensor(tokens.astype(np.int64))).logits.numpy()
  np.testing.assert_allclose(_policy_logits(md_dir, tokens), theirs, atol=1e-4, rtol=0)
