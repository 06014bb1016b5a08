"""The tabular laboratory (`nlhf-tabular`): Nash-MD, its baselines and its successors on exact preference games.

Variants: `dice` (non-transitive dice, RLHF vs Nash-MD), `random` (random games), `bt` (Bradley-Terry
preferences, where RLHF and NLHF agree), `mixture` (a transitive plus a cyclic component) and `cyclic`
(rock-paper-scissors on 5 actions, whose unregularised equilibria are not unique).
  nlhf-tabular --config=experiments/configs/tabular.py:dice --workdir=/tmp/tabular [--config.tau=0.05 ...]
"""
import ml_collections

VARIANTS = ('dice', 'random', 'bt', 'mixture', 'cyclic')


def get_config(arg: str = 'dice') -> ml_collections.ConfigDict:
  variant = arg or 'dice'
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of tabular.py; use one of: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.name = f'tabular_{variant}'
  c.seed = 0
  c.game = dict(family=variant, num_actions=3, num_games=1, random_kind='uniform', score_scale=2.0,
                mixture_weight=0.5)
  # Reference policy mu: 'uniform', 'dirichlet' (concentration) or 'given' (probs, comma separated).
  c.mu = dict(kind='uniform', concentration=1.0, probs='')
  c.tau = 0.1
  c.num_steps = 2000
  c.algorithms = 'nash_md,omd,nash_ema,self_play,best_response,rlhf,inpo,comal,sppo,extragradient,mpo'
  # Nash-MD, OMD, Nash-EMA, best response, RLHF: 'theory', 'constant' or 'inverse_sqrt'. With 'theory', the
  # algorithms analysed with a constant step (self_play, sppo, inpo, extragradient, comal, mpo) take one.
  c.schedule = 'theory'
  c.eta = 0.1  # step size of the constant / inverse_sqrt schedules, and always of self-play and SPPO
  c.successor_eta = 1.0  # step size of INPO, extragradient (<= 1 / (1 + tau) for its linear rate), COMAL, MPO
  c.prox_tau = 0.05  # COMAL and MPO: the KL weight towards their moving reference (prox centre, magnet)
  c.prox_steps = 50  # COMAL and MPO: steps between two resets of the reference to the current policy
  c.ema_beta = 0.9
  c.bt_sampling = 'mu'  # the pair distribution of the Bradley-Terry fit behind RLHF: 'mu' (nu = mu) or 'uniform'
  c.num_curve_points = 200  # points per curve in curves.json and the plots (log-spaced in t)
  if variant == 'dice':
    c.mu.kind, c.mu.probs = 'given', '0.7,0.2,0.1'
    c.tau = 0.01
    c.num_steps = 10_000
  elif variant == 'random':
    c.game.num_actions, c.game.num_games = 20, 16
    c.mu.kind = 'dirichlet'
  elif variant == 'bt':
    c.game.num_actions, c.game.num_games = 10, 8
  elif variant == 'mixture':
    c.game.num_actions, c.game.num_games = 9, 8
    c.tau = 0.05
  elif variant == 'cyclic':
    c.game.num_actions = 5
    c.mu.kind = 'dirichlet'
    c.tau = 0.05
  return c
