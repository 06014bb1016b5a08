"""The benchmark's synthetic language: short 'documents' (prompts) and their 'summaries' (responses).

A document is 'doc:' followed by 5-9 words from `WORDS`; its salient words are those that occur at least twice
(2 or 3 of them). A summary lists content words in one of three styles, recognisable from the text alone:

- style 0 'plain':  'cat sun owl'
- style 1 'and':    'cat and sun and owl'   (content words joined by 'and'; at least two content words)
- style 2 'so':     'so cat sun owl'        (the marker 'so' first, then content words)

Anything else (an empty text, an unknown word, a misplaced marker) has no style (-1).

Demonstrations come from a noisy generator: the salient words with some dropped, an extra word inserted and a
word repeated at random, in a style drawn from the NON-uniform `DEMO_STYLE_PROBS`. Every example is a pure
function of (seed, index), so any process can produce any slice of the data.
"""
from __future__ import annotations

import numpy as np

WORDS = ('ant', 'bee', 'cat', 'cow', 'dog', 'elk', 'fox', 'hen', 'owl', 'pig', 'ram', 'yak',
         'sun', 'sky', 'sea', 'ice', 'oak', 'elm', 'ivy', 'mud', 'box', 'cup', 'jar', 'key')
PROMPT_PREFIX = 'doc:'
AND, SO = 'and', 'so'
MARKERS = (AND, SO)
STYLES = (0, 1, 2)
STYLE_NAMES = ('plain', 'and', 'so')
NO_STYLE = -1

NUM_SALIENT = (2, 3)  # salient words per document (each occurs twice)
NUM_FILLER = (1, 2, 3)  # words that occur once
DEMO_STYLE_PROBS = (0.6, 0.3, 0.1)  # the demonstrations' style distribution (deliberately not uniform)
DROP_PROB = 0.2  # each salient word is left out of a demonstration with this probability (two always stay)
EXTRA_PROB = 0.3  # a demonstration gets one non-salient word inserted with this probability
REPEAT_PROB = 0.15  # a demonstration repeats one of its words with this probability

_WORD_SET = frozenset(WORDS)


def example_rng(seed: int, index: int, stream: int) -> np.random.Generator:
  """The generator of example `index`; `stream` separates the document's draws from the summary's."""
  return np.random.default_rng([seed, index, stream])


def document(seed: int, index: int) -> str:
  """'doc: w1 w2 ...': the salient words twice each and the filler words once, shuffled."""
  rng = example_rng(seed, index, 0)
  n_salient, n_filler = int(rng.choice(NUM_SALIENT)), int(rng.choice(NUM_FILLER))
  chosen = [WORDS[i] for i in rng.choice(len(WORDS), size=n_salient + n_filler, replace=False)]
  words = chosen[:n_salient] * 2 + chosen[n_salient:]
  order = rng.permutation(len(words))
  return ' '.join([PROMPT_PREFIX] + [words[i] for i in order])


def document_words(prompt: str) -> list[str]:
  """The words of a document, without the 'doc:' prefix."""
  words = prompt.split()
  return words[1:] if words and words[0] == PROMPT_PREFIX else words


def salient_words(prompt: str) -> list[str]:
  """The words that occur at least twice in the document, in order of first occurrence."""
  words = document_words(prompt)
  return [w for i, w in enumerate(words) if words.count(w) >= 2 and w not in words[:i]]


def filler_words(prompt: str) -> list[str]:
  """The document's words that occur once, in order."""
  words = document_words(prompt)
  return [w for w in words if words.count(w) == 1]


def render(words, style: int) -> str:
  """Content words written in `style` (0 plain, 1 joined by 'and', 2 'so' first)."""
  words = list(words)
  if style == 1:
    return f' {AND} '.join(words)
  if style == 2:
    return ' '.join([SO] + words)
  if style == 0:
    return ' '.join(words)
  raise ValueError(f'style must be one of {STYLES}, got {style!r}')


def style_of(response: str) -> int:
  """0, 1 or 2 when the response is a well-formed summary in that style, else -1 (see the module docstring)."""
  tokens = response.split()
  if not tokens or any(t not in _WORD_SET and t not in MARKERS for t in tokens):
    return NO_STYLE
  if tokens[0] == SO:
    return 2 if len(tokens) >= 2 and all(t in _WORD_SET for t in tokens[1:]) else NO_STYLE
  if all(t in _WORD_SET for t in tokens):
    return 0
  content, joins = tokens[0::2], tokens[1::2]
  if (len(tokens) >= 3 and len(tokens) % 2 == 1 and all(t == AND for t in joins)
      and all(t in _WORD_SET for t in content)):
    return 1
  return NO_STYLE


def content_words(response: str) -> list[str]:
  """The response's words other than the style markers, in order (unknown words included)."""
  return [t for t in response.split() if t not in MARKERS]


def best_summary(prompt: str, style: int) -> str:
  """The highest-quality summary of `prompt` in `style`: every salient word once, nothing else."""
  return render(salient_words(prompt), style)


def _noisy_words(prompt: str, rng: np.random.Generator) -> list[str]:
  salient = salient_words(prompt)
  keep = rng.random(len(salient)) >= DROP_PROB
  while keep.sum() < 2:  # a summary keeps at least two salient words, so that every style can write it
    keep[rng.integers(len(salient))] = True
  words = [w for w, k in zip(salient, keep) if k]
  if rng.random() < EXTRA_PROB:
    pool = filler_words(prompt) or list(WORDS)
    words.insert(int(rng.integers(len(words) + 1)), pool[int(rng.integers(len(pool)))])
  if rng.random() < REPEAT_PROB:
    i = int(rng.integers(len(words)))
    words.insert(i + 1, words[i])
  return words


def demonstration_style(seed: int, index: int) -> int:
  """The style of demonstration `index`, drawn from DEMO_STYLE_PROBS."""
  return int(example_rng(seed, index, 1).choice(len(STYLES), p=DEMO_STYLE_PROBS))


def demonstration(seed: int, index: int) -> tuple[str, str]:
  """(prompt, noisy summary) of example `index`: a pure function of (seed, index)."""
  prompt = document(seed, index)
  words = _noisy_words(prompt, example_rng(seed, index, 2))
  return prompt, render(words, demonstration_style(seed, index))


def prompt_records(seed: int, n: int, offset: int = 0) -> list[dict]:
  """Prompt records {'prompt'} of examples offset .. offset + n - 1."""
  return [{'prompt': document(seed, i)} for i in range(offset, offset + n)]


def demonstration_records(seed: int, n: int, offset: int = 0) -> list[dict]:
  """Demonstration records {'prompt', 'response'} of examples offset .. offset + n - 1."""
  return [dict(zip(('prompt', 'response'), demonstration(seed, i))) for i in range(offset, offset + n)]


def corpus_text(seed: int, n: int) -> list[str]:
  """Lines for training a tokenizer: n documents, their demonstrations and their best summary in each style."""
  lines = []
  for i in range(n):
    prompt, response = demonstration(seed, i)
    lines += [prompt, response] + [best_summary(prompt, s) for s in STYLES]
  return lines
