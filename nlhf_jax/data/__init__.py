"""Data: built-in synthetic sets, record readers (JSONL, Parquet), tokenizers and resumable batch iterators."""

from nlhf_jax.data.readers import read_jsonl, read_parquet, read_records
from nlhf_jax.data.records import DataError, validate
from nlhf_jax.data.tokenizer import (ByteTokenizer, SentencePieceTokenizer, Tokenizer, TokenizerError,
                                     check_vocab, load_tokenizer, train_sentencepiece)
from nlhf_jax.data.hf_tokenizer import HFTokenizer
from nlhf_jax.data.pipelines import from_records, make_eval_iterator, make_iterator

__all__ = ['ByteTokenizer', 'DataError', 'HFTokenizer', 'SentencePieceTokenizer', 'Tokenizer', 'TokenizerError',
           'check_vocab', 'from_records', 'load_tokenizer', 'make_eval_iterator', 'make_iterator', 'read_jsonl',
           'read_parquet', 'read_records', 'train_sentencepiece', 'validate']
