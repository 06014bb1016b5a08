"""nlhf-eval's checks, made before any model is restored: each bad input is one `error:` line (exit status 1).

The runs here are checkpoints that hold only the run's config (no parameters): a command that got as far as
restoring a model would end in a traceback, so every refusal below is known to come before any restore."""
import json
import subprocess
import sys

import ml_collections
import orbax.checkpoint as ocp
import pytest

from nlhf_jax.config import ConfigError
from nlhf_jax.evaluation import evaluate, from_runs, inputs
from nlhf_jax.training import checkpointing, guards
from nlhf_jax.training.run import Run
from tests.helpers import mesh, subprocess_env, tiny_config


def _fake_run(path, objective, tokenizer='bytes', vocab_size=256, chat_template=False, online=None,
              config_json=False):
  """A run whose checkpoint holds only its config (`online`: its online section), also as RUN/config.json when
  `config_json`."""
  config = {'train': {'objective': objective}, 'model': {'vocab_size': vocab_size},
            'data': {'tokenizer': tokenizer, 'prompt_len': 16, 'chat_template': chat_template},
            'online': online or {'sampling': {'max_new_tokens': 8}}}
  if config_json:
    path.mkdir(parents=True)
    (path / 'config.json').write_text(json.dumps(config))
  manager = ocp.CheckpointManager(str(path / 'checkpoints'), options=ocp.CheckpointManagerOptions(create=True))
  manager.save(1, args=ocp.args.Composite(meta=ocp.args.JsonSave({'config': config})))
  manager.wait_until_finished()
  manager.close()
  return str(path)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval_runs')
  spm = root / 'other.model'
  spm.write_bytes(b'not the byte vocabulary')
  prompts = root / 'prompts.jsonl'
  prompts.write_text(''.join(json.dumps({'prompt': f'sort: {w} a'}) + '\n' for w in 'bcde'))
  return {'sft': _fake_run(root / 'sft', 'sft'), 'md': _fake_run(root / 'md', 'nash_md'),
          'pm': _fake_run(root / 'pm', 'preference_model'),
          'other_tok': _fake_run(root / 'other_tok', 'sft', tokenizer=str(spm)),
          'other_vocab': _fake_run(root / 'other_vocab', 'nash_md', vocab_size=512),
          'chat': _fake_run(root / 'chat', 'nash_md', chat_template=True),
          'prompts': str(prompts), 'root': root}


def _eval(*args):
  return subprocess.run([sys.executable, '-m', 'nlhf_jax.cli.eval', *args], capture_output=True, text=True,
                        timeout=120, env=subprocess_env(8))


def _args(runs, *extra, md='md', output=None):
  return [f'--policy=sft={runs["sft"]}', f'--policy=md={runs[md]}', f'--judge={runs["pm"]}',
          f'--prompts={runs["prompts"]}', f'--output={output or runs["root"] / "out"}', *extra]


def _refused(out, *words):
  assert out.returncode == 1, out.stderr
  assert 'Traceback' not in out.stderr, out.stderr
  lines = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, out.stderr
  for word in words:
    assert word in lines[0], lines[0]


def test_policies_with_another_tokenizer_are_refused_by_name(runs):
  out = _eval(*_args(runs, md='other_tok'))
  _refused(out, 'do not share one vocabulary', f'md={runs["other_tok"]}', 'other.model', f'sft={runs["sft"]} has bytes')


def test_a_batch_that_does_not_divide_the_devices_is_refused(runs):
  _refused(_eval(*_args(runs, '--batch_size=6')), 'batch size 6', 'the 8 devices', 'e.g. 8')


@pytest.mark.parametrize('case', ['file', 'below_a_file', 'earlier'])
def test_an_unusable_output_is_refused(runs, case):
  target = runs['root'] / f'out_{case}'
  if case == 'file':
    target.write_text('mine')
    _refused(_eval(*_args(runs, output=target)), f'{target} is a file, not a folder')
    assert target.read_text() == 'mine'
  elif case == 'below_a_file':
    target.write_text('mine')
    _refused(_eval(*_args(runs, output=target / 'a' / 'b')), f'{target} is a file, not a folder')
  else:
    target.mkdir()
    (target / 'matrix.json').write_text('{"mine": 1}')
    _refused(_eval(*_args(runs, output=target)), 'already holds matrix.json', '--overwrite')
    assert (target / 'matrix.json').read_text() == '{"mine": 1}'


def test_run_flags_with_a_pipeline_directory_are_refused(runs):
  _refused(_eval(f'--workdir={runs["root"]}', '--num_prompts=4'), '--num_prompts goes with runs given by --policy')


def _config(runs, md='md', **kw):
  c = dict(policy_names=['sft', 'md'], policy_workdirs=[runs['sft'], runs[md]], reference='sft',
           preference_model=runs['pm'], oracle='', tokenizer='bytes', data_dir='', prompts_name=runs['prompts'],
           split='validation', num_prompts=256, samples_per_prompt=1, batch_size=64,
           sampling=dict(max_new_tokens=8, temperature=1.0), prompt_len=16)
  return ml_collections.ConfigDict({**c, **kw})


def test_the_batch_is_sized_to_the_prompts():
  assert inputs.batch_rows(4, 64, 8) == 8  # 4 prompts on 8 devices: one row a device, not 64 rows
  assert inputs.batch_rows(40, 64, 8) == 40
  assert inputs.batch_rows(41, 64, 8) == 48
  assert inputs.batch_rows(1000, 64, 8) == 64
  assert inputs.batch_rows(3, 64, 1) == 3
  with pytest.raises(ConfigError, match='use a multiple of 8, e.g. 16'):
    inputs.batch_rows(4, 12, 8)


def test_prepare_checks_the_runs_and_sizes_the_batch(runs):
  prompts, rows = evaluate.prepare(_config(runs), mesh(data=8))
  assert len(prompts) == 4 and rows == 8
  assert evaluate.prepare(_config(runs, samples_per_prompt=3), mesh(data=2))[1] == 12
  with pytest.raises(ConfigError, match=r'vocabularies \(model.vocab_size\) differ: .*md=.* has vocab_size 512'):
    evaluate.prepare(_config(runs, md='other_vocab'), mesh(data=8))
  with pytest.raises(ConfigError, match='is a .sft. run; give a preference_model or reward_model run'):
    evaluate.prepare(_config(runs, preference_model=runs['sft']), mesh(data=8))
  with pytest.raises(ConfigError, match='policy md=.* is a .preference_model. run, not a policy'):
    evaluate.prepare(_config(runs, md='pm'), mesh(data=8))
  with pytest.raises(FileNotFoundError, match='policy md: .*nowhere does not exist'):
    evaluate.prepare(_config(runs, policy_workdirs=[runs['sft'], str(runs['root'] / 'nowhere')]), mesh(data=8))
  with pytest.raises(ConfigError, match='num_prompts=0: must be at least 1'):
    evaluate.prepare(_config(runs, num_prompts=0), mesh(data=8))


def test_a_policy_trained_with_another_prompt_framing_is_named(runs, caplog):
  evaluate.prepare(_config(runs), mesh(data=8))
  assert not [r for r in caplog.records if 'chat template' in r.getMessage()]
  evaluate.prepare(_config(runs, md='chat'), mesh(data=8))
  assert [r.getMessage() for r in caplog.records if 'chat template' in r.getMessage()] == [
      f'eval: the prompts are framed without the chat template, as the reference sft was trained; '
      f'md={runs["chat"]} set data.chat_template=True']


def test_policy_lists_name_the_bad_item():
  assert from_runs.parse_policies('a=x, b=y')[1][0] == 'b'
  with pytest.raises(ConfigError, match="'b' is not NAME=RUN_DIR"):
    from_runs.parse_policies('a=x,b')
  with pytest.raises(ConfigError, match="the name 'a' is given twice"):
    from_runs.parse_policies('a=x,a=y')


def test_hugging_face_tokenizers_differ_by_their_special_tokens_not_their_chat_template(tmp_path):
  from nlhf_jax.evaluation.inputs import tokenizer_digest
  def folder(name, **settings):
    path = tmp_path / name
    path.mkdir()
    (path / 'tokenizer.json').write_text('{"model": {}}')
    (path / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|im_end|>', **settings}))
    return str(path)
  base = tokenizer_digest(folder('a'))
  assert base and tokenizer_digest(folder('b', chat_template='{{ x }}')) == base
  assert tokenizer_digest(folder('c', eos_token='<|endoftext|>')) != base
  assert tokenizer_digest(str(tmp_path / 'missing')) == ''


def test_a_prompted_judge_is_checked_before_any_restore(runs, tmp_path):
  """--judge_kind=prompted: the judge is a language model run with its own tokenizer (another vocabulary is
  fine), its answers single tokens of that tokenizer, its template's fields complete."""
  prompted = dict(preference_model=runs['other_vocab'], judge_kind='prompted', judge_answers=['A', 'B'],
                  judge_max_len=1024)
  assert evaluate.prepare(_config(runs, **prompted), mesh(data=8))[1] == 8
  with pytest.raises(ConfigError, match="answer 'Yes' is 3 tokens of the judge's tokenizer"):
    evaluate.prepare(_config(runs, **dict(prompted, judge_answers=['Yes', 'No'])), mesh(data=8))
  with pytest.raises(ConfigError, match='a prompted judge is a language model'):
    evaluate.prepare(_config(runs, **dict(prompted, preference_model=runs['pm'])), mesh(data=8))
  template = tmp_path / 'judge.txt'
  template.write_text('{prompt}: {response_a} or {response_b}? {verdict}')
  with pytest.raises(ConfigError, match=r'--judge_template=.*judge.txt: the template has the field \{verdict\}'):
    evaluate.prepare(_config(runs, **dict(prompted, judge_template=str(template))), mesh(data=8))
  with pytest.raises(ConfigError, match='or a language model run with --judge_kind=prompted'):
    evaluate.prepare(_config(runs, preference_model=runs['md']), mesh(data=8))


def test_prompted_judge_answers_that_are_not_single_tokens_end_in_one_error_line(runs):
  out = _eval(*_args(runs, f'--judge={runs["md"]}', '--judge_kind=prompted', '--judge_answers=first,second'))
  _refused(out, "--judge_answers: the answer 'first' is 5 tokens of the judge's tokenizer", 'single tokens')


def test_prompted_judge_flags_are_checked(runs, tmp_path):
  policies = [('sft', runs['sft']), ('md', runs['md'])]
  with pytest.raises(ConfigError, match="--judge_kind=pm: use 'prompted'"):
    from_runs.runs_config(policies, judge=runs['md'], judge_kind='pm', prompts=runs['prompts'])
  with pytest.raises(ConfigError, match='--judge_kind=prompted describes --judge, which is not given'):
    from_runs.runs_config(policies, oracle='nlhf_jax.online.oracles:more_of("a")', judge_kind='prompted',
                    prompts=runs['prompts'])
  prompted = dict(preference_model=runs['md'], judge_kind='prompted', judge_answers=['A', 'B'], judge_max_len=1024)
  with pytest.raises(FileNotFoundError, match='--judge_template=.*nowhere.txt: no such file'):
    evaluate.prepare(_config(runs, **prompted, judge_template=str(tmp_path / 'nowhere.txt')), mesh(data=8))
  from nlhf_jax.data.tokenizer import load_tokenizer
  from nlhf_jax.online import prompted as judge
  with pytest.raises(ConfigError, match="max_len=4096 is longer than the judge model's max_len=2048"):
    judge.judge_input(load_tokenizer('bytes'), judge.DEFAULT_TEMPLATE, ('A', 'B'), 4096,
                      {'answers': 'answers', 'max_len': 'max_len'}, model_max_len=2048)


@pytest.mark.parametrize('config_json', [False, True])
def test_a_run_saved_with_flat_online_sampling_options_is_read_in_the_new_layout(runs, tmp_path, config_json):
  """A run saved before config.online.sampling existed (its RUN/config.json, or its checkpoint's meta alone, holds
  online.max_new_tokens and online.temperature) is evaluated and resumed as one saved after: its response length
  is the evaluation's default, and a resume with the same options finds no online difference."""
  old = _fake_run(tmp_path / 'old', 'sft', online={'max_new_tokens': 5, 'temperature': 0.5, 'tau': 0.1},
                  config_json=config_json)
  assert Run(old).config['online'] == {'tau': 0.1, 'sampling': {'max_new_tokens': 5, 'temperature': 0.5}}
  ecfg = from_runs.runs_config([('old', old), ('md', runs['md'])], judge=runs['pm'], prompts=runs['prompts'])
  assert ecfg.sampling.to_dict() == {'max_new_tokens': 5, 'temperature': 1.0}
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'old' / 'checkpoints'))
  meta = ckpt.read_meta()  # what a resume compares with its config
  ckpt.close()
  cfg = tiny_config(**{'online.tau': 0.1, 'online.sampling.max_new_tokens': 5, 'online.sampling.temperature': 0.5})
  assert not [d for d in guards.config_differences(meta['config'], cfg) if d[0].startswith('online.')]


def test_a_pipeline_eval_config_recorded_with_flat_sampling_options_is_read_in_the_new_layout(tmp_path):
  """nlhf-eval --workdir=DIR of a pipeline whose DIR/eval/stage.json holds max_new_tokens and temperature as flat
  keys (written before the eval config's `sampling` section existed)."""
  from nlhf_jax.cli import eval as eval_cli
  (tmp_path / 'eval').mkdir()
  (tmp_path / 'eval' / 'stage.json').write_text(json.dumps({'num_prompts': 4, 'max_new_tokens': 6,
                                                            'temperature': 0.5}))
  ecfg = eval_cli.eval_config(str(tmp_path))
  assert ecfg.to_dict() == {'num_prompts': 4, 'sampling': {'max_new_tokens': 6, 'temperature': 0.5}}
