"""The tokenizer interface that every tokenizer module shares, with no tokenizer of its own: `Tokenizer` (the
protocol that nlhf_jax/data/tokenizer.py's docstring describes), `TokenizerError`, `Text` (a string or a
conversation) and the two helpers on conversations. tokenizer.py, hf_tokenizer.py and chat_template.py import it,
and tokenizer.py re-exports every name, so callers keep importing them from `nlhf_jax.data.tokenizer`.
"""
from __future__ import annotations

from typing import Protocol


class TokenizerError(ValueError):
  """A tokenizer that cannot be loaded or used with the configured model."""


Text = str | list  # a string, or a conversation: a list of {'role': str, 'content': str} messages


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int
  stop_ids: tuple[int, ...]
  sep_id: int | None
  has_chat_template: bool

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids) -> str: ...

  def prompt_ids(self, prompt: Text, chat: bool = False) -> list[int]: ...

  def response_ids(self, response: Text, prompt: Text | None = None, chat: bool = False) -> list[int]: ...


def is_conversation(value) -> bool:
  """Whether a prompt or response is a conversation (a list of messages) rather than a string."""
  return isinstance(value, list)


def as_messages(value: Text, role: str) -> list[dict]:
  """A conversation as a list of messages; a string becomes one message of `role`."""
  return [dict(m) for m in value] if is_conversation(value) else [{'role': role, 'content': value}]
