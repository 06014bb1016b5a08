"""Tokenizers behind one interface: the built-in byte vocabulary, a sentencepiece model or a Hugging Face
tokenizer directory (nlhf_jax/data/hf_tokenizer.py).

The interface (`Tokenizer`, in nlhf_jax/data/tokenizer_api.py with `TokenizerError`; both importable from here):
- vocab_size, pad_id; bos_id (None: no bos goes before a prompt); eos_id (ends a response in training data
  without a chat template); stop_ids (every id that ends a sampled response: eos_id and, with a chat template,
  its end-of-turn id); sep_id (the native prompt/response separator; None for Hugging Face tokenizers);
  has_chat_template.
- encode(text) adds no special tokens; decode(ids) skips special ids and ids >= vocab_size (a model's vocabulary
  may be padded).
- prompt_ids(prompt, chat=False) and response_ids(response, prompt=None, chat=False) frame a prompt and a
  response. A prompt or response may be a string or a conversation (a list of {'role', 'content'} messages);
  conversations, and strings with chat=True, go through the tokenizer's chat template.

The native tokenizers (bytes, sentencepiece) frame prompts as [bos] text [sep] and responses as text [eos], and
have no chat template: a conversation or chat=True raises TokenizerError. They reserve the same four special
tokens: pad, bos, eos and the separator. A sentencepiece model trained by `train_sentencepiece` has pad=0,
bos=1, eos=2, unk=3 and the control piece '<sep>' at 4; a model from elsewhere works when it defines pad, bos,
eos and '<sep>'.
"""
from __future__ import annotations

import functools
import io
import os
import re
from typing import Iterable

from nlhf_jax import outputs
from nlhf_jax.data import bytes_vocab, hf_tokenizer, readers
from nlhf_jax.data.tokenizer_api import Text, Tokenizer, TokenizerError, is_conversation

SEP_PIECE = '<sep>'


class _NativeFraming:
  """[bos] text [sep] prompts and text [eos] responses; no chat template."""
  has_chat_template = False
  name = 'the tokenizer'

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return (self.eos_id,)

  def prompt_ids(self, prompt: Text, chat: bool = False) -> list[int]:
    self._check_plain(prompt, chat)
    return [self.bos_id] + self.encode(prompt) + [self.sep_id]

  def response_ids(self, response: Text, prompt: Text | None = None, chat: bool = False) -> list[int]:
    self._check_plain(response, chat or is_conversation(prompt))
    return self.encode(response) + [self.eos_id]

  def _check_plain(self, text, chat: bool) -> None:
    if chat or is_conversation(text):
      raise TokenizerError(f'{self.name} has no chat template, so it cannot encode conversations '
                           '(lists of messages) or data.chat_template=True; set data.tokenizer to a Hugging Face '
                           'tokenizer directory with a chat template (tokenizer.json, tokenizer_config.json)')


class ByteTokenizer(_NativeFraming):
  """UTF-8 bytes shifted past the four special ids (see bytes_vocab); no file needed."""
  vocab_size = bytes_vocab.VOCAB_SIZE  # 249: the ids that UTF-8 text can produce
  pad_id, bos_id, eos_id, sep_id = bytes_vocab.PAD, bytes_vocab.BOS, bytes_vocab.EOS, bytes_vocab.SEP
  name = 'the byte tokenizer (data.tokenizer=bytes)'

  def encode(self, text: str) -> list[int]:
    return bytes_vocab.encode(text)

  def decode(self, ids) -> str:
    return bytes_vocab.decode(ids)


class SentencePieceTokenizer(_NativeFraming):
  """A sentencepiece model that defines pad, bos, eos and the '<sep>' control piece."""

  def __init__(self, model_path: str):
    import sentencepiece as spm
    self.path = model_path
    self.name = f'the sentencepiece model {model_path}'
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:
      raise TokenizerError(f'{model_path}: not a sentencepiece model ({_spm_reason(e)}); give a .model file written '
                           'by sentencepiece (e.g. by nlhf-tokenizer), a Hugging Face tokenizer directory or '
                           "'bytes'") from None
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
                           '`python -m nlhf_jax.cli.tokenizer` (it reserves them)')

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids) -> str:
    """Skips the special ids and any id past the last piece (a model's vocabulary may be padded)."""
    specials = {self.pad_id, self.bos_id, self.eos_id, self.sep_id}
    return self._sp.decode([int(i) for i in ids if int(i) not in specials and 0 <= int(i) < self.vocab_size])


def _spm_reason(e: BaseException) -> str:
  """sentencepiece's message without its source location ('INTERNAL: src/x.cc(12) [check] reason' -> 'reason')."""
  text = ' '.join(str(e).split())
  reason = text.rsplit('] ', 1)[-1].strip() if '] ' in text else text
  return reason or text


def _training_failure(reason: str, vocab_size: int) -> str:
  needed = re.search(r'smaller than required_chars\. \d+ vs (\d+)', reason)
  if needed:
    return (f'vocab_size={vocab_size} is smaller than the {needed.group(1)} pieces this corpus needs (one per '
            f'character it uses, 256 byte pieces and 5 special ones); raise it to at least {needed.group(1)}')
  return f'sentencepiece cannot train this model: {reason}'


def _lines(texts_or_files: Iterable[str] | str, from_files: bool) -> Iterable[str]:
  items = [texts_or_files] if isinstance(texts_or_files, str) else texts_or_files
  for item in items:
    if not from_files:
      yield item
      continue
    yield from (line for _, line in readers.iter_lines(item) if line.strip())


MIN_VOCAB_SIZE = 5 + 256  # pad, bos, eos, unk and <sep>, then one piece per byte (byte fallback)
_SPM_MAX_SENTENCE = 4192  # sentencepiece's default max_sentence_length, in bytes; longer sentences are skipped


def train_sentencepiece(texts: Iterable[str] | None = None, vocab_size: int = 8000, model_prefix: str = '',
                        files: Iterable[str] | None = None, model_type: str = 'unigram') -> str:
  """Trains a model on `texts` (strings) or `files` (UTF-8 text files, a line a sentence); returns PREFIX.model,
  written by rename (an interrupted write leaves the old file or none; it replaces an existing one).

  Reserves pad=0, bos=1, eos=2, unk=3 and '<sep>'=4; byte fallback encodes any text, so vocab_size must
  leave room for the 256 byte pieces (more than MIN_VOCAB_SIZE; at least about 300). Every text is used, however
  long (sentencepiece would skip the ones over its max_sentence_length). Problems (no text, a vocabulary too small
  for the corpus's characters) raise TokenizerError.
  """
  import sentencepiece as spm
  if (texts is None) == (files is None):
    raise TokenizerError('train_sentencepiece needs exactly one of texts= or files=')
  if not model_prefix:
    raise TokenizerError('train_sentencepiece needs model_prefix= (the output is PREFIX.model)')
  if vocab_size <= MIN_VOCAB_SIZE:
    raise TokenizerError(f'vocab_size={vocab_size} leaves no room for pieces: {MIN_VOCAB_SIZE} ids are reserved '
                         '(pad, bos, eos, unk, <sep> and 256 byte pieces); use at least about 300')
  lines = list(_lines(files if files is not None else texts, from_files=files is not None))
  if not any(line.strip() for line in lines):
    raise TokenizerError('no text to train a tokenizer on: the inputs hold no non-blank text')
  longest = max(len(line.encode('utf-8', 'surrogatepass')) for line in lines)
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, control_symbols=[SEP_PIECE], byte_fallback=True,
        hard_vocab_limit=False, max_sentence_length=max(_SPM_MAX_SENTENCE, longest), minloglevel=2)
  except RuntimeError as e:
    raise TokenizerError(_training_failure(_spm_reason(e), vocab_size)) from None
  path = model_prefix + '.model'
  outputs.write_bytes(path, buf.getvalue())
  return path


_KINDS_HINT = ("'bytes' or the path of a sentencepiece .model file or of a Hugging Face tokenizer directory "
               '(holding tokenizer.json)')


def _hf_directory(spec: str) -> Tokenizer:
  if os.path.exists(os.path.join(spec, hf_tokenizer.TOKENIZER_JSON)):
    return hf_tokenizer.HFTokenizer(spec)
  if os.path.exists(os.path.join(spec, 'tokenizer.model')):
    raise TokenizerError(f'config.data.tokenizer={spec!r}: the directory has tokenizer.model but no tokenizer.json; '
                         'write one with transformers (AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)), or '
                         'give the .model file itself if it reserves pad, bos, eos and <sep>')
  raise TokenizerError(f'config.data.tokenizer={spec!r}: the directory has no tokenizer.json; give a Hugging Face '
                       'tokenizer directory (tokenizer.json, tokenizer_config.json), a sentencepiece .model file or '
                       "'bytes'")


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
  """'bytes' -> ByteTokenizer; a .model file -> SentencePieceTokenizer; a directory -> HFTokenizer."""
  if spec == 'bytes':
    return ByteTokenizer()
  if os.path.isdir(spec):
    return _hf_directory(spec)
  if spec.endswith('.model'):
    if not os.path.exists(spec):
      raise TokenizerError(f'config.data.tokenizer={spec!r}: no such file; train one with `python -m '
                           'nlhf_jax.cli.tokenizer --input=TEXT.txt --vocab_size=N --output=PREFIX` '
                           '(writes PREFIX.model), or use tokenizer=bytes')
    return SentencePieceTokenizer(spec)
  if os.path.basename(spec) == 'tokenizer.json' and os.path.isfile(spec):
    return _hf_directory(os.path.dirname(spec) or '.')
  if os.path.exists(spec):
    raise TokenizerError(f'config.data.tokenizer={spec!r} must be {_KINDS_HINT}')
  if os.sep in spec:
    raise TokenizerError(f'config.data.tokenizer={spec!r}: no such directory; give a Hugging Face tokenizer '
                         'directory (e.g. tokenizer.save_pretrained(DIR) in transformers), a sentencepiece .model '
                         "file or 'bytes'")
  raise TokenizerError(f'config.data.tokenizer={spec!r} must be {_KINDS_HINT}')


def text_free_ids(tokenizer: Tokenizer, ids: Iterable[int]) -> list[int]:
  """The ids among `ids` that neither text nor framing produces: special added tokens of a Hugging Face tokenizer
  (`added_special_ids`, e.g. Gemma 3's image token) other than its bos, eos, pad and stop ids."""
  special = getattr(tokenizer, 'added_special_ids', frozenset())
  framing = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, *tokenizer.stop_ids}
  return [i for i in ids if i in special and i not in framing]


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> list[int]:
  """Raises when the tokenizer's ids do not fit the model's embedding table; ids beyond it that text never
  produces (`text_free_ids`) are accepted, as transformers accepts them, and returned."""
  extra = list(range(model_vocab_size, tokenizer.vocab_size))
  free = set(text_free_ids(tokenizer, extra))
  bad = [i for i in extra if i not in free]
  if bad:
    raise TokenizerError(f'the tokenizer has {tokenizer.vocab_size} ids but config.model.vocab_size='
                         f'{model_vocab_size}; set model.vocab_size >= {tokenizer.vocab_size}')
  return extra
