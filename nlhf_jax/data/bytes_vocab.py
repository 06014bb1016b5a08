"""A byte-level vocabulary for the built-in data: no tokenizer file needed.

Ids 0-3 are special (pad, bos, eos, sep); byte b is id b + 4. UTF-8 never uses the bytes 0xF5-0xFF, so any
text encodes to ids below 249 (MAX_BYTE + OFFSET + 1): it fits any model with vocab_size >= 249.
"""
from __future__ import annotations

import numpy as np

PAD, BOS, EOS, SEP = 0, 1, 2, 3
OFFSET = 4
MAX_BYTE = 0xF4  # the largest byte that occurs in UTF-8
VOCAB_SIZE = MAX_BYTE + 1 + OFFSET


def encode(text: str) -> list[int]:
  return [b + OFFSET for b in text.encode('utf-8')]


def decode(ids) -> str:
  """Skips the special ids and any id past VOCAB_SIZE (a model's vocabulary may be larger)."""
  return bytes(int(i) - OFFSET for i in ids if OFFSET <= int(i) < VOCAB_SIZE).decode('utf-8', errors='replace')


def pack_demonstration(prompt: str, response: str, seq_len: int) -> dict[str, np.ndarray]:
  """[bos] prompt [sep] response [eos], right-padded to seq_len; the loss covers response and eos.

  Raises ValueError when the example does not fit (callers decide to truncate or fail).
  """
  p, r = encode(prompt), encode(response)
  ids = [BOS] + p + [SEP] + r + [EOS]
  if len(ids) > seq_len:
    raise ValueError(f'example of {len(ids)} tokens does not fit data.seq_len={seq_len}')
  tokens = np.full(seq_len, PAD, np.int32)
  tokens[:len(ids)] = ids
  mask = np.zeros(seq_len, bool)
  mask[:len(ids)] = True
  loss_mask = np.zeros(seq_len, np.float32)
  loss_mask[len(p) + 2:len(ids)] = 1.0
  return {'tokens': tokens, 'mask': mask, 'loss_mask': loss_mask}
