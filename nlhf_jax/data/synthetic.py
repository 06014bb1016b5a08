"""Built-in demonstration data: short word lists and their sorted order.

Each example is a pure function of (seed, index), so any process can produce any slice of any batch, and a
resumed run regenerates exactly the batches it would have seen.
"""
from __future__ import annotations

import numpy as np

from nlhf_jax.data import bytes_vocab

WORDS = ('ant', 'bee', 'cat', 'dog', 'eel', 'fox', 'gnu', 'hen', 'ibis', 'jay', 'kiwi', 'lynx', 'mole', 'newt',
         'owl', 'pig', 'quail', 'rat', 'seal', 'toad')


def example_rng(seed: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, index])


def sort_demonstration(seed: int, index: int) -> tuple[str, str]:
  """Prompt 'sort: w1 w2 ...' and response 'w(1) w(2) ...' (alphabetical)."""
  rng = example_rng(seed, index)
  n = int(rng.integers(2, 6))
  words = [WORDS[i] for i in rng.choice(len(WORDS), size=n, replace=False)]
  return 'sort: ' + ' '.join(words), ' '.join(sorted(words))


def demonstration_batch(seed: int, indices, seq_len: int) -> dict[str, np.ndarray]:
  rows = [bytes_vocab.pack_demonstration(*sort_demonstration(seed, int(i)), seq_len) for i in indices]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
