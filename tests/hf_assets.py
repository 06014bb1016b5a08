"""Tiny Hugging Face tokenizer directories, built offline, for tests.

`make_tokenizer_dir(path, style)` trains a small BPE model (a few hundred ids) with the `tokenizers` library on
the built-in CORPUS, wraps it in `transformers.PreTrainedTokenizerFast` with its special tokens and a chat
template written for these tests, and saves it with `save_pretrained` (tokenizer.json, tokenizer_config.json,
chat_template.jinja) plus a generation_config.json. Styles:

- 'llama3': byte-level BPE; the post-processor adds <|begin_of_text|>; header tokens and <|eot_id|> end a turn;
  generation_config lists two eos ids (<|end_of_text|>, <|eot_id|>).
- 'qwen':   byte-level BPE; no bos; a ChatML template (<|im_start|>ROLE\\n ... <|im_end|>\\n) with a default
  system message; eos <|im_end|>, pad <|endoftext|>.
- 'gemma':  sentencepiece-like BPE (spaces as '▁', no pre-tokenizer) with byte fallback; the post-processor adds
  <bos>; <start_of_turn>ROLE\\n ... <end_of_turn>\\n with the assistant called 'model'; roles must alternate.

The templates use system messages, loops, conditionals, namespaces, `raise_exception` on a bad role order,
`add_generation_prompt` and `bos_token`. transformers is a test-only dependency: only tests import this module.
"""
from __future__ import annotations

import json
import os

STYLES = ('llama3', 'qwen', 'gemma')

_WORDS = ('the', 'a', 'fox', 'dog', 'cat', 'jumps', 'over', 'lazy', 'quick', 'brown', 'sort', 'these', 'words',
          'please', 'answer', 'question', 'what', 'is', 'summary', 'of', 'text', 'hello', 'world', 'user',
          'assistant', 'system', 'model', 'you', 'are', 'helpful', 'and', 'so', 'café', 'naïve', 'über', 'garçon')
_RARE = ('猫', '日本語', '🙂', 'ß', 'Ωmega')


def corpus(n: int = 400) -> list[str]:
  """n deterministic sentences: common words, some accents, a little CJK and emoji, varied spacing."""
  lines = []
  for i in range(n):
    k = 4 + i % 9
    words = [_WORDS[(i * 7 + j * 13 + j * j) % len(_WORDS)] for j in range(k)]
    if i % 5 == 0:
      words.insert(i % k, _RARE[i % len(_RARE)])
    sep = '  ' if i % 11 == 0 else ' '
    text = sep.join(words).capitalize()
    lines.append(text + ('?' if i % 3 == 0 else '.') + ('\n' + str(i) if i % 7 == 0 else ''))
  return lines


CORPUS = corpus()

LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "  {%- set system_message = messages[0]['content'] | trim %}\n"
    "  {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "  {%- set system_message = '' %}\n"
    "  {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- if system_message %}\n"
    "  {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(last_role='') %}\n"
    "{%- for message in loop_messages %}\n"
    "  {%- if message['role'] == 'system' %}\n"
    "    {{- raise_exception('A system message may only come first') }}\n"
    "  {%- endif %}\n"
    "  {%- if message['role'] == 'assistant' and ns.last_role == 'assistant' %}\n"
    "    {{- raise_exception('Two assistant messages in a row') }}\n"
    "  {%- endif %}\n"
    "  {%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}\n"
    "  {{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "  {%- set ns.last_role = message['role'] %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "  {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

QWEN_TEMPLATE = (
    "{%- for message in messages %}\n"
    "  {%- if loop.first and message['role'] != 'system' %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "  {%- endif %}\n"
    "  {%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}\n"
    "    {{- raise_exception('Unknown role: ' + message['role']) }}\n"
    "  {%- endif %}\n"
    "  {%- if message['role'] == 'tool' %}\n"
    "    {{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}\n"
    "  {%- else %}\n"
    "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
    "  {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "  {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

GEMMA_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "  {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "  {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "  {%- set first_user_prefix = '' -%}\n"
    "  {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "  {%- endif -%}\n"
    "  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "  {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}\n"
    "  {{- message['content'] | trim }}\n"
    "  {{- '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{ '<start_of_turn>model\\n' }}\n"
    "{%- endif -%}\n")

_SPECS = {
    # specials (in id order, first ids), bos, eos, pad, template, generation_config eos tokens
    'llama3': (['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>',
                '<|finetune_right_pad_id|>'], '<|begin_of_text|>', '<|end_of_text|>', '<|finetune_right_pad_id|>',
               LLAMA3_TEMPLATE, ['<|end_of_text|>', '<|eot_id|>']),
    'qwen': (['<|endoftext|>', '<|im_start|>', '<|im_end|>'], None, '<|im_end|>', '<|endoftext|>', QWEN_TEMPLATE,
             ['<|im_end|>', '<|endoftext|>']),
    'gemma': (['<pad>', '<eos>', '<bos>', '<unk>', '<start_of_turn>', '<end_of_turn>'], '<bos>', '<eos>', '<pad>',
              GEMMA_TEMPLATE, ['<eos>', '<end_of_turn>']),
}


def _byte_level(specials: list[str], vocab_size: int):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def _metaspace_byte_fallback(specials: list[str], vocab_size: int):
  """Spaces become '▁' (a normalizer, no pre-tokenizer); characters outside the vocabulary fall back to bytes."""
  from tokenizers import Tokenizer, decoders, models, normalizers, trainers
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.Replace(' ', '▁')
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                limit_alphabet=60)
  tok.train_from_iterator(CORPUS, trainer)
  model = json.loads(tok.to_str())['model']
  vocab = dict(model['vocab'])
  for b in range(256):
    vocab.setdefault(f'<0x{b:02X}>', len(vocab))
  merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in model['merges']]
  out = Tokenizer(models.BPE(vocab, merges, unk_token='<unk>', byte_fallback=True, fuse_unk=True))
  out.normalizer = tok.normalizer
  out.add_special_tokens(specials)
  out.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse()])
  return out


def _add_bos(tok, bos: str) -> None:
  from tokenizers import processors
  bos_id = tok.token_to_id(bos)
  tok.post_processor = processors.TemplateProcessing(single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
                                                     special_tokens=[(bos, bos_id)])


def make_tokenizer_dir(path: str, style: str, vocab_size: int = 400, extra_special: tuple[str, ...] = (),
                       extra_tokens: tuple[str, ...] = ()) -> str:
  """Writes a tokenizer directory of `style` (see the module docstring) at `path`; returns `path`.
  `extra_special` and `extra_tokens` add special and ordinary added tokens after every other id (as Gemma 3's
  image token sits past its model's embedding)."""
  from tokenizers import AddedToken
  from transformers import PreTrainedTokenizerFast
  if style not in _SPECS:
    raise ValueError(f'style {style!r} must be one of {", ".join(STYLES)}')
  specials, bos, eos, pad, template, stop_tokens = _SPECS[style]
  if style == 'gemma':
    tok = _metaspace_byte_fallback(specials, vocab_size)
    unk = '<unk>'
  else:
    tok = _byte_level(specials, vocab_size)
    unk = None
  if bos:
    _add_bos(tok, bos)
  tok.add_special_tokens([AddedToken(t, special=True) for t in extra_special])
  tok.add_tokens([AddedToken(t, special=False) for t in extra_tokens])
  kwargs = {k: v for k, v in (('bos_token', bos), ('eos_token', eos), ('pad_token', pad), ('unk_token', unk)) if v}
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
  fast.chat_template = template
  os.makedirs(path, exist_ok=True)
  fast.save_pretrained(path)
  gen = {'eos_token_id': [tok.token_to_id(t) for t in stop_tokens]}
  if bos:
    gen['bos_token_id'] = tok.token_to_id(bos)
  with open(os.path.join(path, 'generation_config.json'), 'w', encoding='utf-8') as f:
    json.dump(gen, f, indent=2)
  return path
