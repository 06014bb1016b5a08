"""Probe responses and the oracle exploitability estimate.

For a prompt, the probes are, in each style s (plain, and, so), four summaries named 'STYLE/KIND':
- 'best':   every salient word once, in order of first occurrence (quality 1);
- 'drop':   the best summary without its last salient word (lower coverage);
- 'repeat': the best summary with its first word written twice (a repetition penalty);
- 'extra':  the best summary followed by one non-salient word (an excess-length penalty).

exploitability(prompts, responses) = max over probes of the mean P*(probe(x) > y | x) over the policy's responses
y to the prompts x. It lower-bounds max_y' P*(y' > pi) (section 2 of the math notes: subtract 1/2 for the duality
gap); for the uniform mixture of the three best summaries, which is a Nash equilibrium of P*, every best probe
wins exactly 1/2, while a policy that settles on one style is beaten by the style that beats it.
"""
from __future__ import annotations

import numpy as np

from nlhf_jax.benchmark import language, oracle

PROBE_KINDS = ('best', 'drop', 'repeat', 'extra')


def _extra_word(prompt: str, salient: list[str]) -> str:
  fillers = language.filler_words(prompt)
  return fillers[0] if fillers else next(w for w in language.WORDS if w not in salient)


def probe_words(prompt: str, kind: str) -> list[str]:
  """The content words of probe `kind` for `prompt`."""
  salient = language.salient_words(prompt)
  if kind == 'best':
    return salient
  if kind == 'drop':
    return salient[:-1]
  if kind == 'repeat':
    return salient[:1] + salient
  if kind == 'extra':
    return salient + [_extra_word(prompt, salient)]
  raise ValueError(f'probe kind must be one of {PROBE_KINDS}, got {kind!r}')


def probe_names() -> list[str]:
  """'STYLE/KIND' for every style and kind, in a fixed order."""
  return [f'{language.STYLE_NAMES[s]}/{k}' for s in language.STYLES for k in PROBE_KINDS]


def probe_responses(prompt: str) -> dict[str, str]:
  """{name: probe response} for `prompt` (see the module docstring)."""
  return {f'{language.STYLE_NAMES[s]}/{k}': language.render(probe_words(prompt, k), s)
          for s in language.STYLES for k in PROBE_KINDS}


def _pairs(prompts, policy_responses) -> tuple[list[str], list[str]]:
  """Flattens responses given one per prompt (str) or several per prompt (a list of str)."""
  if len(prompts) != len(policy_responses):
    raise ValueError(f'{len(prompts)} prompts but responses for {len(policy_responses)}')
  xs, ys = [], []
  for x, r in zip(prompts, policy_responses):
    rs = [r] if isinstance(r, str) else list(r)
    xs += [x] * len(rs)
    ys += rs
  if not ys:
    raise ValueError('exploitability needs at least one policy response')
  return xs, ys


def probe_win_rates(prompts, policy_responses, judge=oracle.preferences) -> dict[str, float]:
  """{probe name: mean P(probe > y)} over the policy's responses (one str or a list of str per prompt), under
  `judge(prompts, responses_a, responses_b) -> P(a > b)` (the benchmark oracle P* by default)."""
  xs, ys = _pairs(prompts, policy_responses)
  table = {x: probe_responses(x) for x in set(xs)}
  return {name: float(np.mean(judge(xs, [table[x][name] for x in xs], ys))) for name in probe_names()}


def exploitability(prompts, policy_responses, judge=oracle.preferences) -> tuple[float, str]:
  """(best win rate of a probe against the policy, that probe's name)."""
  rates = probe_win_rates(prompts, policy_responses, judge)
  name = max(rates, key=rates.get)
  return rates[name], name
