"""Figure ``convergence``: last-iterate rates of the exact algorithms.

Every exact algorithm runs on the same random games (one per seed) at each
``beta`` until it has used the query budget; we record ``KL_rho(pi*_beta ||
pi)`` and the duality gap ``Gap_beta(pi)`` against preference queries ``N``
and draw the rates ALGORITHMS.md states:

* Nash-MP (claim 3): ``KL_N <= (1 + 2 beta)^(-N/2) KL_0`` (two queries per
  iteration, contraction ``1 / (1 + 2 beta)`` per iteration at ``eta = 2
  beta``);
* proximal point (claim 2): ``KL_k <= (1 + eta)^(-k) KL_0`` per outer step
  ``k``, drawn against outer steps since one step uses a varying number of
  inner queries.

``sppo`` is left out by default: it ignores ``beta`` and does not aim at
``pi*_beta``. The per-seed rates are least-squares slopes of ``ln KL``
against ``N`` (or ``k``) over the evaluations with ``KL > FIT_FLOOR``.
"""

from __future__ import annotations

import os

import numpy as np

from nash_jax import analysis, experiment
from nash_jax import io as io_lib
from nash_jax.figures import common
from nash_jax.tasks import tabular

CLAIM = ('claims 2 and 3: Nash-MP KL falls like (1+2 beta)^(-N/2) in '
         'queries; proximal point by 1/(1+eta) per outer step')
OUTPUTS = ['convergence.csv', 'convergence_rates.csv']
METRICS = ('kl_to_equilibrium', 'duality_gap', 'fixed_point_residual')
# Rates are fitted where the KL is well above the float64 resolution.
FIT_FLOOR = 1e-12
# A measured KL counts as within a bound up to this absolute slack.
BOUND_SLACK = 1e-14


def nash_mp_bound(queries, beta):
  """Nash-MP's claimed factor ``(1 + 2 beta)^(-N / 2)`` after ``N`` queries."""
  return (1 + 2 * beta) ** (-np.asarray(queries, np.float64) / 2)


def proximal_point_bound(outer_steps, eta):
  """Proximal point's factor ``(1 + eta)^(-k)`` after ``k`` outer steps."""
  return (1 + eta) ** (-np.asarray(outer_steps, np.float64))


def fitted_rate(x, kl):
  """``exp`` of the least-squares slope of ``ln KL`` against ``x`` over the
  points with ``KL > FIT_FLOOR`` (NaN with fewer than 3 such points): the
  measured contraction per unit of ``x``."""
  x, kl = np.asarray(x, np.float64), np.asarray(kl, np.float64)
  keep = kl > FIT_FLOOR
  if np.sum(keep) < 3:
    return float('nan')
  slope = np.polyfit(x[keep], np.log(kl[keep]), 1)[0]
  return float(np.exp(slope))


def _configs(config: dict, beta: float, budget: int, eval_every: int,
             outer_steps: int, directory: str):
  """The validated :class:`~nash_jax.tasks.tabular.TabularConfig` of each
  algorithm at ``beta``."""
  base = tabular.TabularConfig(
      game=config['game'], num_actions=config['num_actions'],
      ref_policy=config['ref_policy'], beta=beta,
      num_seeds=config['num_seeds'], seed=config['seed'],
      num_steps=budget, eval_every=eval_every, checkpoint_every=0)
  configs = {}
  for name in config['algorithms']:
    run_dir = os.path.join(directory, 'runs', f'beta_{beta:g}', name)
    c = base.replace(algorithm=name, output_dir=run_dir)
    if name == 'proximal_point':
      c = c.replace(num_steps=outer_steps, eval_every=1)
    configs[name], _ = experiment.validate(tabular.TASK, c)
  return configs


def validate(config: dict, directory: str) -> None:
  """Refuses a config that cannot run (raises ConfigError) before any
  work."""
  for beta, budget, every, outer in _settings(config):
    _configs(config, beta, budget, every, outer, directory)


def _settings(config):
  return zip(config['betas'], config['query_budgets'], config['eval_every'],
             config['proximal_point_outer_steps'])


def compute(config: dict, directory: str, log) -> list[str]:
  """Runs every algorithm at every beta; writes ``convergence.csv`` (one
  row per beta, algorithm, seed and evaluation) and
  ``convergence_rates.csv``."""
  rows, rates = [], []
  for beta, budget, every, outer in _settings(config):
    configs = _configs(config, beta, budget, every, outer, directory)
    prepared = tabular.TabularInputs(prepared=tabular.prepare(
        next(iter(configs.values()))))
    for name, c in configs.items():
      budget_arg = None if name == 'proximal_point' else budget
      results = experiment.run_task(tabular.TASK, [c], prepared,
                                    query_budget=budget_arg,
                                    log=lambda line: None)[0]
      experiment.write_results(results)
      final_kl = common.log_band(results.rows[-1]['kl_to_equilibrium'])[1]
      log(f'  convergence: beta={beta:g} {name:<15} '
          f'{results.wall_time:5.1f}s  final KL (geometric mean) '
          f'{final_kl:.2e}')
      for r in results.rows:
        for i in range(c.num_seeds):
          rows.append({'beta': beta, 'algorithm': name, 'seed': c.seed + i,
                       'step': int(r['step'][i]),
                       'preference_queries': int(r['preference_queries'][i]),
                       **{m: float(r[m][i]) for m in METRICS}})
      rates.append(_rate_row(results, name, beta, c.eta))
  io_lib.write_records(os.path.join(directory, 'convergence.csv'), rows)
  io_lib.write_records(os.path.join(directory, 'convergence_rates.csv'), rates)
  return OUTPUTS


def _rate_row(results, name, beta, eta):
  """Measured rates of one run against the claimed ones."""
  kl = np.stack([r['kl_to_equilibrium'] for r in results.rows])  # [T, S]
  queries = np.stack([r['preference_queries'] for r in results.rows])
  steps = np.stack([r['step'] for r in results.rows])
  per_step = name == 'proximal_point'
  x = steps if per_step else queries
  seeds = range(kl.shape[1])
  fitted = np.asarray([fitted_rate(x[:, i], kl[:, i]) for i in seeds])
  if name == 'nash_mp':
    theory = (1 + 2 * beta) ** -0.5
    bound = kl[0] * nash_mp_bound(queries, beta)
  elif per_step:
    theory = 1 / (1 + eta)
    bound = kl[0] * proximal_point_bound(steps, eta)
  else:
    theory, bound = float('nan'), None
  within = (float('nan') if bound is None else
            float(np.mean(kl <= bound + BOUND_SLACK)))
  to_reach = analysis.queries_to_reach(results.rows, 'kl_to_equilibrium',
                                       1e-6)
  return {'beta': beta, 'algorithm': name, 'eta': eta,
          'rate_unit': 'outer_step' if per_step else 'query',
          'fitted_rate': float(np.exp(np.nanmean(np.log(fitted)))),
          'fitted_rate_min': float(np.nanmin(fitted)),
          'fitted_rate_max': float(np.nanmax(fitted)),
          'claimed_rate': theory,
          'fraction_within_bound': within,
          'queries_to_kl_1e-6': float(np.mean(to_reach)),
          'reached_kl_1e-6': float(np.mean(np.isfinite(to_reach))),
          'mean_queries_per_step': float(np.mean(queries[-1] /
                                                 np.maximum(steps[-1], 1))),
          'final_kl_geometric_mean': float(common.log_band(kl[-1])[1])}


def _curves(rows, beta, name, x_name):
  """``(x, [T, S] kl, [T, S] gap)`` of one algorithm at ``beta``."""
  sub = [r for r in rows if r['beta'] == beta and r['algorithm'] == name]
  seeds = sorted({r['seed'] for r in sub})
  by_seed = [[r for r in sub if r['seed'] == s] for s in seeds]
  length = min(len(b) for b in by_seed)
  pick = lambda m: np.asarray([[b[t][m] for b in by_seed]
                               for t in range(length)])
  return (np.mean(pick(x_name), axis=1), pick('kl_to_equilibrium'),
          pick('duality_gap'))


def plot(directory: str) -> None:
  """Rows: one per beta. Columns: KL and gap against queries (all
  algorithms, Nash-MP's claimed rate dashed), proximal point's KL against
  outer steps (its claimed rate dashed)."""
  rows = common.read_csv(os.path.join(directory, 'convergence.csv'))
  rates = common.read_csv(os.path.join(directory, 'convergence_rates.csv'))
  plt = common.pyplot()
  betas = list(dict.fromkeys(r['beta'] for r in rows))
  algorithms = list(dict.fromkeys(r['algorithm'] for r in rows))
  seeds = len({r['seed'] for r in rows})
  fig, axes = plt.subplots(len(betas), 3, figsize=(11, 3.3 * len(betas)),
                           squeeze=False, constrained_layout=True)
  for row_axes, beta in zip(axes, betas):
    budget = max(r['preference_queries'] for r in rows if r['beta'] == beta
                 and r['algorithm'] != 'proximal_point')
    for name in algorithms:
      x, kl, gap = _curves(rows, beta, name, 'preference_queries')
      st = analysis.style(name)
      for ax, values in ((row_axes[0], kl), (row_axes[1], gap)):
        lo, mid, hi = common.log_band(values, axis=1)
        ax.plot(x, mid, label=name, lw=1.6, **st)
        ax.fill_between(x, lo, hi, color=st['color'], alpha=0.15, lw=0)
      if name == 'nash_mp':
        kl0 = common.log_band(kl[0])[1]
        row_axes[0].plot(x, kl0 * nash_mp_bound(x, beta), color='k', lw=1,
                         ls=(0, (4, 2)), label=r'claimed $(1+2\beta)^{-N/2}$')
      if name == 'proximal_point':
        _plot_proximal_point(row_axes[2], rows, rates, beta)
    for ax, label in ((row_axes[0], r'KL$(\pi^*_\beta\,\|\,\pi)$'),
                      (row_axes[1], r'duality gap Gap$_\beta(\pi)$')):
      ax.set_yscale('log')
      ax.set_ylim(bottom=common.FLOOR / 2)
      ax.set_xlim(0, budget)
      ax.set_xlabel('preference queries N (exact win-rate evaluations)')
      ax.set_ylabel(label)
      ax.set_title(rf'$\beta$ = {beta:g}: {label}')
      ax.grid(True, alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncol=6)
  fig.suptitle(f'Last-iterate convergence on random games (n = '
               f'{_num_actions(directory)}), geometric mean and 95% CI over '
               f'{seeds} games')
  common.save(fig, directory, 'convergence')


def _num_actions(directory):
  import json
  path = os.path.join(directory, 'result.json')
  if not os.path.exists(path):
    return '?'
  with open(path) as f:
    return json.load(f)['config']['num_actions']


def _plot_proximal_point(ax, rows, rates, beta):
  steps, kl, _ = _curves(rows, beta, 'proximal_point', 'step')
  rate = [r for r in rates if r['beta'] == beta and
          r['algorithm'] == 'proximal_point'][0]
  st = analysis.style('proximal_point')
  lo, mid, hi = common.log_band(kl, axis=1)
  ax.plot(steps, mid, lw=1.6, marker='o', ms=3,
          label=f'measured (fitted {rate["fitted_rate"]:.3f}/step)', **st)
  ax.fill_between(steps, lo, hi, color=st['color'], alpha=0.15, lw=0)
  ax.plot(steps, mid[0] * proximal_point_bound(steps, rate['eta']), color='k',
          lw=1, ls=(0, (4, 2)),
          label=rf'claimed $(1+\eta)^{{-k}}$, $\eta$={rate["eta"]:g}')
  ax.set_yscale('log')
  ax.set_xlabel('proximal point outer steps k (anchor updates)')
  ax.set_ylabel(r'KL$(\pi^*_\beta\,\|\,\pi_k)$')
  ax.set_title(rf'$\beta$ = {beta:g}: proximal point, '
               f'{rate["mean_queries_per_step"]:.0f} queries/step')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower left')
