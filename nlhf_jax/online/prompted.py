"""A prompted language model as the pairwise judge (config.online.judge='prompted', nlhf-eval --judge_kind=prompted).

The judge is any language-model run (an instruct model brought in by nlhf-import, an SFT or online run): its model,
weights and tokenizer (data.tokenizer of RUN/config.json) come from the run. A template with the fields {prompt},
{response_a} and {response_b} (DEFAULT_TEMPLATE, or a file) is filled with the prompt and the two responses and
becomes one user message: rendered with the judge's chat template (add_generation_prompt) when its tokenizer has
one, else its plain prompt framing. The two answers (default 'A' and 'B') must each be one token of the judge's
tokenizer, and differ.

Scores: at the last position of the judge's input, the logits l_first and l_second of the two answer tokens give
P(first better) = exp(l_first) / (exp(l_first) + exp(l_second)) = sigmoid(l_first - l_second) (the next-token
probabilities of the two answers renormalised over them). Every pair is judged in both orders:
  p1 = P(first better) with y shown first,  p2 = P(first better) with y' shown first,
  P(y > y' | x) = 1/2 + (p1 - p2) / 2,  first-position rate = (p1 + p2) / 2.
Swapping y and y' swaps p1 and p2, so P(y > y') + P(y' > y) = 1 to float32 rounding and P(y > y) = 1/2; the
first-position rate is how often the judge prefers whatever it is shown first (1/2: no position bias).

Texts: the judge reads text, so its tokenizer may differ from the policy's. A policy's tokens are decoded with the
policy's tokenizer (a response up to its stop id; a prompt rendered by the policy's chat template loses the
template's framing around its user message when the ids carry it whole, else it is decoded as it stands) and the
filled template is encoded with the judge's. Inputs have a fixed length, config.online.judge_max_len judge tokens,
left-padded; a pair that does not fit has its two responses cut to the same number of judge tokens (their ends),
then, if still needed, the prompt (its start). Inside the jitted online step this host work runs through
`jax.pure_callback` (the sampled ids come to the host once a step; decoding, rendering and encoding 2B texts take
about half a millisecond a pair in Python), and the judge then reads 2B sequences of judge_max_len tokens: two full
forward passes a pair (the preference model reads the prompt once for both orders).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import string
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.config import ConfigError, OnlineConfig
from nlhf_jax.config.objectives import model_family
from nlhf_jax.data.tokenizer import Tokenizer, TokenizerError, is_conversation, load_tokenizer
from nlhf_jax.distributed import constrain_activations
from nlhf_jax.models import Transformer
from nlhf_jax.online.judges import Judge
from nlhf_jax.training import checkpointing

log = logging.getLogger(__name__)

FIELDS = ('prompt', 'response_a', 'response_b')
DEFAULT_ANSWERS = ('A', 'B')
DEFAULT_MAX_LEN = OnlineConfig.judge_max_len  # config.online.judge_max_len's default
DEFAULT_TEMPLATE = """\
Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the \
user question displayed below. Choose the assistant that follows the user's instructions and answers the user's \
question better: consider the helpfulness, relevance, accuracy, depth and level of detail of the responses. Do not \
let the order in which the responses are presented, their length or the names of the assistants influence your \
decision. Be as objective as possible.

[User Question]
{prompt}

[The Start of Assistant A's Answer]
{response_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{response_b}
[The End of Assistant B's Answer]

Which assistant's answer is better? Answer with a single letter: "A" if assistant A is better, "B" if assistant B \
is better."""


# ----------------------------------------------------------------------------------------------- the template


def read_template(path: str, key: str) -> str:
  """The template in file `path` ('' : DEFAULT_TEMPLATE), checked (`check_template`); `key` names the setting."""
  if not path:
    return DEFAULT_TEMPLATE
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{key}={path}: no such file; give a text file holding the judge\'s prompt with the '
                            'fields {prompt}, {response_a} and {response_b} (or leave it empty for the built-in one)')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise ConfigError(f'{key}={path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8') from None
  check_template(text, f'{key}={path}')
  return text


def check_template(template: str, where: str) -> None:
  """Each of FIELDS appears in `template` and no other field does (literal braces are doubled: '{{', '}}')."""
  try:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
  except ValueError as e:
    raise ConfigError(f'{where}: the template is not a format string ({e}); write a literal brace as {{{{ or }}}}'
                      ) from None
  unknown = [n for n in names if n not in FIELDS]
  if unknown:
    raise ConfigError(f'{where}: the template has the field {{{unknown[0]}}}; its fields are {{prompt}}, '
                      '{response_a} and {response_b} (write a literal brace as {{ or }})')
  missing = [n for n in FIELDS if n not in names]
  if missing:
    raise ConfigError(f'{where}: the template has no {{{missing[0]}}}; it must show {{prompt}}, {{response_a}} and '
                      '{response_b}')


def answer_ids(tokenizer: Tokenizer, answers: Sequence[str], key: str) -> tuple[int, int]:
  """The ids of the two answers, each one token of `tokenizer`; ConfigError naming `key` otherwise."""
  answers = tuple(answers)
  if len(answers) != 2 or not all(isinstance(a, str) and a for a in answers):
    raise ConfigError(f'{key}={answers!r}: give two non-empty answer strings, the first for "the first response is '
                      f'better" and the second for the other, e.g. {DEFAULT_ANSWERS!r}')
  if answers[0] == answers[1]:
    raise ConfigError(f'{key}={answers!r}: the two answers are the same; give two different ones')
  ids = []
  for answer in answers:
    encoded = tokenizer.encode(answer)
    if len(encoded) != 1:
      raise ConfigError(f'{key}: the answer {answer!r} is {len(encoded)} tokens of the judge\'s tokenizer '
                        f'({getattr(tokenizer, "name", "bytes")}), not one; its P(answer) is read from one '
                        'next-token distribution, so use answers that are single tokens (e.g. \'A\' and \'B\') and '
                        'a template that asks for them')
    ids.append(int(encoded[0]))
  if ids[0] == ids[1]:
    raise ConfigError(f'{key}={answers!r}: both answers are the token {ids[0]} of the judge\'s tokenizer; give two '
                      'answers that are different tokens')
  return ids[0], ids[1]


# ------------------------------------------------------------------------------------- texts for the judge


def conversation_text(prompt) -> str:
  """A prompt as the judge sees it: a string as it is, a conversation as 'role: content' lines."""
  if is_conversation(prompt):
    return '\n'.join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
  return str(prompt)


def response_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
  """A sampled response's text: its ids up to the first stop id, decoded."""
  stops = set(tokenizer.stop_ids)
  ids = [int(i) for i in ids]
  end = next((k for k, i in enumerate(ids) if i in stops), len(ids))
  return tokenizer.decode(ids[:end])


@functools.lru_cache(maxsize=8)
def _chat_frame(tokenizer: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """The ids the policy's chat template puts before and after a one-message user prompt (None: no template, or
  one that cannot be probed)."""
  if not getattr(tokenizer, 'has_chat_template', False):
    return None
  mark = '\x00nlhf judge probe\x00'
  try:
    text = tokenizer.render([{'role': 'user', 'content': mark}], add_generation_prompt=True)
  except TokenizerError:
    return None
  if text.count(mark) != 1:
    return None
  head, tail = text.split(mark)
  return tuple(tokenizer.encode(head)), tuple(tokenizer.encode(tail))


def prompt_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
  """A policy's prompt ids (padding removed) as text: the user message when the ids are that message framed by
  the policy's chat template, else the whole decoded prompt."""
  ids = [int(i) for i in ids]
  frame = _chat_frame(tokenizer)
  if frame is not None:
    head, tail = frame
    if len(ids) >= len(head) + len(tail) and tuple(ids[:len(head)]) == head and (
        not tail or tuple(ids[len(ids) - len(tail):]) == tail):
      return tokenizer.decode(ids[len(head):len(ids) - len(tail)])
  return tokenizer.decode(ids)


def _cap(a: list[int], b: list[int], over: int) -> tuple[list[int], list[int], int]:
  """a and b cut at their ends to one common length, `over` ids fewer in all (or empty); and the ids still over."""
  keep = len(a) + len(b) - over
  if keep <= 0:
    return [], [], -keep
  cap = max(len(a), len(b))
  while min(len(a), cap) + min(len(b), cap) > keep:
    cap -= 1
  return a[:cap], b[:cap], 0


@dataclasses.dataclass(frozen=True, eq=False)
class JudgeInput:
  """Fills the template and encodes it with the judge's tokenizer into fixed-length, left-padded rows."""
  tokenizer: Tokenizer
  template: str
  answers: tuple[int, int]
  max_len: int
  chat: bool  # render with the judge's chat template
  _shortened: list = dataclasses.field(default_factory=lambda: [0])  # pairs cut to fit, for one warning

  def render(self, prompt: str, first: str, second: str) -> list[int]:
    message = self.template.format(prompt=prompt, response_a=first, response_b=second)
    return list(self.tokenizer.prompt_ids(message, chat=self.chat))

  def check_fits(self, key: str) -> None:
    """The template alone (empty texts) must leave room in max_len."""
    n = len(self.render('', '', ''))
    if n >= self.max_len:
      raise ConfigError(f'{key}={self.max_len} judge tokens do not hold the judge\'s template, which is {n} tokens '
                        f'with empty texts; set it well above {n} (it bounds the prompt and both responses too)')

  def encode(self, prompt: str, first: str, second: str) -> list[int]:
    """The judge's ids of the filled template, at most max_len: responses cut first (to one length), then the
    prompt's start; a rendering that still does not fit keeps its last max_len ids."""
    ids = self.render(prompt, first, second)
    if len(ids) <= self.max_len:
      return ids
    self._note_shortened()
    enc = self.tokenizer.encode
    p, a, b = enc(prompt), enc(first), enc(second)
    for _ in range(4):  # re-encoding the shortened texts may merge tokens at the cuts: repeat until it fits
      a, b, rest = _cap(a, b, len(ids) - self.max_len)
      p = p[rest:]
      ids = self.render(self.tokenizer.decode(p), self.tokenizer.decode(a), self.tokenizer.decode(b))
      if len(ids) <= self.max_len:
        return ids
    return ids[-self.max_len:]

  def _note_shortened(self) -> None:
    if not self._shortened[0]:
      log.warning('prompted judge: a pair is longer than judge_max_len=%d judge tokens; its responses (then its '
                  'prompt) are shortened to fit (raise judge_max_len to judge whole texts)', self.max_len)
    self._shortened[0] += 1

  def rows(self, prompts: Sequence[str], ys: Sequence[str], y2s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """int32 tokens and bool mask [2B, max_len], left-padded: rows 0..B-1 show y first, rows B..2B-1 show y'
    first."""
    seqs = [self.encode(p, a, b) for p, a, b in zip(prompts, ys, y2s)]
    seqs += [self.encode(p, b, a) for p, a, b in zip(prompts, ys, y2s)]
    tokens = np.full((len(seqs), self.max_len), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(seqs), self.max_len), bool)
    for r, seq in enumerate(seqs):
      if seq:
        tokens[r, -len(seq):] = seq
        mask[r, -len(seq):] = True
    return tokens, mask


def judge_input(tokenizer: Tokenizer, template: str, answers: Sequence[str], max_len: int, keys: dict,
                model_max_len: int = 0) -> JudgeInput:
  """A checked JudgeInput; `keys` name the settings in errors ('answers', 'max_len')."""
  if max_len < 1:
    raise ConfigError(f'{keys["max_len"]}={max_len}: must be a positive number of judge tokens')
  if model_max_len and max_len > model_max_len:
    raise ConfigError(f'{keys["max_len"]}={max_len} is longer than the judge model\'s max_len={model_max_len}; '
                      f'set it to at most {model_max_len}')
  ids = answer_ids(tokenizer, answers, keys['answers'])
  out = JudgeInput(tokenizer, template, ids, max_len, bool(getattr(tokenizer, 'has_chat_template', False)))
  out.check_fits(keys['max_len'])
  return out


# ------------------------------------------------------------------------------------------------- scoring


def first_logits(graphdef: nnx.GraphDef, params, tokens: jax.Array, mask: jax.Array,
                 answers: tuple[int, int]) -> jax.Array:
  """l_first - l_second, float32 [R]: the two answer tokens' logits at the last position of left-padded rows."""
  model = nnx.merge(graphdef, params)
  hidden, _ = model.hidden(tokens, mask)
  logits = model.logits(hidden[:, -1:])[:, 0]
  return (logits[:, answers[0]] - logits[:, answers[1]]).astype(jnp.float32)


def combine(d: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(P(y > y'), first-position probability), float32 [B] each, from the logits d [2B] of both orders (rows
  0..B-1: y first; B..2B-1: y' first)."""
  p = jax.nn.sigmoid(d)
  half = d.shape[0] // 2
  p1, p2 = p[:half], p[half:]
  return 0.5 + 0.5 * (p1 - p2), 0.5 * (p1 + p2)


def scorer(graphdef: nnx.GraphDef, answers: tuple[int, int]):
  """`score(params, tokens, mask) -> (P(y > y'), first-position probability)` on JudgeInput.rows; jittable."""
  def score(params, tokens, mask):
    return combine(first_logits(graphdef, params, tokens, mask, answers))
  return score


@dataclasses.dataclass(frozen=True, eq=False)
class PromptedJudge:
  """The judge's graph and its input; `prob` is the online step's P(y > y' | x) on the policy's tokens."""
  graphdef: nnx.GraphDef
  text: JudgeInput
  policy_tokenizer: Tokenizer | None = None

  def host_rows(self, x, xm, y, ym, y2, y2m) -> tuple[np.ndarray, np.ndarray]:
    """JudgeInput.rows of a batch of the policy's ids (numpy): prompts and responses decoded first."""
    tok = self.policy_tokenizer
    x, xm, y, ym, y2, y2m = (np.asarray(a) for a in (x, xm, y, ym, y2, y2m))
    prompts = [prompt_text(tok, row[m.astype(bool)]) for row, m in zip(x, xm)]
    ys = [response_text(tok, row[m.astype(bool)]) for row, m in zip(y, ym)]
    y2s = [response_text(tok, row[m.astype(bool)]) for row, m in zip(y2, y2m)]
    return self.text.rows(prompts, ys, y2s)

  def prob(self, params, x, xm, y, ym, y2, y2m) -> jax.Array:
    """P(y > y' | x), float32 [B], inside a jitted step: the texts are made on the host (pure_callback), the rows
    constrained to the batch sharding, then the judge runs on them."""
    rows = 2 * x.shape[0]
    shapes = (jax.ShapeDtypeStruct((rows, self.text.max_len), jnp.int32),
              jax.ShapeDtypeStruct((rows, self.text.max_len), jnp.bool_))
    tokens, mask = jax.pure_callback(self.host_rows, shapes, x, xm, y, ym, y2, y2m, vmap_method='sequential')
    tokens = constrain_activations(tokens, ('batch', 'length'))
    mask = constrain_activations(mask, ('batch', 'length'))
    return scorer(self.graphdef, self.text.answers)(params, tokens, mask)[0]


# ------------------------------------------------------------------------------------- from a run and a config


def run_tokenizer(run_cfg: dict, path: str, key: str) -> Tokenizer:
  """The tokenizer a language-model run was trained or imported with (its data.tokenizer)."""
  spec = run_cfg.get('data', {}).get('tokenizer', 'bytes') or 'bytes'
  try:
    return load_tokenizer(spec)
  except (TokenizerError, FileNotFoundError) as e:
    raise ConfigError(f'{key}={path}: its tokenizer {spec!r} cannot be read ({e})') from None


def check_judge_run(run_cfg: dict, path: str, key: str) -> None:
  """The prompted judge's run must hold a language model."""
  objective = run_cfg.get('train', {}).get('objective', '?')
  if model_family(objective) != 'language_model':
    raise ConfigError(f'{key}={path} is a {objective!r} run; a prompted judge is a language model: give an '
                      'nlhf-import run of an instruct model (or an sft or online run)')


def from_online_config(cfg) -> JudgeInput:
  """The checked JudgeInput of config.online (the judge run's tokenizer, the template, the answers, the length):
  read from small files only, before any weight."""
  o = cfg.online
  key = 'config.online.judge_checkpoint'
  try:
    run_cfg = checkpointing.read_run_config(o.judge_checkpoint)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{key}={o.judge_checkpoint}: {e}') from None
  check_judge_run(run_cfg, o.judge_checkpoint, key)
  tokenizer = run_tokenizer(run_cfg, o.judge_checkpoint, key)
  template = read_template(o.judge_template, 'config.online.judge_template')
  return judge_input(tokenizer, template, o.judge_answers, o.judge_max_len,
                     {'answers': 'config.online.judge_answers', 'max_len': 'config.online.judge_max_len'},
                     int(run_cfg.get('model', {}).get('max_len', 0)))


def plan(cfg, mesh) -> tuple[Any, Any, Any]:
  """(Judge without parameters, the restore target of its weights, load()) for config.online.judge='prompted'."""
  o = cfg.online
  text = from_online_config(cfg)
  graphdef, target, _ = checkpointing.frozen_target(o.judge_checkpoint, Transformer, mesh, o.frozen_dtype,
                                                     cfg.model.attention_impl)
  judge = PromptedJudge(graphdef, text, load_tokenizer(cfg.data.tokenizer))
  path = checkpointing.checkpoints_dir(o.judge_checkpoint)
  return (Judge('prompted', None, judge.prob), target,
          lambda: checkpointing.restore_params(path, target)[0])
