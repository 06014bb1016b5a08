"""Deterministic, resumable global batches over random-access example sources, built on Grain.

`grain.MapDataset.range(n).shuffle(seed).batch(B, drop_remainder=True).repeat()` is the sequence of global
batches of example indices: batch k is a pure function of (seed, k), each epoch is a fresh permutation (Grain
reseeds its index shuffle per epoch) and the remainder of an epoch is dropped, so every batch is full. Each
process maps every global batch to the rows it supplies and materialises only those; a prefetch thread
prepares the next batches while the devices compute. The iterator's state is Grain's (the index of the next
batch), saved in every checkpoint, so a resumed run sees exactly the batch an uninterrupted run would.
"""
from __future__ import annotations

from typing import Callable

import grain
import numpy as np

PREFETCH = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)


def global_batches(num_examples: int, batch_size: int, seed: int) -> grain.MapDataset:
  """Element k: the int64 example indices [batch_size] of global batch k (endless)."""
  return (grain.MapDataset.range(num_examples).shuffle(seed=seed % 2**32)
          .batch(batch_size, drop_remainder=True).repeat())


class IndexedBatches:
  """Global batches of `batch_size` example indices from range(num_examples), shuffled per epoch; this
  process gets make_batch(indices[rows]) of each."""

  def __init__(self, make_batch: Callable[[np.ndarray], dict], num_examples: int, batch_size: int, seed: int,
               rows: slice):
    if num_examples < batch_size:
      raise ValueError(f'the data set has {num_examples} examples, fewer than train.batch_size={batch_size}; '
                       'use a smaller batch or more data')
    self._make_batch, self._rows = make_batch, rows
    self.indices = global_batches(num_examples, batch_size, seed)
    self._dataset = self.indices.map(lambda idx: make_batch(np.asarray(idx)[rows])).to_iter_dataset(PREFETCH)
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  @property
  def batches_produced(self) -> int:
    return int(self._iterator.get_state()['next_index'])

  def get_state(self) -> dict:
    return {'next_index': self.batches_produced}

  def set_state(self, state: dict) -> None:
    # 'batches_produced': the key of checkpoints written before the pipeline used Grain (same meaning).
    index = int(state['next_index'] if 'next_index' in state else state['batches_produced'])
    self._iterator.set_state({'next_index': index})
