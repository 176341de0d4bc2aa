"""Figure ``sampled``: last-iterate convergence from sampled preferences
(ALGORITHMS.md section 5, claim 5).

Left panels, one per policy class (log-linear, MLP): every sampled algorithm
learns from Bernoulli outcomes, ``batch_size`` comparisons (queries) a step,
on ``annotators`` games (preferences of a few annotators whose rewards are
linear in the response features). With ``feature_dim >= num_contexts *
num_actions`` the log-linear class holds every policy, ``pi*_beta``
included, so its KL can go to zero up to the noise. Each algorithm runs with
its default hyperparameters (:func:`nash_jax.algorithms.resolve_config`).
We draw ``KL_rho(pi*_beta || pi)`` of the last iterate against preference
queries: the median over seeds and the band between the quartiles, and give
in the legend the fraction of seeds whose final KL is below
``kl_threshold``.

Right panel (the "noise floor that shrinks with batch size"): one
algorithm, tabular policy, random games, several batch sizes ``B`` at the
same query budget. With a constant step ``lr``, SGD's stationary error is
about ``lr sigma^2 / (B mu)`` (gradient variance ``sigma^2 / B``, curvature
``mu``): a ``B`` times larger batch gives a ``B`` times lower floor, reached
after ``B`` times fewer steps but as many queries. The floor of a run is the
median over seeds of the mean KL over the last :data:`FLOOR_FRACTION` of its
evaluations.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nash_jax import analysis, experiment
from nash_jax import io as io_lib
from nash_jax.figures import common
from nash_jax.tasks import tabular

CLAIM = ('claim 5: from Bernoulli preferences in finite batches the last '
         'iterate still converges, to a noise floor that shrinks with batch '
         'size, for most seeds')
OUTPUTS = ['sampled.csv', 'sampled_summary.csv']
# The floor of a run: the last quarter of its evaluations.
FLOOR_FRACTION = 0.25
POLICY_TITLE = {'tabular': 'tabular', 'loglinear': 'log-linear',
                'mlp': 'MLP'}


def _config(config: dict, directory: str, panel: str, algorithm: str,
            policy: str, batch_size: int):
  """One run's settings (not validated) and query budget; ``panel`` is
  ``policies`` (the config's top level) or ``batch`` (``config['batch']``
  overrides it)."""
  c = dict(config, **config['batch']) if panel == 'batch' else config
  steps, every = common.sampled_schedule(c['query_budget'], batch_size,
                                         c['evaluations'])
  name = (f'{policy}/{algorithm}' if panel == 'policies' else
          f'batch/{algorithm}_{policy}_B{batch_size}')
  return c['query_budget'], tabular.TabularConfig(
      algorithm=algorithm, game=c['game'], num_contexts=c['num_contexts'],
      num_actions=c['num_actions'], feature_dim=c['feature_dim'],
      ref_policy=c['ref_policy'], beta=c['beta'], mode='sampled',
      policy=policy, batch_size=batch_size, outcome=c['outcome'],
      num_seeds=c['num_seeds'], seed=c['seed'], seed_block=c['num_seeds'],
      num_steps=steps, eval_every=every, checkpoint_every=0,
      output_dir=os.path.join(directory, 'runs', name))


def runs(config: dict, directory: str):
  """``[(panel, query_budget, config)]`` of every run, in order: each
  algorithm x policy of the ``policies`` panel, then each batch size of the
  ``batch`` panel (none when ``config['batch']`` is empty)."""
  out = [('policies', *_config(config, directory, 'policies', a, p,
                               config['batch_size']))
         for p in config['policies'] for a in config['algorithms']]
  batch = config['batch']
  if batch:
    out += [('batch', *_config(config, directory, 'batch',
                               batch['algorithm'], batch['policy'], b))
            for b in batch['batch_sizes']]
  return out


def validate(config: dict, directory: str) -> None:
  """Refuses a config that cannot run (raises ConfigError) before any
  work."""
  for _, _, c in runs(config, directory):
    experiment.validate(tabular.TASK, c)


def game_key(c: tabular.TabularConfig) -> tuple:
  """What the games of a run and their ``pi*_beta`` depend on."""
  return (c.game, c.num_contexts, c.num_actions, c.feature_dim, c.ref_policy,
          c.dtype, c.beta, c.seed, c.num_seeds)


def floor(kl) -> np.ndarray:
  """Per seed, the mean KL over the last :data:`FLOOR_FRACTION` of the
  evaluations of a ``[T, S]`` array (at least one)."""
  kl = np.asarray(kl, np.float64)
  last = max(1, int(round(FLOOR_FRACTION * (kl.shape[0] - 1))))
  return np.mean(kl[-last:], axis=0)


def compute(config: dict, directory: str, log) -> list[str]:
  """Runs every algorithm x policy and batch size; writes ``sampled.csv``
  (one row per run, seed and evaluation) and ``sampled_summary.csv`` (one
  row per run: final KL quantiles, fraction converged, floor)."""
  rows, summary, games = [], [], {}
  threshold = config['kl_threshold']
  for panel, budget, c in runs(config, directory):
    c, inputs = experiment.validate(tabular.TASK, c)
    # Runs on the same games share them and their exact solution.
    key = game_key(c)
    if key not in games:
      games[key] = tabular.prepare(c, inputs.file_game)
    results = experiment.run_task(
        tabular.TASK, [c], tabular.TabularInputs(inputs.file_game,
                                                 games[key]),
        log=lambda line: None, query_budget=budget)[0]
    experiment.write_results(results)
    kl = np.stack([r['kl_to_equilibrium'] for r in results.rows])  # [T, S]
    queries = np.stack([r['preference_queries'] for r in results.rows])
    keys = {'panel': panel, 'algorithm': c.algorithm, 'policy': c.policy,
            'batch_size': c.batch_size}
    for t, r in enumerate(results.rows):
      for i in range(c.num_seeds):
        rows.append({**keys, 'seed': c.seed + i, 'step': int(r['step'][i]),
                     'preference_queries': int(queries[t, i]),
                     'kl_to_equilibrium': float(kl[t, i])})
    final = kl[-1]
    s = {**keys, 'optimizer': c.optimizer, 'learning_rate': c.learning_rate,
         'num_seeds': c.num_seeds,
         'preference_queries': int(np.min(queries[-1])),
         'kl_initial_median': float(np.median(kl[0])),
         'kl_final_median': float(np.median(final)),
         'kl_final_q25': float(np.quantile(final, 0.25)),
         'kl_final_q75': float(np.quantile(final, 0.75)),
         'kl_final_max': float(np.max(final)),
         'fraction_converged': float(np.mean(final < threshold)),
         'kl_floor_median': float(np.median(floor(kl))),
         'wall_time_s': results.wall_time}
    summary.append(s)
    log(f'  sampled: {panel:<8} {c.policy:<9} {c.algorithm:<14} B '
        f'{c.batch_size:<4} {results.wall_time:5.1f}s  final KL median '
        f'{s["kl_final_median"]:.1e}  floor {s["kl_floor_median"]:.1e}  '
        f'converged {s["fraction_converged"]:.2f}')
  io_lib.write_records(os.path.join(directory, 'sampled.csv'), rows)
  io_lib.write_records(os.path.join(directory, 'sampled_summary.csv'), summary)
  return OUTPUTS


def curves(rows, **where):
  """``(queries [T], kl [T, S])`` of one run (rows matching ``where``)."""
  sub = [r for r in rows if all(r[k] == v for k, v in where.items())]
  seeds = sorted({r['seed'] for r in sub})
  by_seed = [[r for r in sub if r['seed'] == s] for s in seeds]
  length = min(len(b) for b in by_seed)
  kl = np.asarray([[b[t]['kl_to_equilibrium'] for b in by_seed]
                   for t in range(length)])
  queries = np.asarray([np.mean([b[t]['preference_queries'] for b in by_seed])
                        for t in range(length)])
  return queries, kl


def _band(ax, queries, kl, label, **style):
  lo, mid, hi = np.quantile(np.maximum(kl, common.FLOOR), (0.25, 0.5, 0.75),
                            axis=1)
  ax.plot(queries, mid, lw=1.5, label=label, **style)
  ax.fill_between(queries, lo, hi, color=style['color'], alpha=0.15, lw=0)


def _setup(ax, title, threshold):
  ax.axhline(threshold, color='0.4', lw=0.8, ls=(0, (6, 3)))
  ax.set_yscale('log')
  ax.set_xlabel('preference queries N (Bernoulli comparisons)')
  ax.set_ylabel(r'KL$(\pi^*_\beta\,\|\,\pi)$ of the last iterate')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  common.thousands(ax)
  ax.legend(loc='upper right', fontsize=7)


def plot(directory: str) -> None:
  """One panel per policy class (every algorithm) and, when computed, one
  of the batch sizes; median and quartile band over seeds, log y, the
  convergence threshold dashed grey."""
  rows = common.read_csv(os.path.join(directory, 'sampled.csv'))
  summary = common.read_csv(os.path.join(directory, 'sampled_summary.csv'))
  config = _result_config(directory)
  threshold = config.get('kl_threshold', float('nan'))
  plt = common.pyplot()
  policy_rows = [s for s in summary if s['panel'] == 'policies']
  batch_rows = [s for s in summary if s['panel'] == 'batch']
  policies = list(dict.fromkeys(s['policy'] for s in policy_rows))
  panels = len(policies) + (1 if batch_rows else 0)
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.9),
                           squeeze=False, constrained_layout=True)
  for ax, policy in zip(axes[0], policies):
    mine = [s for s in policy_rows if s['policy'] == policy]
    steps = {(s['optimizer'], s['learning_rate']) for s in mine}
    for s in mine:
      queries, kl = curves(rows, panel='policies', policy=policy,
                           algorithm=s['algorithm'])
      lr = ('' if len(steps) == 1 else
            f' ({s["optimizer"]} {s["learning_rate"]:g})')
      _band(ax, queries, kl, f'{s["algorithm"]}{lr}: {_converged(s)}',
            **analysis.style(s['algorithm']))
    step = (f', {mine[0]["optimizer"]} lr {mine[0]["learning_rate"]:g}'
            if len(steps) == 1 else '')
    _setup(ax, f'{POLICY_TITLE.get(policy, policy)} policy, batch '
           f'{int(mine[0]["batch_size"])}{step}', threshold)
  if batch_rows:
    ax = axes[0][-1]
    colours = plt.get_cmap('viridis')(np.linspace(0, 0.85, len(batch_rows)))
    for colour, s in zip(colours, batch_rows):
      queries, kl = curves(rows, panel='batch',
                           batch_size=s['batch_size'])
      _band(ax, queries, kl, f'B = {int(s["batch_size"])}: floor '
            f'{s["kl_floor_median"]:.1e}, {_converged(s)}', color=colour,
            linestyle='-')
    b = config.get('batch', {})
    first = batch_rows[0]
    _setup(ax, f'{first["algorithm"]} {first["policy"]}, {b.get("game")} '
           f'n = {b.get("num_actions")}, {first["optimizer"]} lr '
           f'{first["learning_rate"]:.3g}', threshold)
  fig.suptitle(
      f'Sampled preferences ({config.get("outcome")} outcomes), beta = '
      f'{config.get("beta")}; left: {config.get("game")} games (X = '
      f'{config.get("num_contexts")}, n = {config.get("num_actions")}, d = '
      f'{config.get("feature_dim")}), default hyperparameters\nmedian and '
      f'quartiles over {config.get("num_seeds")} seeds (one game each); '
      f'legend: seeds with final KL < {threshold:g} (dashed)')
  common.save(fig, directory, 'sampled')


def _converged(s) -> str:
  n = int(s['num_seeds'])
  return f'{round(s["fraction_converged"] * n)}/{n} conv.'


def _result_config(directory: str) -> dict:
  path = os.path.join(directory, 'result.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)['config']
