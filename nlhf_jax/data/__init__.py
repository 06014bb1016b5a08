"""Data: built-in synthetic sets, vocabularies and resumable per-process batch iterators."""

from nlhf_jax.data.records import DataError, read_jsonl, validate
from nlhf_jax.data.tokenizer import (ByteTokenizer, SentencePieceTokenizer, Tokenizer, TokenizerError,
                                     check_vocab, load_tokenizer, train_sentencepiece)
from nlhf_jax.data.pipelines import from_records, make_eval_iterator, make_iterator

__all__ = ['ByteTokenizer', 'DataError', 'SentencePieceTokenizer', 'Tokenizer', 'TokenizerError', 'check_vocab',
           'from_records', 'load_tokenizer', 'make_eval_iterator', 'make_iterator', 'read_jsonl',
           'train_sentencepiece', 'validate']
