"""The experiment of `nlhf-tabular` (nlhf_jax/cli/tabular.py): the tabular algorithms on a game family, with
curves, a table and plots.

`run_command(cfg, workdir, overwrite)` checks the config and the output folder, runs the experiment and writes
WORKDIR/curves.json (against t, averaged over the games: KL_rho(pi*_tau, pi_t), e_tau(pi_t),
KL_rho(pi*, pi_t) to the unregularised equilibrium and e_0(pi_t), of the last iterate pi_t and of the average
iterate pibar_t), WORKDIR/results.md (the final values of both iterates, the exact equilibria and the RLHF policy),
WORKDIR/kl.png (with the Theorem 1 bound 8 / (tau^2 (t + 1)) of Nash-MD with eta_t = 2 / (tau (t + 2))),
WORKDIR/exploitability.png and WORKDIR/exploitability0.png (last iterates solid, averages dashed).
Everything runs in float64 (jax.enable_x64 inside the experiment only). The config and the workdir are checked
before anything runs: a WORKDIR that holds these files is refused unless `overwrite` (nothing else in it is
touched), and each file is written under a temporary name and renamed into place (nlhf_jax/outputs.py).
matplotlib is imported by `plot` alone (an optional dependency: the experiment runs without it until it draws).
"""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from nlhf_jax import outputs
from nlhf_jax.config import ConfigError
from nlhf_jax.tabular import algorithms, exact, games


def reference_policy(cfg, rng: np.random.Generator, n: int) -> np.ndarray:
  probs = [float(p) for p in str(cfg.mu.probs).split(',') if p.strip()] if cfg.mu.probs else None
  return games.reference_policy(n, cfg.mu.kind, rng, cfg.mu.concentration, probs)


def make_games(cfg) -> list[games.Game]:
  """The cfg.game.num_games games of the family (dice: one game), each with its reference policy."""
  rng = np.random.default_rng(cfg.seed)
  count = 1 if cfg.game.family == 'dice' else cfg.game.num_games
  out = []
  for _ in range(count):
    P = games.build(cfg.game.family, rng, cfg.game.num_actions, cfg.game.random_kind, cfg.game.score_scale,
                    cfg.game.mixture_weight)
    out.append(games.make_game(P, reference_policy(cfg, rng, P.shape[-1])))
  return out


def curve_points(num_steps: int, count: int) -> np.ndarray:
  """About `count` log-spaced indices in 0..num_steps (always including both ends)."""
  return np.unique(np.concatenate([[0], np.geomspace(1, num_steps, max(count - 1, 1)).astype(int), [num_steps]]))


def _fail(message: str) -> None:
  raise ConfigError(message)


def algorithm_names(cfg) -> list[str]:
  return [a.strip() for a in str(cfg.algorithms).split(',') if a.strip()]


def check_config(cfg) -> None:
  """Every value the experiment uses, checked before anything is solved; errors name the key and the fix."""
  if not (isinstance(cfg.tau, (int, float)) and math.isfinite(cfg.tau) and cfg.tau > 0):
    _fail(f'config.tau={cfg.tau!r}: must be a positive number (the KL regularisation; e.g. 0.01)')
  if not (isinstance(cfg.num_steps, int) and cfg.num_steps >= 1):
    _fail(f'config.num_steps={cfg.num_steps!r}: must be a positive integer')
  if cfg.num_curve_points < 2:
    _fail(f'config.num_curve_points={cfg.num_curve_points}: must be >= 2')
  names = algorithm_names(cfg)
  unknown = [a for a in names if a not in algorithms.ALGORITHMS]
  if not names or unknown:
    _fail(f'config.algorithms={cfg.algorithms!r}: {"unknown " + repr(unknown[0]) if unknown else "empty"}; use a '
          f'comma-separated list of {", ".join(algorithms.ALGORITHMS)}')
  if cfg.schedule not in algorithms.SCHEDULES:
    _fail(f'config.schedule={cfg.schedule!r}: use one of {", ".join(algorithms.SCHEDULES)}')
  if not cfg.eta > 0:
    _fail(f'config.eta={cfg.eta}: must be > 0')
  if not cfg.successor_eta > 0:
    _fail(f'config.successor_eta={cfg.successor_eta}: must be > 0 (the step of inpo, extragradient, comal, mpo)')
  if not cfg.prox_tau > 0:
    _fail(f'config.prox_tau={cfg.prox_tau}: must be > 0 (the KL weight towards the reference of comal and mpo)')
  if not (isinstance(cfg.prox_steps, int) and cfg.prox_steps >= 1):
    _fail(f'config.prox_steps={cfg.prox_steps!r}: must be a positive integer (steps between reference resets)')
  if not 0 <= cfg.ema_beta < 1:
    _fail(f'config.ema_beta={cfg.ema_beta}: must be in [0, 1)')
  if cfg.bt_sampling not in ('mu', 'uniform'):
    _fail(f"config.bt_sampling={cfg.bt_sampling!r}: use 'mu' or 'uniform'")
  g = cfg.game
  if g.family not in games.FAMILIES:
    _fail(f'config.game.family={g.family!r}: use one of {", ".join(games.FAMILIES)}')
  if g.family != 'dice' and g.num_actions < 2:
    _fail(f'config.game.num_actions={g.num_actions}: must be >= 2')
  if g.num_games < 1:
    _fail(f'config.game.num_games={g.num_games}: must be >= 1')
  if not 0 <= g.mixture_weight <= 1:
    _fail(f'config.game.mixture_weight={g.mixture_weight}: must be in [0, 1]')
  if cfg.mu.kind not in ('uniform', 'dirichlet', 'given'):
    _fail(f"config.mu.kind={cfg.mu.kind!r}: use 'uniform', 'dirichlet' or 'given' (with config.mu.probs)")
  if cfg.mu.kind == 'given':
    n = 3 if g.family == 'dice' else g.num_actions
    try:
      probs = [float(p) for p in str(cfg.mu.probs).split(',') if p.strip()]
    except ValueError:
      probs = None
    if probs is None or len(probs) != n or min(probs) <= 0:
      _fail(f'config.mu.probs={cfg.mu.probs!r}: mu.kind=given needs {n} positive probabilities, comma-separated '
            f'(one per action of the {g.family} game), e.g. {",".join(["%.3g" % (1 / n)] * min(n, 3))}'
            f'{",..." if n > 3 else ""}')


METRICS = ('kl', 'exploitability', 'kl0', 'exploitability0', 'avg_kl', 'avg_exploitability', 'avg_kl0',
           'avg_exploitability0')


def step_settings(cfg, name: str) -> tuple[str, float]:
  """(schedule, eta) of an algorithm: the algorithms analysed with a constant step (algorithms.CONSTANT_STEP) run
  with one where config.schedule is 'theory': self_play and sppo with config.eta, inpo, extragradient, comal and
  mpo with config.successor_eta."""
  schedule = cfg.schedule
  if name in algorithms.CONSTANT_STEP and schedule == 'theory':
    schedule = 'constant'
  eta = cfg.eta if name in algorithms.BASELINES + algorithms.UNREGULARISED else cfg.successor_eta
  return schedule, float(eta)


def exact_row(gs, targets, targets0, pols, tau: float) -> dict:
  """The table's metrics of fixed policies pols [G, C, n] (their own average), means over the games."""
  mean = lambda f: float(np.mean([f(g, t, t0, p) for g, t, t0, p in zip(gs, targets, targets0, pols)]))
  row = dict(kl=mean(lambda g, t, t0, p: exact.kl(t, p, g.rho)),
             exploitability=mean(lambda g, t, t0, p: exact.exploitability(g.P, p, g.mu, tau, g.rho)),
             kl0=mean(lambda g, t, t0, p: exact.kl(t0, p, g.rho)),
             exploitability0=mean(lambda g, t, t0, p: exact.exploitability(g.P, p, g.mu, 0.0, g.rho)))
  row.update({f'avg_{k}': v for k, v in list(row.items())})
  if len(gs) == 1:
    row['policy'] = np.asarray(pols[0][0]).tolist()
  return row


def run_experiment(cfg) -> dict:
  """Solves the games exactly, runs every algorithm (vmapped over the games) and returns the results as a dict."""
  check_config(cfg)
  tau, T = float(cfg.tau), int(cfg.num_steps)
  gs = make_games(cfg)
  solved = [exact.solve_regularized_game(g.P, g.mu, tau) for g in gs]
  targets = np.stack([s[0] for s in solved])
  certs = [c for s in solved for c in s[1]]
  nash0 = [exact.solve_unregularized(g.P[0]) for g in gs]
  targets0 = np.stack([p[None] for p, _ in nash0])
  nu = lambda g: g.mu[0] if cfg.bt_sampling == 'mu' else None
  rewards = np.stack([exact.bt_fit(g.P[0], nu(g))[None] for g in gs])
  batch = algorithms.stack([algorithms.tables(g.P, g.mu, g.rho) for g in gs])
  taus = np.full(len(gs), tau)
  idx = curve_points(T, cfg.num_curve_points)
  rows, curves = {}, {}
  with jax.enable_x64(True):
    for name in algorithm_names(cfg):
      schedule, eta = step_settings(cfg, name)
      c = algorithms.run_batch(name, batch, taus, T, targets, schedule=schedule, eta=eta, beta=cfg.ema_beta,
                               reward=rewards if name == 'rlhf' else None, target0=targets0, with_average=True,
                               prox_tau=cfg.prox_tau, prox_steps=cfg.prox_steps)
      pis = np.exp(np.asarray(c.log_pi))
      curves[name] = {}
      rows[name] = dict(schedule=schedule, eta=eta)
      for key in METRICS:
        values = np.asarray(getattr(c, key))
        curves[name][f'{key}_mean'] = values.mean(0)[idx].tolist()
        curves[name][f'{key}_max'] = values.max(0)[idx].tolist()
        rows[name][key] = float(values[:, -1].mean())
      # the final exploitabilities again, from the exact (numpy) formulas
      rows[name]['exploitability0'] = float(np.mean([exact.exploitability(g.P, p, g.mu, 0.0, g.rho)
                                                     for g, p in zip(gs, pis)]))
      if len(gs) == 1:
        rows[name]['policy'] = pis[0, 0].tolist()
        rows[name]['average_policy'] = np.exp(np.asarray(c.log_avg))[0, 0].tolist()
  rlhf_exact = np.stack([exact.rlhf_policy(g.mu, r, tau) for g, r in zip(gs, rewards)])
  mus = np.stack([g.mu for g in gs])
  exact_rows = {name: exact_row(gs, targets, targets0, pols, tau)
                for name, pols in (('pi*_tau', targets), ('pi* (linear program)', targets0),
                                   ('rlhf (closed form)', rlhf_exact), ('mu', mus))}
  return dict(
      name=cfg.name, family=cfg.game.family, tau=tau, num_steps=T, num_games=len(gs),
      num_actions=int(gs[0].num_actions), t=idx.tolist(), bound=(8.0 / (tau**2 * (idx + 1.0))).tolist(),
      curves=curves, final=rows, exact=exact_rows,
      solver=dict(max_exploitability=max(c.exploitability for c in certs),
                  max_residual=max(c.residual for c in certs), all_converged=all(c.converged for c in certs)),
      unregularized=dict(values=[v for _, v in nash0], policy=nash0[0][0].tolist() if len(gs) == 1 else None,
                         supports=[int(np.sum(p > 1e-9)) for p, _ in nash0]),
      bt_rewards=rewards[0, 0].tolist() if len(gs) == 1 else None, config=cfg.to_dict())


def markdown(res: dict) -> str:
  """The results table: the last iterate pi_T and the average iterate pibar_T of every algorithm."""
  lines = [f"# {res['name']}: {res['family']}, {res['num_games']} game(s), {res['num_actions']} actions, "
           f"tau = {res['tau']:g}, T = {res['num_steps']}", '',
           'pi*_tau: the regularised equilibrium; pi*: the unregularised one (linear program; KL to it is '
           'meaningful where it is unique); e_tau: exploitability (duality gap) in the regularised game; e_0: '
           'unregularised (max_y P(y > pi) - 1/2). pi_T: the last iterate; pibar_T: the average of pi_0..pi_{T-1}. '
           'Means over the games.', '',
           '| policy | step | KL(pi*_tau, pi_T) | e_tau(pi_T) | KL(pi*, pi_T) | e_0(pi_T) | KL(pi*_tau, pibar_T) | '
           'e_tau(pibar_T) | KL(pi*, pibar_T) | e_0(pibar_T) | pi_T |', '|---|---|---|---|---|---|---|---|---|---|---|']
  fmt = lambda p: '' if p is None else '(' + ', '.join(f'{x:.3f}' for x in p) + ')'
  for name, r in list(res['final'].items()) + list(res['exact'].items()):
    step = '' if 'schedule' not in r else 'theory' if r['schedule'] == 'theory' else f"{r['schedule']} {r['eta']:g}"
    values = ' | '.join(f'{max(r[k], 0.0):.2e}' for k in METRICS)
    lines.append(f"| {name} | {step} | {values} | {fmt(r.get('policy'))} |")
  s = res['solver']
  lines += ['', f"Regularised solver: max exploitability {s['max_exploitability']:.2e}, max fixed-point residual "
            f"{s['max_residual']:.2e}, all certified: {s['all_converged']}.",
            f"Unregularised game values (linear program): {', '.join(f'{v:.6f}' for v in res['unregularized']['values'])}."]
  if res['unregularized']['policy'] is not None:
    lines.append(f"Unregularised equilibrium: {fmt(res['unregularized']['policy'])}; "
                 f"Bradley-Terry scores: {fmt(res['bt_rewards'])}.")
  lines.append(f"Theorem 1 bound at T: 8 / (tau^2 (T + 1)) = {res['bound'][-1]:.3e}.")
  return '\n'.join(lines) + '\n'


def plot(res: dict, workdir: str) -> None:
  """kl.png (with the Theorem 1 bound), exploitability.png and exploitability0.png, log-log against t + 1: each
  algorithm's last iterate solid, its average iterate dashed in the same colour (not for kl.png)."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  t1 = np.asarray(res['t']) + 1.0
  for key, fname, ylabel in (('kl_mean', 'kl.png', 'KL(pi*_tau, pi_t)'),
                             ('exploitability_mean', 'exploitability.png', 'exploitability e_tau(pi_t)'),
                             ('exploitability0_mean', 'exploitability0.png', 'unregularised exploitability e_0')):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    cmap = plt.get_cmap('tab20')  # 20 distinct colours: the dark ones first, then the light ones
    for i, (name, c) in enumerate(res['curves'].items()):
      line, = ax.plot(t1, np.maximum(np.asarray(c[key]), 1e-16), label=name, color=cmap((2 * i) % 20 + (2 * i) // 20))
      if key != 'kl_mean':
        ax.plot(t1, np.maximum(np.asarray(c['avg_' + key]), 1e-16), '--', color=line.get_color(), lw=0.8)
    if key == 'kl_mean':
      ax.plot(t1, res['bound'], 'k--', label='Theorem 1: 8 / (tau^2 (t+1))')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('t + 1')
    ax.set_ylabel(ylabel)
    ax.set_title(f"{res['name']} (tau = {res['tau']:g}, {res['num_games']} game(s))")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with outputs.replacing_file(os.path.join(workdir, fname), 'wb') as f:
      fig.savefig(f, dpi=120, format='png')
    plt.close(fig)


OUTPUTS = ('curves.json', 'results.md', 'kl.png', 'exploitability.png', 'exploitability0.png')


def write(res: dict, workdir: str) -> None:
  """The OUTPUTS into workdir, each by rename."""
  outputs.write_text(os.path.join(workdir, 'curves.json'), json.dumps(res, indent=1))
  outputs.write_text(os.path.join(workdir, 'results.md'), markdown(res))
  plot(res, workdir)


def run_command(cfg, workdir: str, overwrite: bool = False) -> dict:
  """The command: the config and the output folder checked (OutputError when it holds OUTPUTS and not
  `overwrite`), then the experiment run and written."""
  check_config(cfg)
  outputs.check_dir(workdir, OUTPUTS, overwrite)
  res = run_experiment(cfg)
  write(res, workdir)
  return res

