"""The benchmark's oracle preference P*(y > y' | x): a transitive quality part plus a cyclic style part.

  quality(x, y) = coverage - LENGTH_PENALTY * excess - REPEAT_PENALTY * repeats
    coverage = |distinct content words of y that are salient in x| / |salient words of x|
    excess   = max(0, |distinct content words of y| - |salient words of x|)
    repeats  = |content words of y| - |distinct content words of y|
  P*(a > b | x) = sigmoid(K_QUALITY * (quality(x, a) - quality(x, b)) + K_STYLE * CYCLE[style(a), style(b)])

CYCLE is antisymmetric: plain beats 'and', 'and' beats 'so', 'so' beats plain (each +1 / -1), and a response with
no style (-1) loses to every style by NO_STYLE_MARGIN. The cyclic part makes P* non-transitive, so no scalar
reward r(x, y) with P = sigmoid(r(x, a) - r(x, b)) can represent it. P* is computed so that
P*(a > b) + P*(b > a) = 1 holds exactly in floating point, and P*(a > a) = 1/2.

`make_oracle(tokenizer_spec)` adapts it to the framework's judge interface (a host oracle over token ids), named in
a config as 'nlhf_jax.benchmark.oracle:make_oracle("path/to/tokenizer.model")' (or make_oracle("bytes")).
"""
from __future__ import annotations

import numpy as np

from nlhf_jax.benchmark import language
from nlhf_jax.data.tokenizer import load_tokenizer
from nlhf_jax.online.oracles import host_oracle

K_QUALITY = 4.0  # weight of the quality difference in the logit
K_STYLE = 1.0  # weight of the style cycle in the logit
LENGTH_PENALTY = 0.3  # per distinct content word beyond the number of salient words
REPEAT_PENALTY = 0.3  # per repeated content word
NO_STYLE_MARGIN = 1.0  # a response with no style loses to any styled one by this (times K_STYLE) in the logit


def cycle_matrix() -> np.ndarray:
  """CYCLE[i, j] for styles i, j in (0, 1, 2, -1): index -1 (no style) is the last row / column."""
  m = NO_STYLE_MARGIN
  return np.array([[0.0, 1.0, -1.0, m],
                   [-1.0, 0.0, 1.0, m],
                   [1.0, -1.0, 0.0, m],
                   [-m, -m, -m, 0.0]])


CYCLE = cycle_matrix()


def quality(prompt: str, response: str) -> float:
  """The transitive part: salient-word coverage minus penalties for excess length and repetition."""
  salient = set(language.salient_words(prompt))
  words = language.content_words(response)
  distinct = set(words)
  coverage = len(distinct & salient) / max(len(salient), 1)
  excess = max(0, len(distinct) - len(salient))
  repeats = len(words) - len(distinct)
  return coverage - LENGTH_PENALTY * excess - REPEAT_PENALTY * repeats


def logit(prompt: str, a: str, b: str) -> float:
  """The preference logit; logit(x, a, b) = -logit(x, b, a) exactly."""
  q = K_QUALITY * (quality(prompt, a) - quality(prompt, b))
  return q + K_STYLE * float(CYCLE[language.style_of(a), language.style_of(b)])


def antisymmetric_sigmoid(z) -> np.ndarray:
  """sigmoid(z), computed so that f(z) + f(-z) == 1 exactly: s = sigmoid(|z|) in [1/2, 1] and 1 - s is exact."""
  z = np.asarray(z, np.float64)
  s = 1.0 / (1.0 + np.exp(-np.abs(z)))
  return np.where(z >= 0, s, 1.0 - s)


def preference(prompt: str, a: str, b: str) -> float:
  """P*(a > b | prompt)."""
  return float(antisymmetric_sigmoid(logit(prompt, a, b)))


def preferences(prompts, as_, bs) -> np.ndarray:
  """P*(a_i > b_i | prompt_i) for aligned sequences of texts, float64 [N]."""
  if not len(prompts) == len(as_) == len(bs):
    raise ValueError(f'preferences needs aligned inputs, got {len(prompts)}, {len(as_)}, {len(bs)} texts')
  z = np.array([logit(x, a, b) for x, a, b in zip(prompts, as_, bs)], np.float64)
  return antisymmetric_sigmoid(z)


def _row_texts(tokenizer, ids: np.ndarray, mask: np.ndarray, stop_at_eos: bool) -> list[str]:
  specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.sep_id}
  texts = []
  for row, row_mask in zip(np.asarray(ids), np.asarray(mask).astype(bool)):
    kept = [int(i) for i in row[row_mask]]
    if stop_at_eos and tokenizer.eos_id in kept:
      kept = kept[:kept.index(tokenizer.eos_id)]
    texts.append(tokenizer.decode([i for i in kept if i not in specials]))
  return texts


def make_oracle(tokenizer_spec: str = 'bytes'):
  """A host oracle (see nlhf_jax.online.oracles) computing P* on texts decoded with `tokenizer_spec`
  ('bytes' or a sentencepiece .model path). Prompts are [bos] text [sep] left-padded; responses text [eos]
  right-padded; special ids are dropped and a response ends at its first eos."""
  tokenizer = load_tokenizer(tokenizer_spec)

  @host_oracle
  def oracle(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
    xs = _row_texts(tokenizer, prompt, prompt_mask, stop_at_eos=False)
    as_ = _row_texts(tokenizer, response_a, response_a_mask, stop_at_eos=True)
    bs = _row_texts(tokenizer, response_b, response_b_mask, stop_at_eos=True)
    return preferences(xs, as_, bs).astype(np.float32)

  return oracle
