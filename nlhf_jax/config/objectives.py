"""The objectives that `nlhf-train` runs (config.train.objective): one frozen description each, in one table.

Everything that depends on the objective reads its description here, never the name: validation (the values it
needs), the run checks (which model a run of it holds), the task registry (model, data, loss:
trainer/tasks.py), the online step (what it samples and from which opponent, whether it needs rewards or a second
sample's log-probabilities, its extra state: online/step.py) and the pipeline. Adding an objective is a row here
and its loss.

Kinds: 'supervised' (a loss on a data set: sft, the judges), 'online' (pairs sampled on the fly and judged,
docs/online.md), 'offline' (a policy on a fixed pairs data set against a frozen reference mu: dpo, ipo).
"""
from __future__ import annotations

import dataclasses

LANGUAGE_MODEL = 'language_model'
# The objective recorded by nlhf-import: a run that holds a pretrained language model and no training state.
IMPORTED = 'import'


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  kind: str  # 'supervised', 'online' or 'offline'
  model: str  # what a run of it trains and holds: 'language_model', 'preference_model' or 'reward_model'
  data: str  # the data set kind it reads: 'demonstrations', 'pairs' or 'prompts' (nlhf_jax/data/pipelines.py)
  loss: str  # its loss (trainer/tasks.py, online/step.py): sft, pairwise, nash_md_pg, rlhf_pg, ipo_pg, dpo, ipo
  # Online: the opponent y' is drawn from: 'mixture' (pi^beta of pi_theta and mu, weight config.online.beta),
  # 'ema' (the policy with its EMA parameters alone) or 'policy' (an independent sample of pi_theta).
  opponent: str = ''
  both_from_opponent: bool = False  # online: y is drawn from the opponent too (IPO-MD)
  judges: tuple[str, ...] = ()  # online: the config.online.judge values it accepts
  rewards: bool = False  # online: needs the judge's scalar rewards r(x, y), r(x, y') (a reward model)
  second_logprobs: bool = False  # online: its loss also reads log pi and log mu of y'
  ema: bool = False  # keeps EMA parameters in state.extras['ema'], updated after every step
  needs_positive_tau: bool = False  # its loss divides by tau (IPO's target 1 / (2 tau))
  responses: int = 1  # responses its model reads after the prompt (the max_len it needs)

  @property
  def online(self) -> bool:
    return self.kind == 'online'

  @property
  def offline(self) -> bool:
    return self.kind == 'offline'

  @property
  def trains_policy(self) -> bool:
    """Whether it trains a language model (a policy; LoRA applies)."""
    return self.model == LANGUAGE_MODEL



_ALL_JUDGES = ('preference_model', 'reward_model', 'oracle', 'prompted')
_ONLINE = dict(kind='online', model=LANGUAGE_MODEL, data='prompts')
_OFFLINE = dict(kind='offline', model=LANGUAGE_MODEL, data='pairs')

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective('sft', 'supervised', LANGUAGE_MODEL, 'demonstrations', 'sft'),
    Objective('preference_model', 'supervised', 'preference_model', 'pairs', 'pairwise', responses=2),
    Objective('reward_model', 'supervised', 'reward_model', 'pairs', 'pairwise'),
    Objective('nash_md', **_ONLINE, loss='nash_md_pg', opponent='mixture', judges=_ALL_JUDGES),
    Objective('nash_ema', **_ONLINE, loss='nash_md_pg', opponent='ema', judges=_ALL_JUDGES, ema=True),
    Objective('rlhf', **_ONLINE, loss='rlhf_pg', opponent='policy', judges=('reward_model',), rewards=True),
    Objective('online_ipo', **_ONLINE, loss='ipo_pg', opponent='policy', judges=_ALL_JUDGES, second_logprobs=True,
              needs_positive_tau=True),
    Objective('ipo_md', **_ONLINE, loss='ipo_pg', opponent='mixture', both_from_opponent=True, judges=_ALL_JUDGES,
              second_logprobs=True, needs_positive_tau=True),
    Objective('dpo', **_OFFLINE, loss='dpo'),
    Objective('ipo', **_OFFLINE, loss='ipo'),
)}


def names(kind: str = '') -> tuple[str, ...]:
  """The objectives (of `kind`, or all), in the table's order."""
  return tuple(n for n, o in OBJECTIVES.items() if not kind or o.kind == kind)


def get(name: str) -> Objective:
  if name not in OBJECTIVES:
    from nlhf_jax.config.validate import ConfigError
    raise ConfigError(f'config.train.objective={name!r} is unknown; choose one of {", ".join(sorted(OBJECTIVES))}')
  return OBJECTIVES[name]


def model_family(objective: str) -> str:
  """'language_model', 'preference_model' or 'reward_model': what a run of `objective` holds (an imported run
  holds a language model); an unknown name is returned as it is (the callers' errors show it)."""
  if objective == IMPORTED:
    return LANGUAGE_MODEL
  return OBJECTIVES[objective].model if objective in OBJECTIVES else objective
