"""The prompted judge (nlhf_jax/online/prompted.py): a tiny imported language model with a real tokenizer, asked
which of two responses is better, in both orders.

- antisymmetry P(y > y') + P(y' > y) = 1 to float32 rounding, and P(y > y) = 1/2;
- the two orders: the rows show y first, then y' first, with the first-position rate from both;
- answers that are not single tokens (and templates without the fields) are refused, by the config and by
  nlhf-eval, with one error line;
- a judge whose answer-token logits are set by hand gives the preferences computed by hand from its weights;
- acceptance: Nash-MD-PG trained a few steps against the prompted judge (a policy with another tokenizer), then
  nlhf-eval of the runs with the same judge by path, the first-position rate in the report.
"""
import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.config import ConfigError
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.online import prompted

pytest.importorskip('transformers')
MAX_LEN = 640  # judge tokens: the default template is 486 of the tiny tokenizer's


def _write_model(hf_dir: str, cfg) -> None:
  """config.json and safetensors of a random `cfg` model: norms 1, weights N(0, 0.3^2) (a judge whose answers
  are not certain)."""
  from nlhf_jax.models import hf
  from nlhf_jax.models.hf import safetensors
  from nlhf_jax.models.hf.tensors import entries
  rng = np.random.default_rng(0)
  tensors = {e.name: (np.ones(e.stored_shape) if e.name.endswith('norm.weight') else
                      0.3 * rng.normal(size=e.stored_shape)).astype(np.float32) for e in entries(cfg)}
  with open(os.path.join(hf_dir, 'config.json'), 'w') as f:
    json.dump(hf.hf_config(cfg), f)
  safetensors.write_sharded(hf_dir, [(n, t.shape, t.dtype) for n, t in tensors.items()], tensors.get, 10**9)


@pytest.fixture(scope='module')
def judge_run(tmp_path_factory, devices):
  """An imported tiny Llama-shaped model with a Qwen-style tokenizer and chat template."""
  from nlhf_jax.interop.importer import import_run
  from tests.hf_assets import make_tokenizer_dir
  from tests.models import hf_models
  root = tmp_path_factory.mktemp('prompted')
  hf_dir = str(root / 'hf')
  make_tokenizer_dir(hf_dir, 'qwen')
  vocab = -(-load_tokenizer(hf_dir).vocab_size // 8) * 8
  _write_model(hf_dir, dataclasses.replace(hf_models.SMALL_LLAMA, vocab_size=vocab, max_len=1024))
  return import_run(hf_dir, str(root / 'judge'))


@pytest.fixture(scope='module')
def judge_model(judge_run):
  from nlhf_jax.evaluation.generate import load_policy
  from tests.helpers import mesh
  return load_policy(judge_run, mesh())


def _input(run, template=prompted.DEFAULT_TEMPLATE, answers=('A', 'B'), max_len=MAX_LEN, chat=None):
  tok = load_tokenizer(os.path.join(run, 'tokenizer'))
  text = prompted.judge_input(tok, template, answers, max_len, {'answers': 'answers', 'max_len': 'max_len'})
  return text if chat is None else dataclasses.replace(text, chat=chat)


PROMPTS = ['sort: the fox dog', 'what is the summary of this text?', 'hello world', 'sort: cat']
YS = ['dog fox the', 'a quick summary', 'hello', 'cat cat cat cat']
Y2S = ['the fox dog jumps over the lazy dog', 'text', 'world hello world', '']


def _score(model, text, prompts, ys, y2s):
  tokens, mask = text.rows(prompts, ys, y2s)
  fn = jax.jit(prompted.scorer(model.graphdef, text.answers))
  prob, first = fn(model.params, jnp.asarray(tokens), jnp.asarray(mask))
  return np.asarray(prob), np.asarray(first), tokens, mask


def test_antisymmetric_to_float32_rounding(judge_model, judge_run):
  text = _input(judge_run)
  p, first, _, _ = _score(judge_model, text, PROMPTS, YS, Y2S)
  q, first_q, _, _ = _score(judge_model, text, PROMPTS, Y2S, YS)
  assert np.all((p > 0) & (p < 1)) and np.ptp(p) > 1e-4  # a real judge, not a constant
  np.testing.assert_allclose(p + q, 1.0, atol=2e-7)
  np.testing.assert_allclose(first, first_q, atol=1e-7)  # the same two orders, taken the other way round
  same, _, _, _ = _score(judge_model, text, PROMPTS, YS, YS)
  np.testing.assert_allclose(same, 0.5, atol=1e-7)


def test_both_orders_are_judged(judge_model, judge_run):
  """Rows 0..B-1 show y first, rows B..2B-1 show y' first; P(y > y') and the first-position probability come from
  the answer logits of both orders, as a pass of the model over the same texts right-padded gives them."""
  text = _input(judge_run)
  p, first, tokens, mask = _score(judge_model, text, PROMPTS, YS, Y2S)
  b = len(PROMPTS)
  assert tokens.shape == (2 * b, MAX_LEN) and mask[:, -1].all()
  for i in range(b):
    assert list(tokens[i][mask[i]]) == text.render(PROMPTS[i], YS[i], Y2S[i])
    assert list(tokens[b + i][mask[b + i]]) == text.render(PROMPTS[i], Y2S[i], YS[i])
  seqs = [text.render(*t) for t in zip(PROMPTS, YS, Y2S)] + [text.render(*t) for t in zip(PROMPTS, Y2S, YS)]
  right = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
  right_mask = np.zeros(right.shape, bool)
  for r, seq in enumerate(seqs):
    right[r, :len(seq)], right_mask[r, :len(seq)] = seq, True
  logits = np.asarray(jax.jit(lambda p, t, m: judge_model.module(p)(t, m)[0])(
      judge_model.params, jnp.asarray(right), jnp.asarray(right_mask)))
  a, b_id = text.answers
  last = logits[np.arange(len(seqs)), [len(seq) - 1 for seq in seqs]]
  p_first = 1.0 / (1.0 + np.exp(last[:, b_id] - last[:, a]))
  p1, p2 = p_first[:b], p_first[b:]
  np.testing.assert_allclose(p, 0.5 + 0.5 * (p1 - p2), atol=2e-5)
  np.testing.assert_allclose(first, 0.5 * (p1 + p2), atol=2e-5)


def test_a_judge_with_answer_logits_set_by_hand(judge_model, judge_run):
  """Every layer's output projections zeroed: the last position's hidden state is the final norm of its token's
  embedding, so l_A - l_B = norm(embed[t]) . (u_A - u_B) for the template's last token t. With a template that ends
  with the second response, the judge prefers the first shown by s(last token of the second): the preference of a
  pair and the first-position rate are computable from the weights alone."""
  params = jax.tree.map(np.array, judge_model.params)
  for name, layer in params.items():
    if name.startswith('layer_'):
      layer['attn']['o'][...] = 0.0
      layer['mlp']['down'][...] = 0.0
  text = _input(judge_run, template='{prompt}\nA: {response_a}\nB: {response_b}', chat=False)
  tok = text.tokenizer
  embed, scale, unembed = params['embed'], params['final_norm']['scale'], params['unembed']
  a, b = text.answers

  def s(token_id):  # the first-position logit when the input ends with this token
    h = embed[token_id] / np.sqrt(np.mean(embed[token_id] ** 2) + 1e-6) * scale
    return float(h @ (unembed[:, a] - unembed[:, b]))
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  ys, y2s = ['fox', 'dog', 'the lazy cat', 'hello'], ['cat', 'dog', 'world', 'the quick brown fox']
  p, first, _, _ = _score(dataclasses.replace(judge_model, params=params), text, PROMPTS, ys, y2s)
  for i in range(len(ys)):
    # The last token of each order's input: that of y' (shown second) in order 1, of y in order 2.
    p1 = sigmoid(s(text.render(PROMPTS[i], ys[i], y2s[i])[-1]))
    p2 = sigmoid(s(text.render(PROMPTS[i], y2s[i], ys[i])[-1]))
    assert text.render(PROMPTS[i], ys[i], y2s[i])[-1] == tok.encode(' ' + y2s[i])[-1]
    np.testing.assert_allclose(p[i], 0.5 + 0.5 * (p1 - p2), atol=1e-5)
    np.testing.assert_allclose(first[i], 0.5 * (p1 + p2), atol=1e-5)
  assert p[1] == 0.5 and abs(p[0] - 0.5) > 1e-3  # equal responses tie; different last tokens do not


def _policy_batch(tok, prompts, ys, y2s, chat=False):
  """The step's layout: left-padded prompt ids, right-padded response ids (ending at the tokenizer's eos)."""
  def pad(rows, left):
    width = max(map(len, rows))
    ids, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), bool)
    for r, row in enumerate(rows):
      cols = slice(width - len(row), width) if left else slice(0, len(row))
      ids[r, cols], mask[r, cols] = row, True
    return jnp.asarray(ids), jnp.asarray(mask)
  return (*pad([tok.prompt_ids(p, chat=chat) for p in prompts], True),
          *pad([tok.encode(y) + [tok.eos_id] for y in ys], False),
          *pad([tok.encode(y) + [tok.eos_id] for y in y2s], False))


@pytest.mark.parametrize('policy', ['bytes', 'judge_tokenizer_chat'])
def test_the_step_judge_reads_the_policy_tokens_sharded(judge_model, judge_run, policy):
  """Judge.prob inside a jitted step: the policy's ids (another tokenizer, or the judge's own with its chat
  template around the prompt) decoded on the host give the rows of the texts themselves, and the judge sharded
  over (data=4, tensor=2) gives the single-device preferences."""
  from flax import nnx
  from nlhf_jax.distributed import named, param_specs, within_mesh
  from nlhf_jax.models import Transformer
  from tests.helpers import mesh
  text = _input(judge_run)
  tok = load_tokenizer('bytes') if policy == 'bytes' else text.tokenizer
  judge = prompted.PromptedJudge(judge_model.graphdef, text, tok)
  batch = _policy_batch(tok, PROMPTS, YS, Y2S, chat=policy != 'bytes')
  tokens, mask = judge.host_rows(*batch)
  expected_tokens, _ = text.rows(PROMPTS, YS, Y2S)
  np.testing.assert_array_equal(tokens, expected_tokens)
  single = np.asarray(jax.jit(judge.prob)(judge_model.params, *batch))
  m = mesh(data=4, tensor=2)
  abstract = nnx.split(nnx.eval_shape(lambda: Transformer(judge_model.model_cfg, nnx.Rngs(0))))[1]
  params = jax.device_put(judge_model.params, named(m, param_specs(abstract)))
  assert params['layer_0']['mlp']['up'].sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  rows = jax.device_put(batch, jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec(('data', 'fsdp'))))
  sharded = np.asarray(jax.jit(within_mesh(judge.prob, m))(params, *rows))
  np.testing.assert_allclose(sharded, single, atol=1e-6)
  np.testing.assert_allclose(single, _score(judge_model, text, PROMPTS, YS, Y2S)[0], atol=1e-6)


def test_shortened_to_fit(judge_run):
  text = _input(judge_run, max_len=520)
  long = ' '.join(['the quick brown fox jumps over the lazy dog'] * 12)
  ids = text.encode('sort: the fox dog', long, 'dog')
  assert len(ids) <= 520
  # The end of the template (the question) is kept whole, and the short response survives.
  tail = text.render('', '', '')[-20:]
  assert ids[-20:] == tail and 'dog' in text.tokenizer.decode(ids)


def test_answers_that_are_not_single_tokens_are_refused(judge_run):
  with pytest.raises(ConfigError, match=r"answer 'Assistant A' is \d+ tokens of the judge's tokenizer"):
    _input(judge_run, answers=('Assistant A', 'Assistant B'))
  with pytest.raises(ConfigError, match='the two answers are the same'):
    _input(judge_run, answers=('A', 'A'))
  with pytest.raises(ConfigError, match='do not hold the judge\'s template'):
    _input(judge_run, max_len=100)
  with pytest.raises(ConfigError, match=r'has no \{response_b\}'):
    prompted.check_template('{prompt} {response_a}', 'template')
  with pytest.raises(ConfigError, match=r'has the field \{answer\}'):
    prompted.check_template('{prompt} {response_a} {response_b} {answer}', 'template')


def test_config_errors_name_the_key(judge_run, tmp_path):
  from nlhf_jax.trainer.preflight import check_inputs
  with pytest.raises(ConfigError, match='config.online.judge_answers'):
    _online_config(judge_run, **{'online.judge_answers': ('A',)})
  bad = tmp_path / 'template.txt'
  bad.write_text('Which is better, {response_a} or {response_b}?')
  cfg = _online_config(judge_run, **{'online.judge_template': str(bad)})
  with pytest.raises(ConfigError, match=r'config.online.judge_template=.*has no \{prompt\}'):
    check_inputs(cfg, str(tmp_path / 'run'))
  cfg = _online_config(judge_run, **{'online.judge_answers': ('Yes A', 'No')})
  with pytest.raises(ConfigError, match="config.online.judge_answers: the answer 'Yes A'"):
    check_inputs(cfg, str(tmp_path / 'run'))


def _online_config(judge_run, **overrides):
  from experiments.configs import nash_md
  from nlhf_jax.config import from_config_dict
  c = nash_md.get_config('tiny')
  c.online.update(judge='prompted', judge_checkpoint=judge_run, oracle='', judge_max_len=MAX_LEN)
  c.online.sampling.max_new_tokens = 8
  c.train.update(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2)
  for key, value in overrides.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  return from_config_dict(c, num_devices=8)


def test_nash_md_against_a_prompted_judge_then_evaluated_with_it(judge_run, tmp_path):
  """Acceptance: a byte-level policy trained against the imported judge (another tokenizer), then nlhf-eval of
  the runs with the same judge by path; the report has the prompted judge's matrix and its first-position rate."""
  from nlhf_jax.evaluation import evaluate, from_runs, report
  from nlhf_jax.trainer.loop import train
  cfg = _online_config(judge_run)
  md = str(tmp_path / 'md')
  assert int(train(cfg, md).step) == 2
  rows = [json.loads(x) for x in pathlib.Path(md, 'metrics.jsonl').read_text().splitlines()]
  assert all(0.0 < r['preference'] < 1.0 and np.isfinite(r['loss']) for r in rows)
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text(''.join(json.dumps({'prompt': f'sort: {w} fox dog'}) + '\n' for w in ('cat', 'the', 'a', 'so')))
  ecfg = from_runs.runs_config([('md', md), ('md_again', md)], judge=judge_run, judge_kind='prompted',
                         judge_max_len=MAX_LEN, prompts=str(prompts), num_prompts=4, max_new_tokens=6,
                         batch_size=8, output=str(tmp_path / 'eval'))
  result = evaluate.evaluate(ecfg)
  assert result['judge_kind'] == 'prompted' and 'preference_model' in result
  win = np.asarray(result['preference_model']['win'])
  np.testing.assert_allclose(win + win.T, 1.0, atol=1e-6)
  assert abs(win[0, 1] - 0.5) > 1e-4  # the judge tells the two policies' samples apart
  rate = result['judge_position']['first_position_rate']
  assert 0.0 < rate < 1.0
  paths = report.write(result, ecfg.output_dir)
  text = pathlib.Path(paths['matrix.md']).read_text()
  assert '## Prompted judge' in text and f'first-position rate {rate:.3f}' in text
