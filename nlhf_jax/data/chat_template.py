"""Chat templates: Jinja templates that turn a conversation into the text a chat model reads.

`ChatTemplate(source, name)` compiles a template once and renders conversations the way Hugging Face chat models
expect (the conventions of `apply_chat_template(..., tokenize=False)`):

- a sandboxed, immutable Jinja environment with trim_blocks and lstrip_blocks, the loop controls
  (`{% break %}`, `{% continue %}`), and the `{% generation %}...{% endgeneration %}` block rendered as its body;
- `tojson` is `json.dumps` (no HTML escaping, non-ASCII kept), with the optional `indent`, `separators` and
  `sort_keys`;
- the globals `raise_exception(message)` (fails the render with that message), `strftime_now(format)` (the local
  time) and `namespace(...)` (attributes that start with '_' are refused);
- the variables `messages`, `add_generation_prompt`, `tools` and `documents` (None) and the special tokens
  given to `render` (e.g. bos_token, eos_token); keys of a message whose value is None are left out.

Every failure (a syntax error, `raise_exception`, an undefined operation, a sandbox violation) raises
`TokenizerError` with the template's message and its name (the file it came from). jinja2 is imported here only,
when a template is compiled.
"""
from __future__ import annotations

import datetime
import json
from typing import Any

from nlhf_jax.data.tokenizer_api import TokenizerError


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
  import jinja2
  raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _extensions() -> list:
  from jinja2 import ext

  class GenerationBlock(ext.Extension):
    """`{% generation %}BODY{% endgeneration %}` renders as BODY (the block only marks assistant text)."""
    tags = {'generation'}

    def parse(self, parser):
      next(parser.stream)
      return parser.parse_statements(('name:endgeneration',), drop_needle=True)

  return [ext.loopcontrols, GenerationBlock]


def _namespace_class():
  import jinja2
  from jinja2.utils import Namespace

  def check(name) -> None:
    if isinstance(name, str) and name.startswith('_'):
      raise jinja2.exceptions.SecurityError(f'a namespace attribute may not start with "_": {name!r}')

  class SafeNamespace(Namespace):
    def __init__(*args, **kwargs):  # noqa: N805  (Namespace's own signature: `self` may be a keyword)
      self, rest = args[0], args[1:]
      attrs = dict(*rest, **kwargs)
      for key in attrs:
        check(key)
      Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      check(name)
      Namespace.__setitem__(self, name, value)

  return SafeNamespace


def _environment():
  from jinja2 import sandbox
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=_extensions())
  env.filters['tojson'] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_namespace_class())
  return env


def _template_errors() -> tuple:
  import jinja2
  return (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)


def _message(e: Exception) -> str:
  text = getattr(e, 'message', None) or str(e) or type(e).__name__
  lineno = getattr(e, 'lineno', None)
  return f'{text} (line {lineno})' if lineno and type(e).__name__ == 'TemplateSyntaxError' else text


class ChatTemplate:
  """A compiled chat template; `name` (its file) is named in every error."""

  def __init__(self, source: str, name: str):
    self.source, self.name = source, name
    try:
      self._template = _environment().from_string(source)
    except ImportError:
      raise TokenizerError(f'{name}: rendering a chat template needs the jinja2 package (pip install jinja2)') from None
    except _template_errors() as e:
      raise TokenizerError(f'{name}: the chat template does not compile: {_message(e)}') from None

  def render(self, messages: list[dict], add_generation_prompt: bool, special_tokens: dict[str, str]) -> str:
    """The text of `messages` (a list of {'role', 'content', ...} dicts); raises TokenizerError on failure."""
    clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
    try:
      return self._template.render(**special_tokens, messages=clean, add_generation_prompt=add_generation_prompt,
                                   tools=None, documents=None)
    except _template_errors() as e:
      raise TokenizerError(f'chat template {self.name}: {_message(e)}') from None
