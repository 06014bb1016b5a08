"""The benchmark task: its language, the oracle P* (antisymmetric, non-transitive) and the probes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nlhf_jax.benchmark import language, oracle, probes
from nlhf_jax.data.tokenizer import load_tokenizer, train_sentencepiece

SEED = 3


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _random_response(rng, prompt):
  """A random summary-like text: content words from the document or vocabulary, any style or none."""
  pool = language.document_words(prompt) + list(language.WORDS[:4])
  words = [pool[i] for i in rng.integers(len(pool), size=int(rng.integers(1, 6)))]
  style = int(rng.integers(-1, 3))
  if style == -1:
    return ' '.join(words + ['zz'])
  return language.render(words, style)


def _random_triples(n, seed=0):
  rng = np.random.default_rng(seed)
  prompts = [language.document(SEED, i) for i in range(n)]
  return prompts, [_random_response(rng, x) for x in prompts], [_random_response(rng, x) for x in prompts]


# ---------------------------------------------------------------- language


def test_examples_are_pure_functions_of_seed_and_index():
  assert language.demonstration(SEED, 17) == language.demonstration(SEED, 17)
  assert language.document(SEED, 17) != language.document(SEED, 18)
  assert language.document(SEED, 17) != language.document(SEED + 1, 17)
  assert language.demonstration_records(SEED, 3, offset=5)[1] == dict(
      zip(('prompt', 'response'), language.demonstration(SEED, 6)))
  assert language.prompt_records(SEED, 2, offset=5) == [{'prompt': language.document(SEED, i)} for i in (5, 6)]


def test_texts_are_short_ascii_and_well_formed():
  for i in range(300):
    prompt, response = language.demonstration(SEED, i)
    assert prompt.isascii() and response.isascii() and len(prompt) <= 60 and len(response.split()) <= 9
    assert prompt.startswith('doc: ') and len(language.salient_words(prompt)) in language.NUM_SALIENT
    assert language.style_of(response) in language.STYLES
  assert len(language.corpus_text(SEED, 4)) == 4 * 5


def test_style_is_recognisable_from_text():
  words = ['cat', 'sun', 'owl']
  assert [language.style_of(language.render(words, s)) for s in language.STYLES] == [0, 1, 2]
  for bad in ('', 'so', 'cat and', 'and cat', 'cat and sun sea', 'cat so sun', 'so cat and sun', 'cat xyz'):
    assert language.style_of(bad) == -1, bad


def test_demonstration_styles_follow_the_documented_non_uniform_distribution():
  n = 3000
  styles = np.array([language.style_of(language.demonstration(SEED, i)[1]) for i in range(n)])
  freq = np.bincount(styles, minlength=3) / n
  probs = np.asarray(language.DEMO_STYLE_PROBS)
  assert np.all(np.abs(freq - probs) < 4 * np.sqrt(probs * (1 - probs) / n)), freq
  assert np.ptp(probs) > 0.3  # deliberately far from uniform


# ---------------------------------------------------------------- oracle


def test_oracle_is_exactly_antisymmetric():
  prompts, as_, bs = _random_triples(400)
  p_ab, p_ba = oracle.preferences(prompts, as_, bs), oracle.preferences(prompts, bs, as_)
  assert np.all(p_ab + p_ba == 1.0)
  assert np.all(oracle.preferences(prompts, as_, as_) == 0.5)
  assert 0.0 < p_ab.min() and p_ab.max() < 1.0 and np.std(p_ab) > 0.1
  assert oracle.preference(prompts[0], as_[0], bs[0]) == p_ab[0]


def test_quality_rewards_coverage_and_penalises_repetition_and_length():
  prompt = 'doc: cat sun cat owl sun owl sea'
  assert language.salient_words(prompt) == ['cat', 'sun', 'owl']
  q = lambda r: oracle.quality(prompt, r)
  assert q('cat sun owl') == 1.0 and q('so cat sun owl') == 1.0
  assert q('cat sun owl') > q('cat sun') > q('cat') > q('sea')
  assert q('cat sun owl') - q('cat cat sun owl') == pytest.approx(oracle.REPEAT_PENALTY)
  assert q('cat sun owl') - q('cat sun owl sea') == pytest.approx(oracle.LENGTH_PENALTY)
  assert oracle.preference(prompt, 'cat sun owl', 'cat sun') > 0.5
  assert oracle.preference(prompt, 'cat sun owl', 'cat sun owl owl') > 0.5
  assert oracle.preference(prompt, 'cat sun owl', 'cat sun owl sea') > 0.5
  # quality outweighs the style cycle: losing one salient word is not bought back by a winning style
  assert oracle.preference(prompt, 'so cat sun', 'cat sun owl') < 0.5


def _style_matrix(prompt):
  """P*(style i > style j) between equal-quality summaries (the best summary written in each style)."""
  texts = [language.best_summary(prompt, s) for s in language.STYLES]
  return np.array([[oracle.preference(prompt, a, b) for b in texts] for a in texts])


def test_style_cycle_exists():
  prompt = language.document(SEED, 0)
  p = _style_matrix(prompt)
  assert p[0, 1] > 0.5 and p[1, 2] > 0.5 and p[2, 0] > 0.5  # plain > and > so > plain
  assert p[0, 1] == pytest.approx(_sigmoid(oracle.K_STYLE))
  no_style = language.best_summary(prompt, 0) + ' zz'
  assert language.style_of(no_style) == -1
  assert oracle.preference(prompt, language.best_summary(prompt, 2), no_style) > 0.5


def fit_bradley_terry(p, weights, steps=200):
  """Style scores r (r[0] = 0) maximising sum_ij w_ij [p_ij log s(r_i - r_j) + (1 - p_ij) log s(r_j - r_i)]
  by Newton's method (a logistic regression on one-hot differences with soft labels)."""
  pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
  x = np.array([np.eye(3)[i] - np.eye(3)[j] for i, j in pairs])[:, 1:]
  y = np.array([p[i, j] for i, j in pairs])
  w = np.array([weights[i] * weights[j] for i, j in pairs])
  r = np.zeros(2)
  for _ in range(steps):
    q = _sigmoid(x @ r)
    grad = x.T @ (w * (y - q))
    hess = (x * (w * q * (1 - q))[:, None]).T @ x + 1e-9 * np.eye(2)
    r = r + np.linalg.solve(hess, grad)
  return np.concatenate([[0.0], r])


def _sampled_style_pairs(rng, n, style_probs, offset):
  """n oracle-labelled pairs of best summaries in two different styles (styles drawn from style_probs), with
  0/1 labels drawn from P* as a human rater would give them."""
  styles, labels, truth = [], [], []
  for i in range(n):
    prompt = language.document(SEED, offset + i)
    sa, sb = rng.choice(3, size=2, replace=False, p=style_probs)
    p = oracle.preference(prompt, language.best_summary(prompt, sa), language.best_summary(prompt, sb))
    styles.append((sa, sb))
    labels.append(float(rng.uniform() < p))
    truth.append(p > 0.5)
  return np.array(styles), np.array(labels), np.array(truth)


def test_bradley_terry_fit_to_oracle_pairs_cannot_order_the_cycle():
  """On oracle-labelled pairs of sampled summaries, a Bradley-Terry model (one score per style, fit by maximum
  likelihood) gets at most 2 of the 3 style match-ups right, while a pairwise model fit to the same pairs (the
  majority label of each ordered match-up) gets all of them."""
  rng = np.random.default_rng(0)
  styles, labels, _ = _sampled_style_pairs(rng, 1500, np.asarray(language.DEMO_STYLE_PROBS), 0)
  x = (np.eye(3)[styles[:, 0]] - np.eye(3)[styles[:, 1]])[:, 1:]
  r = np.zeros(2)
  for _ in range(50):  # Newton's method for the logistic likelihood
    q = _sigmoid(x @ r)
    r += np.linalg.solve((x * (q * (1 - q))[:, None]).T @ x + 1e-9 * np.eye(2), x.T @ (labels - q))
  scores = np.concatenate([[0.0], r])
  wins = {(a, b): labels[(styles[:, 0] == a) & (styles[:, 1] == b)].mean() for a in range(3) for b in range(3)
          if a != b}
  held_styles, _, truth = _sampled_style_pairs(rng, 600, np.full(3, 1 / 3), 5000)
  bt_correct = (scores[held_styles[:, 0]] > scores[held_styles[:, 1]]) == truth
  pairwise_correct = np.array([wins[(a, b)] > 0.5 for a, b in held_styles]) == truth
  assert pairwise_correct.mean() >= 0.95
  assert bt_correct.mean() <= 0.70
  cyclic = [(0, 1), (1, 2), (2, 0)]  # the oracle's winner first: some match-up is always ordered wrongly
  assert sum(scores[i] > scores[j] for i, j in cyclic) == 2


def test_bradley_terry_fit_depends_on_the_sampling_distribution():
  p = _style_matrix(language.document(SEED, 0))
  uniform = fit_bradley_terry(p, np.full(3, 1 / 3))
  demos = fit_bradley_terry(p, np.asarray(language.DEMO_STYLE_PROBS))
  assert np.allclose(uniform, 0.0, atol=1e-6)  # the cycle is symmetric: every style scores the same
  assert np.ptp(demos) > 0.2  # under the demonstrations' distribution one style is rated clearly best
  assert len(set(np.round(demos, 6))) == 3


# ---------------------------------------------------------------- judge adapter


def _pack(tok, prompts, as_, bs, tail=()):
  """Token ids: prompts [bos] text [sep] left-padded, responses text [eos] right-padded (`tail`: ids sampled after
  eos, inside the mask)."""
  def rows(seqs, left):
    n = max(map(len, seqs))
    ids, mask = np.full((len(seqs), n), tok.pad_id, np.int32), np.zeros((len(seqs), n), bool)
    for k, s in enumerate(seqs):
      sl = slice(n - len(s), n) if left else slice(0, len(s))
      ids[k, sl], mask[k, sl] = s, True
    return ids, mask
  x = rows([[tok.bos_id] + tok.encode(t) + [tok.sep_id] for t in prompts], left=True)
  a = rows([tok.encode(t) + [tok.eos_id] + list(tail) for t in as_], left=False)
  b = rows([tok.encode(t) + [tok.eos_id] for t in bs], left=False)
  return (*x, *a, *b)


def test_host_oracle_matches_preferences_on_the_texts():
  tok = load_tokenizer('bytes')
  prompts, as_, bs = _random_triples(32, seed=1)
  fn = oracle.make_oracle('bytes')
  assert fn.runs_on_host
  got = fn(*_pack(tok, prompts, as_, bs))
  assert got.dtype == np.float32 and got.shape == (32,)
  np.testing.assert_allclose(got, oracle.preferences(prompts, as_, bs), rtol=0, atol=1e-7)
  after_eos = fn(*_pack(tok, prompts, as_, bs, tail=tok.encode(' so cat')))
  np.testing.assert_array_equal(after_eos, got)  # a response ends at its first eos


def test_host_oracle_runs_as_a_configured_judge():
  import jax
  from nlhf_jax.online.judges import make_judge
  prompts, as_, bs = _random_triples(8, seed=2)
  judge = make_judge('oracle', mesh=None, oracle='nlhf_jax.benchmark.oracle:make_oracle("bytes")')
  got = jax.jit(lambda *t: judge.prob(None, *t))(*_pack(load_tokenizer('bytes'), prompts, as_, bs))
  np.testing.assert_allclose(np.asarray(got), oracle.preferences(prompts, as_, bs), atol=1e-6)


def test_host_oracle_with_a_sentencepiece_model(tmp_path):
  path = train_sentencepiece(language.corpus_text(SEED, 200), vocab_size=300, model_prefix=str(tmp_path / 'bench'))
  prompts, as_, bs = _random_triples(16, seed=3)
  got = oracle.make_oracle(path)(*_pack(load_tokenizer(path), prompts, as_, bs))
  np.testing.assert_allclose(got, oracle.preferences(prompts, as_, bs), rtol=0, atol=1e-7)


# ---------------------------------------------------------------- probes


def test_probes_cover_every_style_and_kind():
  prompt = language.document(SEED, 1)
  table = probes.probe_responses(prompt)
  assert list(table) == probes.probe_names() and len(table) == 3 * len(probes.PROBE_KINDS)
  for name, text in table.items():
    assert language.STYLE_NAMES[language.style_of(text)] == name.split('/')[0]
  assert oracle.quality(prompt, table['plain/best']) == 1.0
  assert all(oracle.quality(prompt, table[f'so/{k}']) < 1.0 for k in ('drop', 'repeat', 'extra'))


def test_exploitability_of_one_style_and_of_the_nash_mixture():
  prompts = [language.document(SEED, i) for i in range(20)]
  one_style = [language.best_summary(x, 0) for x in prompts]
  rate, name = probes.exploitability(prompts, one_style)
  assert name == 'so/best' and rate == pytest.approx(_sigmoid(oracle.K_STYLE))
  mixture = [[language.best_summary(x, s) for s in language.STYLES] for x in prompts]
  rate, _ = probes.exploitability(prompts, mixture)
  assert rate == pytest.approx(0.5)  # the Nash equilibrium: no probe wins more than half
  demos = [language.demonstration(SEED, i)[1] for i in range(20)]
  assert probes.exploitability(prompts, demos)[0] > 0.6
  assert math.isclose(probes.probe_win_rates(prompts, one_style)['plain/best'], 0.5)
