"""A Hugging Face tokenizer directory behind the Tokenizer interface of nlhf_jax/data/tokenizer.py.

The directory is read with the `tokenizers` library and jinja2 only (no transformers):

- tokenizer.json (required): the backend (`tokenizers.Tokenizer.from_file`); its stored padding and truncation
  settings are switched off.
- tokenizer_config.json (optional): the special tokens bos/eos/unk/sep/pad/cls/mask_token (strings or
  {"content": ...} objects), `added_tokens_decoder` (more token ids and which tokens are special) and
  `chat_template` (a string, or a list of {"name", "template"} of which 'default' is used).
- special_tokens_map.json (optional): special tokens that tokenizer_config.json does not name.
- chat_template.jinja (optional): the chat template; it takes priority over tokenizer_config's (transformers'
  `save_pretrained` writes the template there). An empty one is refused.
- generation_config.json (optional): `eos_token_id` (an id or a list): more ids that end a sampled response.

Ids and framing:
- vocab_size is the backend's size with added tokens; eos_id is the eos token's id (else generation_config's
  first eos id); pad_id the pad token's id, else eos_id; sep_id is None.
- bos_id is the id the backend's post-processor puts before a text (probed once: Llama- and Gemma-style
  tokenizers add one, Qwen-style ones do not), else None. A plain prompt is ([bos] +) encode(text); a plain
  response is encode(text) + [eos_id].
- encode adds no special tokens; special-token text inside a string maps to its id. decode skips special
  tokens, bos/eos/pad/stop ids and ids outside [0, vocab_size).
- With a chat template, a prompt (a message list, or a string as one user message) is
  encode(render(messages, add_generation_prompt=True)); a response (messages, or a string as one assistant
  message) is what the whole conversation adds to its prompt: the ids of render(prompt + response) after the
  prompt's ids (encode(rendered completion) when the two tokenizations disagree at the boundary), cut after the
  first stop id, with the end-of-turn id appended when the template wrote none.
- The end-of-turn id is the first special token the template writes after an assistant message's content
  (found once with a probe conversation), else eos_id. stop_ids = (eos_id, generation_config's eos ids,
  end-of-turn id) without repeats.
"""
from __future__ import annotations

import functools
import json
import os

from nlhf_jax.data.chat_template import ChatTemplate
from nlhf_jax.data.tokenizer_api import TokenizerError, as_messages, is_conversation

TOKENIZER_JSON = 'tokenizer.json'
CONFIG_JSON = 'tokenizer_config.json'
SPECIAL_MAP_JSON = 'special_tokens_map.json'
TEMPLATE_FILE = 'chat_template.jinja'
GENERATION_JSON = 'generation_config.json'
SPECIAL_NAMES = ('bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token')
_PROBE_ANSWER = 'nlhf probe answer'
_PROBES = (
    [{'role': 'user', 'content': 'nlhf probe question'}, {'role': 'assistant', 'content': _PROBE_ANSWER}],
    [{'role': 'system', 'content': 'nlhf probe system'}, {'role': 'user', 'content': 'nlhf probe question'},
     {'role': 'assistant', 'content': _PROBE_ANSWER}],
)


def read_text(path: str) -> str:
  """A UTF-8 text file of the directory; TokenizerError naming the file when it is a folder or not UTF-8."""
  if os.path.isdir(path):
    raise TokenizerError(f'{path} is a folder, not a file; save the tokenizer again (transformers: '
                         'tokenizer.save_pretrained(DIR))')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise TokenizerError(f'{path}: not UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}); re-encode it as '
                         'UTF-8 or save the tokenizer again (transformers: tokenizer.save_pretrained(DIR))') from None


def read_json(path: str) -> dict | None:
  """The object in `path`, None when there is no such file; TokenizerError when it is not a JSON object."""
  if not os.path.exists(path):
    return None
  try:
    obj = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise TokenizerError(f'{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno}); fix the file or '
                         'save the tokenizer again (transformers: tokenizer.save_pretrained(DIR))') from None
  if not isinstance(obj, dict):
    raise TokenizerError(f'{path}: must hold a JSON object, not {type(obj).__name__}')
  return obj


def token_content(value) -> str | None:
  """A special token as tokenizer configs write it: a string or {"content": ...}."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) and value else None


def special_tokens(config: dict, special_map: dict) -> dict[str, str]:
  """The named special tokens: tokenizer_config.json's, then special_tokens_map.json's for those it lacks."""
  out = {}
  for name in SPECIAL_NAMES:
    content = token_content(config.get(name)) or token_content(special_map.get(name))
    if content:
      out[name] = content
  return out


def _config_template(config: dict, config_path: str) -> str | None:
  value = config.get('chat_template')
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict):
    value = [{'name': k, 'template': v} for k, v in value.items()]
  if isinstance(value, list):
    named = {t.get('name'): t.get('template') for t in value if isinstance(t, dict)}
    if isinstance(named.get('default'), str):
      return named['default']
    raise TokenizerError(f'{config_path}: chat_template lists templates {sorted(map(str, named))} but none '
                         "named 'default'; name one 'default' or write it to chat_template.jinja")
  raise TokenizerError(f'{config_path}: chat_template must be a string or a list of {{name, template}} objects')


def load_template(directory: str, config: dict) -> ChatTemplate | None:
  """chat_template.jinja if present, else tokenizer_config.json's chat_template, else None."""
  path = os.path.join(directory, TEMPLATE_FILE)
  if os.path.exists(path):
    source = read_text(path)
    if not source.strip():
      raise TokenizerError(f'{path} is empty (every prompt would render to nothing); write the template there, or '
                           'delete the file to use the chat_template of tokenizer_config.json')
    return ChatTemplate(source, path)
  config_path = os.path.join(directory, CONFIG_JSON)
  source = _config_template(config, config_path)
  return ChatTemplate(source, f'{config_path} chat_template') if source else None


def _generation_eos_ids(generation: dict, path: str) -> list[int]:
  value = generation.get('eos_token_id')
  ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
  if ids is None:
    return []
  if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
    raise TokenizerError(f'{path}: eos_token_id must be an id or a list of ids, got {value!r:.60}')
  return ids


def _backend(path: str):
  """tokenizer.json as a `tokenizers.Tokenizer`, with its stored padding and truncation switched off."""
  try:
    import tokenizers
  except ImportError:
    raise TokenizerError(f'{path}: reading a Hugging Face tokenizer needs the tokenizers package '
                         '(pip install tokenizers jinja2)') from None
  try:
    backend = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # the Rust library raises plain Exception
    raise TokenizerError(f'{path}: not a tokenizer the tokenizers library can read ({e}); save the tokenizer '
                         'again (transformers: tokenizer.save_pretrained(DIR))') from None
  backend.no_padding()
  backend.no_truncation()
  return backend


class HFTokenizer:
  """A Hugging Face tokenizer directory (see the module docstring)."""

  sep_id = None

  def __init__(self, directory: str):
    self.path = self.name = directory
    self._backend = _backend(os.path.join(directory, TOKENIZER_JSON))
    config = read_json(os.path.join(directory, CONFIG_JSON)) or {}
    special_map = read_json(os.path.join(directory, SPECIAL_MAP_JSON)) or {}
    generation_path = os.path.join(directory, GENERATION_JSON)
    generation = read_json(generation_path) or {}
    self.vocab_size = int(self._backend.get_vocab_size(with_added_tokens=True))
    self._added = self._added_tokens(config)
    self.special_tokens = special_tokens(config, special_map)
    self._special_ids = {i for i, t in self._backend.get_added_tokens_decoder().items() if t.special}
    self._special_ids |= {i for i, (_, special) in self._added.items() if special}
    self.added_special_ids = frozenset(self._special_ids)  # tokenizer.text_free_ids
    self._special_ids |= {i for i in map(self._token_id, self.special_tokens.values()) if i is not None}
    gen_eos = _generation_eos_ids(generation, generation_path)
    self.eos_id = self._eos_id(gen_eos)
    pad = self._id_of('pad_token')
    self.pad_id = pad if pad is not None else self.eos_id
    self._prefix = self._post_processor_prefix()
    self.bos_id = self._prefix[0] if self._prefix else None
    self._template = load_template(directory, config)
    self.has_chat_template = self._template is not None
    self.end_of_turn_id = self._find_end_of_turn() if self._template else self.eos_id
    self.stop_ids = tuple(dict.fromkeys([self.eos_id, *gen_eos, self.end_of_turn_id]))
    self._special_ids |= {i for i in (self.eos_id, self.pad_id, self.bos_id, *self.stop_ids) if i is not None}
    # A pair's prompt is rendered for the prompt and for each response: remember the latest renderings.
    self._rendered = functools.lru_cache(maxsize=256)(self._render_key)

  # Loading.

  def _added_tokens(self, config: dict) -> dict[int, tuple[str, bool]]:
    decoder = config.get('added_tokens_decoder') or {}
    if not isinstance(decoder, dict):
      raise TokenizerError(f'{os.path.join(self.path, CONFIG_JSON)}: added_tokens_decoder must be an object')
    out = {}
    for key, value in decoder.items():
      content = token_content(value)
      if content and str(key).isdigit():
        out[int(key)] = (content, bool(value.get('special')) if isinstance(value, dict) else False)
    return out

  def _token_id(self, content: str) -> int | None:
    i = self._backend.token_to_id(content)
    if i is not None:
      return int(i)
    return next((k for k, (c, _) in self._added.items() if c == content), None)

  def _id_of(self, name: str) -> int | None:
    content = self.special_tokens.get(name)
    if content is None:
      return None
    i = self._token_id(content)
    if i is None:
      raise TokenizerError(f'{self.path}: the {name} {content!r} of {CONFIG_JSON} is not in {TOKENIZER_JSON}; '
                           'fix the configuration or save the tokenizer again')
    return i

  def _eos_id(self, gen_eos: list[int]) -> int:
    eos = self._id_of('eos_token')
    if eos is not None:
      return eos
    if gen_eos:
      return gen_eos[0]
    raise TokenizerError(f'{self.path}: no eos token: neither {CONFIG_JSON} ("eos_token") nor {GENERATION_JSON} '
                         '("eos_token_id") names one; add "eos_token" to tokenizer_config.json')

  def _post_processor_prefix(self) -> list[int]:
    """The ids the backend's post-processor puts before a text (e.g. [bos]); [] when none."""
    probe = 'nlhf probe'
    plain = self._backend.encode(probe, add_special_tokens=False).ids
    full = self._backend.encode(probe, add_special_tokens=True).ids
    for k in range(len(full) - len(plain) + 1):
      if full[k:k + len(plain)] == plain:
        return list(full[:k])
    return []

  def _find_end_of_turn(self) -> int:
    for conversation in _PROBES:
      try:
        text = self.render(conversation, add_generation_prompt=False)
      except TokenizerError:
        continue
      at = text.rfind(_PROBE_ANSWER)
      if at < 0:
        continue
      ids = self.encode(text[at + len(_PROBE_ANSWER):])
      return next((i for i in ids if i in self._special_ids), self.eos_id)
    return self.eos_id

  # The Tokenizer interface.

  def encode(self, text: str) -> list[int]:
    return list(self._backend.encode(text, add_special_tokens=False).ids)

  def decode(self, ids) -> str:
    kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._special_ids]
    return self._backend.decode(kept, skip_special_tokens=True)

  def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template's text of `messages`."""
    self._require_template()
    return self._template.render(messages, add_generation_prompt, self.special_tokens)

  def _render_key(self, key: str, add_generation_prompt: bool) -> tuple[str, tuple[int, ...]]:
    text = self.render(json.loads(key), add_generation_prompt)
    return text, tuple(self.encode(text))

  def _chat(self, messages: list[dict], add_generation_prompt: bool) -> tuple[str, list[int]]:
    """The rendered text of `messages` and its ids."""
    text, ids = self._rendered(json.dumps(messages, ensure_ascii=False), add_generation_prompt)
    return text, list(ids)

  def prompt_ids(self, prompt, chat: bool = False) -> list[int]:
    if not (chat or is_conversation(prompt)):
      return self._prefix + self.encode(prompt)
    return self._chat(as_messages(prompt, 'user'), add_generation_prompt=True)[1]

  def response_ids(self, response, prompt=None, chat: bool = False) -> list[int]:
    if not (chat or is_conversation(response) or is_conversation(prompt)):
      return self.encode(response) + [self.eos_id]
    if prompt is None:
      raise TokenizerError(f'{self.path}: a response in a chat template needs its prompt')
    head_messages = as_messages(prompt, 'user')
    head, head_ids = self._chat(head_messages, add_generation_prompt=True)
    full, full_ids = self._chat(head_messages + as_messages(response, 'assistant'), add_generation_prompt=False)
    if not full.startswith(head):
      raise TokenizerError(f'chat template {self._template.name}: the conversation with its response does not start '
                           'with the prompt rendered with add_generation_prompt=True, so the response cannot be '
                           'cut out of it')
    return self._completion_ids(head, head_ids, full, full_ids)

  def _completion_ids(self, head: str, head_ids: list[int], full: str, full_ids: list[int]) -> list[int]:
    if full_ids[:len(head_ids)] == head_ids:
      ids = full_ids[len(head_ids):]
    else:
      ids = self.encode(full[len(head):])
    stops = set(self.stop_ids)
    end = next((k for k, i in enumerate(ids) if i in stops), None)
    return ids[:end + 1] if end is not None else ids + [self.end_of_turn_id]

  def _require_template(self) -> None:
    if self._template is None:
      raise TokenizerError(f'{self.path} has no chat template ({CONFIG_JSON} has no "chat_template" and there is no '
                           f'{TEMPLATE_FILE}), so it cannot encode conversations or data.chat_template=True; add a '
                           'template to the directory or use plain-text records with data.chat_template=False')
