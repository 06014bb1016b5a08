"""The objectives that `nlhf-train` runs (config.train.objective): one frozen description each, in one table.

Everything that depends on the objective reads its description here, never the name: validation (the values it
needs), the run checks (which model a run of it holds), the tasks (model and data: trainer/tasks.py), the step of
its kind (the supervised step, the offline step of training/offline_step.py, the online step of online/step.py:
what it samples and from which opponent, whether it needs rewards or a second sample's log-probabilities, its
extra state) and the pipeline. A row names its loss, which the loss modules register by that name
(objectives/registry.py). Adding an objective is a row (here, or `register` from outside), its loss and the
config values it reads.

The successors of Nash-MD (docs/math.md section 8) are rows too: inpo, comal and mpo fit their mirror step by a
squared loss on pairs drawn from pi_t, the iteration's frozen policy (`iterate`); comal and mpo also keep a
moving reference (`prox`: comal's prox centre, mpo's magnet); sppo regresses each of K samples of pi_t on its
win rate against the others (`min_samples`); extragradient takes online IPO's two half steps (`extragradient`).

Kinds: 'supervised' (a loss on a data set: sft, the judges), 'online' (pairs sampled on the fly and judged,
docs/online.md), 'offline' (a policy on a fixed pairs data set against a frozen reference mu: dpo, ipo).
"""
from __future__ import annotations

import dataclasses

from nlhf_jax.config.errors import ConfigError

KINDS = ('supervised', 'online', 'offline')
LANGUAGE_MODEL = 'language_model'
# The objective recorded by nlhf-import: a run that holds a pretrained language model and no training state.
IMPORTED = 'import'


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  kind: str  # 'supervised', 'online' or 'offline'
  model: str  # what a run of it trains and holds: 'language_model', 'preference_model' or 'reward_model'
  data: str  # the data set kind it reads: 'demonstrations', 'pairs' or 'prompts' (nlhf_jax/data/pipelines.py)
  # the name of its loss, registered by the loss modules (objectives/registry.py): sft, pairwise, nash_md_pg,
  # rlhf_pg, ipo_pg, mirror_pairs (inpo, comal), magnetic_pairs (mpo), sppo, dpo, ipo
  loss: str
  # Online: the opponent y' is drawn from: 'mixture' (pi^beta of pi_theta and mu, weight config.online.beta),
  # 'ema' (the policy with its EMA parameters alone), 'policy' (an independent sample of pi_theta) or 'iterate'
  # (pi_t, the policy frozen at the start of the iteration, in state.extras['pi_t']).
  opponent: str = ''
  both_from_opponent: bool = False  # online: y is drawn from the opponent too (IPO-MD, and every 'iterate' one)
  judges: tuple[str, ...] = ()  # online: the config.online.judge values it accepts
  rewards: bool = False  # online: needs the judge's scalar rewards r(x, y), r(x, y') (a reward model)
  second_logprobs: bool = False  # online: its loss also reads log pi and log mu of y'
  ema: bool = False  # keeps EMA parameters in state.extras['ema'], updated after every step
  needs_positive_tau: str = ''  # why its loss needs tau > 0 (IPO's target 1 / (2 tau)); '' when it does not
  responses: int = 1  # responses its model reads after the prompt (the max_len it needs)
  # Keeps pi_t, a copy of the trained parameters, in state.extras['pi_t'], refreshed every online.iteration_steps
  # steps: the samples are drawn from it and the loss reads its log-probabilities.
  iterate: bool = False
  # The state.extras key of a moving KL reference that replaces mu in the loss (comal: 'prox', mpo: 'magnet'):
  # it starts at the initial policy and is reset to the policy every online.prox_iterations iterations.
  prox: str = ''
  min_samples: int = 1  # online.samples_per_prompt it needs (sppo: win rates among K >= 2 samples of a prompt)
  # online, opponent 'iterate': no y'; y holds the K samples of each prompt, each judged against the K - 1 others
  # (its win rate: sppo)
  win_rates: bool = False
  extragradient: bool = False  # a half step, then the step from the same parameters with the half step's gradient

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

  @property
  def extras(self) -> tuple[str, ...]:
    """The keys of its state.extras, each a copy of the trained parameters (checkpointed with the run)."""
    return (('ema',) if self.ema else ()) + (('pi_t',) if self.iterate else ()) + ((self.prox,) if self.prox else ())



_ALL_JUDGES = ('preference_model', 'reward_model', 'oracle', 'prompted')
_ONLINE = dict(kind='online', model=LANGUAGE_MODEL, data='prompts')
_IPO_TAU = 'the IPO target is 1 / (2 tau)'
_PROX_TAU = 'tau weighs the KL towards its moving reference, which makes the last iterate converge'
# Pairs y, y' ~ pi_t (the iteration's frozen policy), judged; log-probabilities of both under pi, pi_t and the KL
# reference.
_ITERATE_PAIRS = dict(opponent='iterate', both_from_opponent=True, second_logprobs=True, iterate=True)
_OFFLINE = dict(kind='offline', model=LANGUAGE_MODEL, data='pairs')

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective('sft', 'supervised', LANGUAGE_MODEL, 'demonstrations', 'sft'),
    Objective('preference_model', 'supervised', 'preference_model', 'pairs', 'pairwise', responses=2),
    Objective('reward_model', 'supervised', 'reward_model', 'pairs', 'pairwise'),
    Objective('nash_md', **_ONLINE, loss='nash_md_pg', opponent='mixture', judges=_ALL_JUDGES),
    Objective('nash_ema', **_ONLINE, loss='nash_md_pg', opponent='ema', judges=_ALL_JUDGES, ema=True),
    Objective('rlhf', **_ONLINE, loss='rlhf_pg', opponent='policy', judges=('reward_model',), rewards=True),
    Objective('online_ipo', **_ONLINE, loss='ipo_pg', opponent='policy', judges=_ALL_JUDGES, second_logprobs=True,
              needs_positive_tau=_IPO_TAU),
    Objective('ipo_md', **_ONLINE, loss='ipo_pg', opponent='mixture', both_from_opponent=True, judges=_ALL_JUDGES,
              second_logprobs=True, needs_positive_tau=_IPO_TAU),
    Objective('inpo', **_ONLINE, loss='mirror_pairs', judges=_ALL_JUDGES, **_ITERATE_PAIRS),
    Objective('comal', **_ONLINE, loss='mirror_pairs', judges=_ALL_JUDGES, **_ITERATE_PAIRS, prox='prox',
              needs_positive_tau=_PROX_TAU),
    Objective('mpo', **_ONLINE, loss='magnetic_pairs', judges=_ALL_JUDGES, **_ITERATE_PAIRS, prox='magnet',
              needs_positive_tau=_PROX_TAU),
    Objective('sppo', **_ONLINE, loss='sppo', opponent='iterate', both_from_opponent=True, judges=_ALL_JUDGES,
              iterate=True, min_samples=2, win_rates=True),
    Objective('extragradient', **_ONLINE, loss='ipo_pg', opponent='policy', judges=_ALL_JUDGES,
              second_logprobs=True, needs_positive_tau=_IPO_TAU, extragradient=True),
    Objective('dpo', **_OFFLINE, loss='dpo'),
    Objective('ipo', **_OFFLINE, loss='ipo'),
)}


def register(objective: Objective) -> Objective:
  """Adds `objective` to the table (after the rows above); its loss must be registered too
  (objectives/registry.register_loss). A name the table holds already is refused."""
  if objective.name in OBJECTIVES or objective.name == IMPORTED:
    raise ValueError(f'the objective {objective.name!r} is in the table already')
  if objective.kind not in KINDS:
    raise ValueError(f'the objective {objective.name!r} has the kind {objective.kind!r}; use one of '
                     f'{", ".join(KINDS)}')
  OBJECTIVES[objective.name] = objective
  return objective


def names(kind: str = '') -> tuple[str, ...]:
  """The objectives (of `kind`, or all), in the table's order."""
  return tuple(n for n, o in OBJECTIVES.items() if not kind or o.kind == kind)


def get(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError(f'config.train.objective={name!r} is unknown; choose one of {", ".join(sorted(OBJECTIVES))}')
  return OBJECTIVES[name]


def model_family(objective: str) -> str:
  """'language_model', 'preference_model' or 'reward_model': what a run of `objective` holds (an imported run
  holds a language model); an unknown name is returned as it is (the callers' errors show it)."""
  if objective == IMPORTED:
    return LANGUAGE_MODEL
  return OBJECTIVES[objective].model if objective in OBJECTIVES else objective
