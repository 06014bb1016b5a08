"""Deterministic, resumable, per-process batch iterators over prompts, demonstrations and preference pairs.

Global batches come from Grain (`nlhf_jax/data/iterators.py`): batch k is a pure function of (seed, k), so each
process reads exactly its `rows` of every global batch from a random-access source (a TFDS array_record split,
an in-memory list or the built-in synthetic data), and the iterator state is Grain's index of the next batch.

Before any batch is made, every example of the source is encoded once to check it against the configured
lengths: with data.overflow='error' the first one that does not fit stops the run there (naming the file and
line it came from, and the field); with 'truncate' one warning gives how many will be cut and where. Both name
the limit a field went over: data.prompt_len or data.response_len, or for a demonstration packed into data.seq_len
the room left for that field (a response gets what the prompt leaves).

The tokenizer frames each example (`Tokenizer.prompt_ids` / `response_ids`, nlhf_jax/data/tokenizer.py): the
native tokenizers give [bos] text [sep] prompts and text [eos] responses; a Hugging Face tokenizer gives
([bos]) text prompts and text [eos] responses, or, for conversations and with data.chat_template=True, the chat
template's prompt (ending in the assistant header) and the response up to and including its end-of-turn id.
Rendering happens here, with the configured tokenizer, so one data set serves any tokenizer; a conversation
with a tokenizer that has no chat template fails when the iterator is made, naming the example and the field.

Batch formats (numpy, B = the process's rows of the global batch):
  prompts:        prompt int32 [B, prompt_len] left-padded (the framed prompt); prompt_mask bool.
  pairs:          the prompt fields; response_a/response_b int32 [B, response_len] right-padded (the framed
                  responses); response_a_mask/response_b_mask bool; preference float32 [B] (P(a preferred)).
  demonstrations: tokens int32 [B, seq_len] (framed prompt then framed response, right-padded), mask bool,
                  loss_mask float32 (the response's ids, eos included); with split_fields also
                  prompt/prompt_mask and response/response_mask as above.
Every batch has example_index int32 [B] (index in the split). Evaluation batches add valid bool [B]
(False on the padding rows of the last batch).
"""
from __future__ import annotations

import functools
import logging
import math

import numpy as np

from nlhf_jax.data import records as records_lib
from nlhf_jax.data import synthetic
from nlhf_jax.data.iterators import IndexedBatches
from nlhf_jax.data.records import DataError
from nlhf_jax.data.tfds_builders import SplitSource
from nlhf_jax.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

log = logging.getLogger(__name__)


# Sources: __len__, __getitems__(indices) -> list of record dicts, name, kind.

class ListSource:
  """In-memory records (validated on construction)."""

  def __init__(self, recs: list, kind: str, name: str = 'records'):
    self.kind, self.name = kind, name
    self._records = records_lib.validate_all(recs, kind, name)

  def __len__(self) -> int:
    return len(self._records)

  def __getitems__(self, indices) -> list[dict]:
    return [self._records[int(i)] for i in indices]


class SyntheticSource:
  """The built-in sorting task as records: example i is a pure function of (seed, offset + i).

  Pairs compare the sorted order with a wrong order of the same words, in a random position.
  """

  def __init__(self, kind: str, seed: int, num_examples: int, offset: int = 0, name: str = 'synthetic'):
    self.kind, self.name, self._seed, self._n, self._offset = kind, name, seed, num_examples, offset

  def __len__(self) -> int:
    return self._n

  def _record(self, index: int) -> dict:
    prompt, response = synthetic.sort_demonstration(self._seed, self._offset + index)
    if self.kind == 'prompts':
      return {'prompt': prompt}
    if self.kind == 'demonstrations':
      return {'prompt': prompt, 'response': response}
    rng = np.random.default_rng([self._seed, self._offset + index, 1])
    words = response.split(' ')
    wrong = ' '.join(words[::-1]) if len(words) > 1 else response + ' ' + response
    a_first = bool(rng.integers(2))
    a, b = (response, wrong) if a_first else (wrong, response)
    return {'prompt': prompt, 'response_a': a, 'response_b': b, 'preference': float(a_first)}

  def __getitems__(self, indices) -> list[dict]:
    return [self._record(int(i)) for i in indices]


def make_source(data_cfg, kind: str, seed: int, split: str | None = None, recs: list | None = None):
  """The random-access source for `kind` named by data_cfg (or `recs`, when given)."""
  records_lib.check_kind(kind)
  split = split or data_cfg.split
  if recs is not None:
    return ListSource(recs, kind, f'records[{split}]')
  if data_cfg.source == 'synthetic':
    if split == 'train':
      return SyntheticSource(kind, seed, data_cfg.num_examples, name='synthetic[train]')
    # Other splits are the examples after the training ones: disjoint and just as reproducible.
    return SyntheticSource(kind, seed, max(1, data_cfg.num_examples // 8), data_cfg.num_examples,
                           name=f'synthetic[{split}]')
  if data_cfg.source == 'tfds':
    src = SplitSource(data_cfg.name, data_cfg.data_dir, split)
    if src.kind != kind:
      raise DataError(f'data set {src.name} holds {src.kind}, not {kind}; set config.data.name to a {kind} data '
                      f'set (nlhf-data build --kind={kind} ...)')
    return src
  raise DataError(f"config.data.source={data_cfg.source!r} must be 'synthetic' or 'tfds'")


# Encoding: records -> fixed-length arrays, with the overflow policy.

class Encoder:
  """Tokenises records into padded arrays; truncates or raises on examples that do not fit."""

  def __init__(self, tokenizer: Tokenizer, data_cfg, kind: str, source_name: str, split_fields: bool = True):
    if data_cfg.overflow not in ('truncate', 'error'):
      raise DataError(f"config.data.overflow={data_cfg.overflow!r} must be 'truncate' or 'error'")
    self.tok, self.cfg, self.kind, self.name, self.split_fields = tokenizer, data_cfg, kind, source_name, split_fields
    self.chat = bool(getattr(data_cfg, 'chat_template', False))  # plain strings through the chat template too
    self.num_truncated = 0  # examples of the source that are cut to fit (counted by check_lengths)
    self._overflows: list | None = None  # while check_lengths runs: every overflow seen

  def _overflow(self, where: str, field: str, length: int, limit: int, room: str) -> None:
    """An over-long field: `room` names the limit of `limit` tokens ('data.prompt_len=40', or for packed
    demonstrations what data.seq_len leaves for the field)."""
    if self.cfg.overflow == 'error':
      raise DataError(f'{where}: field {field!r} has {length} tokens, more than {room} '
                      "(data.overflow='error'; use 'truncate' or longer lengths)")
    if self._overflows is not None:
      self._overflows.append((where, field, length, limit, room))

  @staticmethod
  def _framed(frame, where: str, field: str) -> list[int]:
    """The tokenizer's ids for one field; its errors name the example and the field."""
    try:
      return frame()
    except TokenizerError as e:
      raise TokenizerError(f'{where}: field {field!r}: {e}') from None

  def _prompt(self, prompt, where: str, limit: int, room: str) -> list[int]:
    """The framed prompt; an over-long one keeps its end (nearest the response) and its leading bos."""
    ids = self._framed(functools.partial(self.tok.prompt_ids, prompt, chat=self.chat), where, 'prompt')
    if len(ids) <= limit:
      return ids
    self._overflow(where, 'prompt', len(ids), limit, room)
    head = ids[:1] if self.tok.bos_id is not None and ids[0] == self.tok.bos_id and limit > 0 else []
    keep = limit - len(head)
    return head + (ids[-keep:] if keep > 0 else [])

  def _response(self, record: dict, field: str, where: str, limit: int, room: str) -> list[int]:
    """The framed response; an over-long one is cut at the limit and has no eos (it did not end)."""
    frame = functools.partial(self.tok.response_ids, record[field], record['prompt'], chat=self.chat)
    ids = self._framed(frame, where, field)
    if len(ids) <= limit:
      return ids
    self._overflow(where, field, len(ids), limit, room)
    return ids[:limit]

  def _pad(self, ids: list[int], length: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full(length, self.tok.pad_id, np.int32)
    mask = np.zeros(length, bool)
    sl = slice(length - len(ids), length) if left else slice(0, len(ids))
    tokens[sl], mask[sl] = ids, True
    return tokens, mask

  def _prompt_fields(self, record: dict, where: str, out: dict) -> None:
    ids = self._prompt(record['prompt'], where, self.cfg.prompt_len, f'data.prompt_len={self.cfg.prompt_len}')
    out['prompt'], out['prompt_mask'] = self._pad(ids, self.cfg.prompt_len, left=True)

  def _response_fields(self, record: dict, where: str, field: str, out: dict) -> None:
    ids = self._response(record, field, where, self.cfg.response_len, f'data.response_len={self.cfg.response_len}')
    out[field], out[field + '_mask'] = self._pad(ids, self.cfg.response_len, left=False)

  def _packed(self, record: dict, where: str, out: dict) -> None:
    """Framed prompt then framed response in seq_len tokens (for native tokenizers [bos] prompt [sep] response
    [eos], as bytes_vocab.pack_demonstration)."""
    seq_len = self.cfg.seq_len
    most = f'the {seq_len - 1} of data.seq_len={seq_len} a prompt may take (one is left for the response)'
    prompt = self._prompt(record['prompt'], where, seq_len - 1, most)
    room = seq_len - len(prompt)
    left = f'the {room} that data.seq_len={seq_len} leaves after the {len(prompt)}-token prompt'
    response = self._response(record, 'response', where, room, left)
    out['tokens'], out['mask'] = self._pad(prompt + response, seq_len, left=False)
    out['loss_mask'] = np.zeros(seq_len, np.float32)
    out['loss_mask'][len(prompt):len(prompt) + len(response)] = 1.0

  def where(self, record: dict, index: int) -> str:
    """Where an example came from: its file and line when the data set recorded them."""
    return record.get('source') or f'{self.name} example {index}'

  def encode(self, record: dict, index: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    where = self.where(record, index)
    if self.kind == 'demonstrations':
      self._packed(record, where, out)
      if self.split_fields:
        self._prompt_fields(record, where, out)
        self._response_fields(record, where, 'response', out)
    else:
      self._prompt_fields(record, where, out)
    if self.kind == 'pairs':
      self._response_fields(record, where, 'response_a', out)
      self._response_fields(record, where, 'response_b', out)
      out['preference'] = np.float32(record['preference'])
    return out

  def check_lengths(self, source, chunk: int = 1024) -> int:
    """Encodes every example of `source` once, before training: raises on the first that does not fit
    (overflow='error'), or counts those that will be truncated and logs one warning with examples."""
    self._overflows, examples = [], set()
    try:
      for start in range(0, len(source), chunk):
        indices = range(start, min(start + chunk, len(source)))
        for record, i in zip(source.__getitems__(list(indices)), indices):
          before = len(self._overflows)
          self.encode(record, i)
          if len(self._overflows) > before:
            examples.add(i)
      shown = self._overflows[:3]
    finally:
      self._overflows = None
    self.num_truncated = len(examples)
    if examples:
      detail = '; '.join(f'{w}: {f!r} has {n} tokens > {room}' for w, f, n, _, room in shown)
      log.warning("%s: %d of %d examples do not fit and are truncated (data.overflow='truncate'), e.g. %s",
                  self.name, len(examples), len(source), detail)
    return self.num_truncated

  def batch(self, source, indices) -> dict[str, np.ndarray]:
    encoded = [self.encode(r, int(i)) for r, i in zip(source.__getitems__(indices), indices)]
    out = {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}
    # Global example indices: online sampling folds them into its keys (samples independent of the mesh).
    out['example_index'] = np.asarray(indices, np.int32)
    return out


# Iterators.

class RecordBatches(IndexedBatches):
  """Training batches: endless, reshuffled every epoch by (seed, epoch), resumable from get_state()."""

  def __init__(self, source, encoder: Encoder, batch_size: int, seed: int, rows: slice):
    if len(source) < batch_size:
      raise DataError(f'{source.name} has {len(source)} examples, fewer than the global batch size '
                      f'{batch_size}; use a smaller train.batch_size or more data')
    encoder.check_lengths(source)
    super().__init__(lambda idx: encoder.batch(source, idx), len(source), batch_size, seed, rows)
    self.source, self.encoder = source, encoder

  def get_state(self) -> dict:
    return dict(super().get_state(), num_examples=len(self.source))

  def set_state(self, state: dict) -> None:
    n = state.get('num_examples', len(self.source))
    if n != len(self.source):
      raise DataError(f'the data iterator state is for a data set of {n} examples, but {self.source.name} '
                      f'has {len(self.source)}; resume with the data the run started with')
    super().set_state(state)


class EvalBatches:
  """The whole split once, in order; the last batch is filled with copies of the last example, valid=False."""

  def __init__(self, source, encoder: Encoder, batch_size: int, rows: slice):
    encoder.check_lengths(source)
    self.source, self.encoder, self._bs, self._rows = source, encoder, batch_size, rows
    self.num_batches = math.ceil(len(source) / batch_size)
    self.batches_produced = 0

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.batches_produced >= self.num_batches:
      raise StopIteration
    idx = np.arange(self.batches_produced * self._bs, (self.batches_produced + 1) * self._bs)[self._rows]
    valid = idx < len(self.source)
    batch = self.encoder.batch(self.source, np.minimum(idx, len(self.source) - 1))
    batch['valid'] = valid
    self.batches_produced += 1
    return batch

  def get_state(self) -> dict:
    return {'batches_produced': self.batches_produced}

  def set_state(self, state: dict) -> None:
    self.batches_produced = int(state['batches_produced'])


def _encoder(data_cfg, kind: str, source, tokenizer: Tokenizer | None, split_fields: bool) -> Encoder:
  tok = tokenizer if tokenizer is not None else load_tokenizer(data_cfg.tokenizer)
  return Encoder(tok, data_cfg, kind, source.name, split_fields)


def make_iterator(data_cfg, kind: str, seed: int, batch_size: int, rows: slice, split: str | None = None, *,
                  records: list | None = None, tokenizer: Tokenizer | None = None,
                  split_fields: bool = True) -> RecordBatches:
  """Training batches of `kind` from data_cfg (source 'tfds' or 'synthetic'), or from `records` when given.

  `batch_size` is the global batch; this process materialises only `rows` of each one. `split` defaults to
  data_cfg.split. `split_fields=False` leaves the prompt/response fields out of demonstration batches.
  """
  source = make_source(data_cfg, kind, seed, split, records)
  return RecordBatches(source, _encoder(data_cfg, kind, source, tokenizer, split_fields), batch_size, seed, rows)


def from_records(recs: list, kind: str, data_cfg, seed: int, batch_size: int, rows: slice,
                 tokenizer: Tokenizer | None = None, split_fields: bool = True) -> RecordBatches:
  """Training batches from in-memory records (e.g. generated data), through the same encoding path."""
  return make_iterator(data_cfg, kind, seed, batch_size, rows, records=recs, tokenizer=tokenizer,
                       split_fields=split_fields)


def make_eval_iterator(data_cfg, kind: str, batch_size: int, rows: slice, split: str | None = None, *,
                       seed: int = 0, records: list | None = None, tokenizer: Tokenizer | None = None,
                       split_fields: bool = True) -> EvalBatches:
  """The evaluation split (data_cfg.eval_split unless `split`) once, in order, in global batches of batch_size."""
  source = make_source(data_cfg, kind, seed, split or data_cfg.eval_split, records)
  return EvalBatches(source, _encoder(data_cfg, kind, source, tokenizer, split_fields), batch_size, rows)
