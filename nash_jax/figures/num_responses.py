"""Figure ``num_responses``: do the rates depend on the number of responses?

Claim 4 of ALGORITHMS.md section 5: Nash-MP's rate does not depend on
``n = |Y|``. For each ``n`` and ``beta`` we run Nash-MP (and baselines) on
random games (one per seed), evaluate every ``eval_every`` steps, and record
the preference queries needed to reach ``KL_rho(pi*_beta || pi) < threshold``;
the claimed bound needs ``2 ln(KL_0 / threshold) / ln(1 + 2 beta)``.

The reference ``pi*_beta``. For ``n <= newton_max_actions`` it is the
library's Newton solver (:func:`nash_jax.reference.regularized_equilibrium`);
its dense ``n x n`` Jacobian costs ``O(n^3)`` a step (measured on one core:
0.7 s at n = 1,000, 15 s at 2,000, 140 s at 4,000; about 40 min extrapolated
to 10,000). Above that, :func:`certified_equilibrium` iterates until the
span residual is below ``tol``, which certifies the result whatever the
iteration: if ``log pi = log pi_ref + g_pi / beta + c + e`` with
``span(e) <= eps`` then, since ``<pi* - pi, (P - 1/2)(pi* - pi)> = 0``,

  KL(pi*||pi) + KL(pi||pi*) = <pi - pi*, e> <= ||pi* - pi||_1 eps / 2,

and Pinsker's inequality gives ``KL(pi* || pi) <= eps^2 / 2`` (per context).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import analysis, experiment, rules
from nash_jax import io as io_lib
from nash_jax.figures import common
from nash_jax.games import Game, win_rates
from nash_jax.reference import ROUNDING_FLOOR, SolverError
from nash_jax.tasks import tabular

CLAIM = ('claim 4: Nash-MP rates do not depend on the number of responses '
         'n (10 to 10,000)')
OUTPUTS = ['num_responses.csv', 'num_responses_curves.csv']


def claimed_queries(kl_initial, threshold, beta):
  """Queries the claimed bound ``KL_0 (1 + 2 beta)^(-N/2) < threshold``
  needs: ``N = 2 ln(KL_0 / threshold) / ln(1 + 2 beta)`` (0 if already
  below)."""
  ratio = np.maximum(np.asarray(kl_initial, np.float64) / threshold, 1.0)
  return 2 * np.log(ratio) / np.log1p(2 * beta)


def span_residual(log_policy, game: Game, beta):
  """Per context, ``span_y(log pi - log pi_ref - g_pi / beta)``, ``[X]``."""
  g = win_rates(game.preferences, jnp.exp(log_policy))
  r = log_policy - game.log_ref_policy - g / beta
  return jnp.max(r, axis=-1) - jnp.min(r, axis=-1)


def certified_equilibrium(game: Game, beta: float, tol: float = 1e-10,
                          chunk: int = 25, max_iter: int = 20_000):
  """``pi*_beta`` of one game by extragradient iteration, certified by its
  span residual (module docstring: ``KL(pi* || pi) <= span^2 / 2``).

  Extragradient with ``eta = min(1, 1/beta)`` from ``pi_ref``, ``chunk``
  iterations per compiled call, until the largest span over contexts is
  below ``tol``, or stalls below ``ROUNDING_FLOOR`` (float64 rounding of
  ``g / beta``, as in :mod:`nash_jax.reference`).

  Returns:
    ``([X, n] probabilities, span residual)``, float64.

  Raises:
    SolverError: no certificate within ``max_iter`` iterations.
  """
  eta = min(1.0, 1.0 / beta)
  log_ref = game.log_ref_policy

  @jax.jit
  def advance(log_pi):
    def body(_, lp):
      half = rules.mirror_descent(lp, log_ref, win_rates(
          game.preferences, jnp.exp(lp)), eta, beta)
      return rules.mirror_descent(lp, log_ref, win_rates(
          game.preferences, jnp.exp(half)), eta, beta)
    log_pi = jax.lax.fori_loop(0, chunk, body, log_pi)
    return log_pi, jnp.max(span_residual(log_pi, game, beta))

  log_pi = log_ref
  best, best_span, since_best = log_pi, np.inf, 0
  for _ in range(0, max_iter, chunk):
    log_pi, span = advance(log_pi)
    span = float(span)
    if span < best_span:
      best, best_span, since_best = log_pi, span, 0
    else:
      since_best += 1
    if best_span < tol or (since_best >= 10 and best_span < ROUNDING_FLOOR):
      return np.exp(np.asarray(best, np.float64)), best_span
  raise SolverError(f'certified_equilibrium: span residual {best_span:.3g} '
                    f'above {tol:g} after {max_iter} iterations '
                    f'(beta={beta})')


def _base(config, beta, budget, directory, num_actions):
  return tabular.TabularConfig(
      game=config['game'], ref_policy=config['ref_policy'],
      num_actions=num_actions, beta=beta, num_steps=budget,
      eval_every=config['eval_every'],
      checkpoint_every=0, output_dir=os.path.join(
          directory, 'runs', f'beta_{beta:g}', f'n_{num_actions}'))


def _batches(config, num_actions):
  """Seed batches ``(first_seed, count)`` run in one call each: all seeds
  at once, or one at a time above ``newton_max_actions`` (memory)."""
  num_seeds = config['num_seeds'][config['sizes'].index(num_actions)]
  if num_actions <= config['newton_max_actions']:
    return [(config['seed'], num_seeds)]
  return [(config['seed'] + i, 1) for i in range(num_seeds)]


def _run_configs(config, directory):
  """Every validated run: ``(beta, n, first_seed, {algorithm: config})``."""
  out = []
  for beta, budget in zip(config['betas'], config['query_budgets']):
    for n in config['sizes']:
      for first, count in _batches(config, n):
        base = _base(config, beta, budget, directory, n)
        configs = {}
        for name in config['algorithms']:
          c = base.replace(algorithm=name, seed=first, num_seeds=count,
                           output_dir=os.path.join(base.output_dir,
                                                   f'{name}_seed_{first}'))
          configs[name], _ = experiment.validate(tabular.TASK, c)
        out.append((beta, n, configs))
  return out


def validate(config: dict, directory: str) -> None:
  """Refuses a config that cannot run (raises ConfigError)."""
  _run_configs(config, directory)


def _prepare(config, c):
  """Games and exact references of a run; Newton up to
  ``newton_max_actions``, else :func:`certified_equilibrium`."""
  if c.num_actions <= config['newton_max_actions']:
    games, eq = tabular.prepare(c)
    return (games, eq), 'newton', np.nan
  games = tabular.build_games(c, None)
  eqs, spans = [], []
  for i in range(c.num_seeds):
    game = jax.tree.map(lambda a, i=i: a[i], games)
    eq, span = certified_equilibrium(game, c.beta)
    eqs.append(eq)
    spans.append(span)
  return (games, np.stack(eqs)), 'certified_extragradient', max(spans)


def compute(config: dict, directory: str, log) -> list[str]:
  """Writes ``num_responses.csv`` (per beta, n, algorithm and seed: queries
  to the threshold) and ``num_responses_curves.csv`` (Nash-MP's KL against
  queries, geometric mean and 95% CI over seeds, per beta and n)."""
  threshold = config['threshold']
  rows, kl_by = [], {}
  for beta, n, configs in _run_configs(config, directory):
    first = next(iter(configs.values()))
    prepared, method, residual = _prepare(config, first)
    for name, c in configs.items():
      results = experiment.run_task(
          tabular.TASK, [c], tabular.TabularInputs(prepared=prepared),
          query_budget=c.num_steps, log=lambda line: None)[0]
      experiment.write_results(results)
      to_reach = analysis.queries_to_reach(results.rows, 'kl_to_equilibrium',
                                           threshold)
      kl0 = results.rows[0]['kl_to_equilibrium']
      log(f'  num_responses: beta={beta:g} n={n:<6d} {name:<14} seeds '
          f'{c.seed}..{c.seed + c.num_seeds - 1} {results.wall_time:6.1f}s  '
          f'queries to KL<{threshold:g}: {np.nanmean(to_reach):.0f}')
      for i in range(c.num_seeds):
        rows.append({'beta': beta, 'num_actions': n, 'algorithm': name,
                     'seed': c.seed + i, 'kl_initial': float(kl0[i]),
                     'threshold': threshold,
                     'queries_to_threshold': float(to_reach[i]),
                     'query_budget': c.num_steps,
                     'claimed_queries': float(claimed_queries(
                         kl0[i], threshold, beta)),
                     'reference': method, 'reference_span': residual})
      if name == 'nash_mp':
        kl = np.stack([r['kl_to_equilibrium'] for r in results.rows])
        queries = [int(r['preference_queries'][0]) for r in results.rows]
        kl_by.setdefault((beta, n), ([], queries))[0].append(kl)
  curves = []
  for (beta, n), (kls, queries) in kl_by.items():
    length = min(len(k) for k in kls)
    kl = np.concatenate([k[:length] for k in kls], axis=1)
    lo, mid, hi = common.log_band(kl, axis=1)
    for t in range(length):
      curves.append({'beta': beta, 'num_actions': n,
                     'preference_queries': queries[t], 'kl_low': lo[t],
                     'kl_mean': mid[t], 'kl_high': hi[t]})
  io_lib.write_records(os.path.join(directory, OUTPUTS[0]), rows)
  io_lib.write_records(os.path.join(directory, OUTPUTS[1]), curves)
  return OUTPUTS


def plot(directory: str) -> None:
  """Per beta: queries to the threshold against n (mean and 95% CI over
  seeds; unfilled markers where some seed did not reach it within the
  budget), and Nash-MP's KL curves for each n with the claimed rate."""
  rows = common.read_csv(os.path.join(directory, OUTPUTS[0]))
  curves = common.read_csv(os.path.join(directory, OUTPUTS[1]))
  plt = common.pyplot()
  betas = list(dict.fromkeys(r['beta'] for r in rows))
  algorithms = list(dict.fromkeys(r['algorithm'] for r in rows))
  sizes = sorted({r['num_actions'] for r in rows})
  threshold = rows[0]['threshold']
  colours = plt.get_cmap('viridis')(np.linspace(0, 0.9, len(sizes)))
  fig, axes = plt.subplots(len(betas), 2, figsize=(10, 3.4 * len(betas)),
                           squeeze=False, constrained_layout=True)
  for (left, right), beta in zip(axes, betas):
    for name in algorithms:
      means, halves, complete = [], [], []
      for n in sizes:
        q = common.column(rows, 'queries_to_threshold', beta=beta,
                          num_actions=n, algorithm=name)
        complete.append(bool(np.all(np.isfinite(q))))
        mean, half = common.mean_ci(q[np.isfinite(q)]) if np.any(
            np.isfinite(q)) else (np.nan, np.nan)
        means.append(mean)
        halves.append(half)
      st = analysis.style(name)
      left.errorbar(sizes, means, yerr=halves, label=name, lw=1.5, capsize=3,
                    marker='o', ms=4, **st)
      for n, m, ok in zip(sizes, means, complete):
        if not ok:
          left.plot([n], [m], marker='o', ms=9, mfc='none', color='k')
    claimed = [np.mean(common.column(rows, 'claimed_queries', beta=beta,
                                     num_actions=n, algorithm='nash_mp'))
               for n in sizes]
    left.plot(sizes, claimed, color='k', lw=1, ls=(0, (4, 2)), marker='x',
              label=r'Nash-MP claimed bound')
    left.set_xscale('log')
    left.set_yscale('log')
    left.set_xlabel('number of responses n')
    left.set_ylabel(f'preference queries to KL < {threshold:g}')
    left.set_title(rf'$\beta$ = {beta:g}: queries to reach '
                   rf'KL$(\pi^*_\beta\|\pi) < {threshold:g}$')
    left.grid(True, which='both', alpha=0.3)
    left.legend()
    for n, colour in zip(sizes, colours):
      sub = [c for c in curves if c['beta'] == beta and c['num_actions'] == n]
      x = np.asarray([c['preference_queries'] for c in sub])
      right.plot(x, [c['kl_mean'] for c in sub], color=colour, lw=1.5,
                 label=f'n = {int(n):,}')
      right.fill_between(x, [c['kl_low'] for c in sub],
                         [c['kl_high'] for c in sub], color=colour, alpha=0.2,
                         lw=0)
      if n == sizes[-1]:
        kl0 = np.max([c['kl_mean'] for c in curves if c['beta'] == beta and
                      c['preference_queries'] == 0])
        right.plot(x, kl0 * (1 + 2 * beta) ** (-x / 2), color='k', lw=1,
                   ls=(0, (4, 2)), label=r'claimed $(1+2\beta)^{-N/2}$ '
                   '(from the largest KL$_0$)')
    right.axhline(threshold, color='grey', lw=0.8, ls=':')
    right.set_yscale('log')
    right.set_ylim(common.FLOOR / 2, None)
    right.set_xlabel('preference queries N')
    right.set_ylabel(r'KL$(\pi^*_\beta\,\|\,\pi)$')
    right.set_title(rf'$\beta$ = {beta:g}: Nash-MP for each n '
                    '(geometric mean, 95% CI)')
    right.grid(True, alpha=0.3)
    right.legend()
  fig.suptitle('Preference queries against the number of responses '
               '(random games, one per seed)')
  common.save(fig, directory, 'num_responses')
