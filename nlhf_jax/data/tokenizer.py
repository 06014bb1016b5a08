"""Tokenizers behind one interface: the built-in byte vocabulary or a sentencepiece model.

Both reserve the same four special tokens: pad, bos, eos and a separator between prompt and response. A
sentencepiece model trained by `train_sentencepiece` has pad=0, bos=1, eos=2, unk=3 and the control piece
'<sep>' at 4; a model from elsewhere works when it defines pad, bos, eos and '<sep>'.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Iterable, Protocol

from nlhf_jax.data import bytes_vocab

SEP_PIECE = '<sep>'


class TokenizerError(ValueError):
  """A tokenizer that cannot be loaded or used with the configured model."""


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  sep_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past the four special ids (see bytes_vocab); no file needed."""
  vocab_size = bytes_vocab.VOCAB_SIZE  # 249: the ids that UTF-8 text can produce
  pad_id, bos_id, eos_id, sep_id = bytes_vocab.PAD, bytes_vocab.BOS, bytes_vocab.EOS, bytes_vocab.SEP

  def encode(self, text: str) -> list[int]:
    return bytes_vocab.encode(text)

  def decode(self, ids) -> str:
    return bytes_vocab.decode(ids)


class SentencePieceTokenizer:
  """A sentencepiece model that defines pad, bos, eos and the '<sep>' control piece."""

  def __init__(self, model_path: str):
    import sentencepiece as spm
    self.path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = int(self._sp.get_piece_size())
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    self.sep_id = self._sp.piece_to_id(SEP_PIECE)
    self._check_specials()

  def _check_specials(self) -> None:
    missing = [name for name, i in (('pad', self.pad_id), ('bos', self.bos_id), ('eos', self.eos_id)) if i < 0]
    if self._sp.id_to_piece(self.sep_id) != SEP_PIECE:
      missing.append(f'separator piece {SEP_PIECE!r}')
    if missing:
      raise TokenizerError(f'{self.path}: the sentencepiece model lacks {", ".join(missing)}; train one with '
                           '`python -m nlhf_jax.data.tokenizer_cli` (it reserves them)')

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids) -> str:
    """Skips the special ids and any id past the last piece (a model's vocabulary may be padded)."""
    specials = {self.pad_id, self.bos_id, self.eos_id, self.sep_id}
    return self._sp.decode([int(i) for i in ids if int(i) not in specials and 0 <= int(i) < self.vocab_size])


def _lines(texts_or_files: Iterable[str] | str, from_files: bool) -> Iterable[str]:
  items = [texts_or_files] if isinstance(texts_or_files, str) else texts_or_files
  for item in items:
    if not from_files:
      yield item
      continue
    with open(item, encoding='utf-8') as f:
      yield from (line.rstrip('\n') for line in f if line.strip())


def train_sentencepiece(texts: Iterable[str] | None = None, vocab_size: int = 8000, model_prefix: str = '',
                        files: Iterable[str] | None = None, model_type: str = 'unigram') -> str:
  """Trains a model on `texts` (strings) or `files` (text files, a line a sentence); returns PREFIX.model.

  Reserves pad=0, bos=1, eos=2, unk=3 and '<sep>'=4; byte fallback encodes any text, so vocab_size must
  leave room for the 256 byte pieces (at least about 300).
  """
  import sentencepiece as spm
  if (texts is None) == (files is None):
    raise TokenizerError('train_sentencepiece needs exactly one of texts= or files=')
  if not model_prefix:
    raise TokenizerError('train_sentencepiece needs model_prefix= (the output is PREFIX.model)')
  lines = _lines(files if files is not None else texts, from_files=files is not None)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
      pad_id=0, bos_id=1, eos_id=2, unk_id=3, control_symbols=[SEP_PIECE], byte_fallback=True,
      hard_vocab_limit=False, minloglevel=2)
  path = model_prefix + '.model'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  return path


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
  """'bytes' -> ByteTokenizer; a path to a .model file -> SentencePieceTokenizer."""
  if spec == 'bytes':
    return ByteTokenizer()
  if not spec.endswith('.model'):
    raise TokenizerError(f"config.data.tokenizer={spec!r} must be 'bytes' or the path of a sentencepiece "
                         '.model file')
  if not os.path.exists(spec):
    raise TokenizerError(f'config.data.tokenizer={spec!r}: no such file; train one with `python -m '
                         'nlhf_jax.data.tokenizer_cli --input=TEXT.txt --vocab_size=N --output=PREFIX` '
                         '(writes PREFIX.model), or use tokenizer=bytes')
  return SentencePieceTokenizer(spec)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Raises when the tokenizer's ids do not fit the model's embedding table."""
  if tokenizer.vocab_size > model_vocab_size:
    raise TokenizerError(f'the tokenizer has {tokenizer.vocab_size} ids but config.model.vocab_size='
                         f'{model_vocab_size}; set model.vocab_size >= {tokenizer.vocab_size}')
