"""`nlhf-eval --export_generations=FILE`: the responses the evaluation sampled, as AlpacaEval-style JSON.

One tiny policy run (one SFT step) stands for two policies; the judge is a text oracle defined here, so that no
preference model is trained. The refusals run the command on the checkpoints without parameters of
test_eval_inputs (a command that got as far as restoring a model would end in a traceback)."""
import json

import pytest

from nlhf_jax.evaluation import evaluate, from_runs, generations
from nlhf_jax.evaluation import generate as gen
from tests.evaluation.test_eval_inputs import _eval, _fake_run, _refused
from tests.helpers import mesh, tiny_config

PROMPTS = ['sort: b a', 'sort: d c', [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]]


def longer(prompts, a_texts, b_texts):
  """A text oracle: P(a > b) = 1 for the longer response, 1/2 for a tie."""
  return [1.0 if len(a) > len(b) else 0.5 if len(a) == len(b) else 0.0 for a, b in zip(a_texts, b_texts)]


def test_records_name_the_instruction_output_and_generator():
  texts = {'sft': ['x', 'y', 'z'], 'md': ['1', '2', '3']}
  out = generations.records(PROMPTS, texts, dataset='my_prompts')
  assert out[0] == {'instruction': 'sort: b a', 'output': 'x', 'generator': 'sft', 'dataset': 'my_prompts'}
  assert [r['instruction'] for r in out[3:]] == ['sort: b a', 'sort: d c', 'hi']
  assert [(r['generator'], r['output']) for r in out[3:]] == [('md', '1'), ('md', '2'), ('md', '3')]
  assert 'dataset' not in generations.records(PROMPTS, texts)[0]


@pytest.fixture(scope='module')
def policy_run(tmp_path_factory):
  from nlhf_jax.trainer.loop import train
  root = tmp_path_factory.mktemp('export_run')
  cfg = tiny_config(**{'train.num_steps': 1, 'optim.warmup_steps': 0, 'train.async_checkpointing': False,
                       'mesh.data': 1, 'mesh.fsdp': 1, 'mesh.tensor': 1})
  train(cfg, str(root / 'sft'), mesh=mesh(1, 1, 1))
  prompts = root / 'prompts.jsonl'
  prompts.write_text(''.join(json.dumps({'prompt': p}) + '\n' for p in PROMPTS[:2] + ['sort: f e']))
  return root


def test_export_holds_the_judged_samples(policy_run, monkeypatch):
  run = str(policy_run / 'sft')
  ecfg = from_runs.runs_config([('first', run), ('second', run)], oracle=f'{__name__}:longer',
                         prompts=str(policy_run / 'prompts.jsonl'), max_new_tokens=6, batch_size=4,
                         output=str(policy_run / 'eval'), mesh='data=1')
  calls = []
  real = gen.generate
  monkeypatch.setattr(gen, 'generate', lambda *a, **k: calls.append(1) or real(*a, **k))
  path = policy_run / 'generations.json'
  result = evaluate.evaluate(ecfg, mesh(1, 1, 1), export_generations=str(path))
  assert len(calls) == 2  # one sampling pass per policy: the export reuses the evaluation's texts
  exported = json.loads(path.read_text())
  assert [r['generator'] for r in exported] == ['first'] * 3 + ['second'] * 3
  assert [r['instruction'] for r in exported[:3]] == ['sort: b a', 'sort: d c', 'sort: f e']
  assert all(set(r) == {'instruction', 'output', 'generator'} for r in exported)
  for name in ('first', 'second'):
    assert [r['output'] for r in exported if r['generator'] == name] == [s['response'] for s in result['samples'][name]]
  assert exported[0]['output'] != exported[3]['output'] or exported[1]['output'] != exported[4]['output']


@pytest.fixture(scope='module')
def fake_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('export_refusals')
  prompts = root / 'prompts.jsonl'
  prompts.write_text('{"prompt": "sort: b a"}\n')
  return {'sft': _fake_run(root / 'sft', 'sft'), 'pm': _fake_run(root / 'pm', 'preference_model'),
          'prompts': str(prompts), 'root': root}


@pytest.mark.parametrize('case', ['exists', 'folder'])
def test_an_unusable_export_path_is_refused_before_sampling(fake_runs, case):
  target = fake_runs['root'] / f'gens_{case}.json'
  target.mkdir() if case == 'folder' else target.write_text('mine')
  out = _eval(f'--policy=sft={fake_runs["sft"]}', f'--judge={fake_runs["pm"]}', f'--prompts={fake_runs["prompts"]}',
              f'--output={fake_runs["root"] / "out"}', f'--export_generations={target}')
  if case == 'folder':
    _refused(out, f'{target} is a folder; give a file path for this output')
  else:
    _refused(out, f'{target} already exists; pass --overwrite to replace it')
    assert target.read_text() == 'mine'
  assert not (fake_runs['root'] / 'out').exists()
