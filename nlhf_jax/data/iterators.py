"""Deterministic, resumable batch iterators over indexable example sources.

The iterator's whole state is the number of batches it has produced; the order within each epoch is a
permutation seeded by (seed, epoch). Each process materialises only its rows of every global batch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class IndexedBatches:
  """Global batches of `batch_size` example indices from range(num_examples), shuffled per epoch."""

  def __init__(self, make_batch: Callable[[np.ndarray], dict], num_examples: int, batch_size: int, seed: int,
               rows: slice):
    if num_examples < batch_size:
      raise ValueError(f'the data set has {num_examples} examples, fewer than train.batch_size={batch_size}; '
                       'use a smaller batch or more data')
    self._make_batch, self._n, self._bs, self._seed, self._rows = make_batch, num_examples, batch_size, seed, rows
    self.batches_produced = 0

  def _indices(self, batch_number: int) -> np.ndarray:
    per_epoch = self._n // self._bs  # drop the remainder so that every batch is full
    epoch, pos = divmod(batch_number, per_epoch)
    perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
    return perm[pos * self._bs:(pos + 1) * self._bs][self._rows]

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self._make_batch(self._indices(self.batches_produced))
    self.batches_produced += 1
    return batch

  def get_state(self) -> dict:
    return {'batches_produced': self.batches_produced}

  def set_state(self, state: dict) -> None:
    self.batches_produced = int(state['batches_produced'])
