"""The stability study (ALGORITHMS.md section 5, claims 1 and 2).

Self-play policy gradient / online IPO converges in the last iterate but has
a stability limit: as ``beta`` shrinks or the step grows it slows, oscillates
or diverges. Nash Prox wraps the same update in a proximal-point loop. The
study runs each algorithm over a grid of ``beta`` x ``learning_rate`` for
many seeds (each cell and seed with its own game, all cells of an algorithm
in one compiled call via :func:`nash_jax.experiment.run_task`) and records,
per cell, the fraction of seeds whose last iterate is within
``kl_threshold`` of ``pi*_beta`` once the query budget is spent, and the
distribution of the final KL.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Callable

import numpy as np

from nash_jax import experiment
from nash_jax import io as io_lib
from nash_jax.analysis import style
from nash_jax.tasks import tabular

QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
STABILITY_COLUMNS = (
    'algorithm', 'beta', 'learning_rate', 'num_seeds', 'preference_queries',
    'fraction_converged', 'fraction_diverged', 'kl_min', 'kl_q10',
    'kl_median', 'kl_q90', 'kl_max')


@dataclasses.dataclass(frozen=True)
class Study:
  """The grid of a stability study."""

  algorithms: tuple[str, ...] = ('online_ipo', 'nash_prox')
  betas: tuple[float, ...] = (0.1, 0.03, 0.01)
  learning_rates: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
  query_budget: int = 200_000
  kl_threshold: float = 1e-2


def grid(study: Study) -> dict[str, list[float]]:
  return {'beta': list(study.betas),
          'learning_rate': list(study.learning_rates)}


def validate(base: tabular.TabularConfig, study: Study):
  """Validates every cell of every algorithm; ``{algorithm: (cells,
  inputs)}``. The base config's ``output_dir`` is the study's."""
  out = {}
  for name in study.algorithms:
    config = base.replace(algorithm=name, output_dir=os.path.join(
        base.output_dir, name))
    out[name] = experiment.validate_sweep(tabular.TASK, config,
                                          grid(study))
  return out


def cell_summary(name: str, values: dict, results: experiment.Results,
                 study: Study) -> dict:
  """One row of ``stability.csv``.

  A seed has converged when its final ``kl_to_equilibrium`` is below the
  threshold, and diverged when it is not finite or above the KL of
  ``pi_ref`` itself (the initial policy) on its game.
  """
  first, last = results.rows[0], results.rows[-1]
  kl = np.asarray(last['kl_to_equilibrium'], np.float64)
  finite = np.where(np.isfinite(kl), kl, np.inf)
  quantiles = np.quantile(finite, QUANTILES)
  return {
      'algorithm': name, 'beta': values['beta'],
      'learning_rate': values['learning_rate'],
      'num_seeds': len(kl),
      'preference_queries': int(np.min(last['preference_queries'])),
      'fraction_converged': float(np.mean(finite < study.kl_threshold)),
      'fraction_diverged': float(np.mean(
          finite > np.asarray(first['kl_to_equilibrium']))),
      **{f'kl_{q}': float(v) for q, v in zip(
          ('min', 'q10', 'median', 'q90', 'max'), quantiles)},
  }


def run(plan: dict, study: Study, output_dir: str, *, prepared=None,
        checkpoint_every: int = 0,
        log: Callable[[str], None] = lambda line: None) -> list[dict]:
  """Runs every algorithm's grid of a plan from :func:`validate`.

  The algorithms play the same games (drawn and solved once, or taken from
  ``prepared``, see :func:`nash_jax.tasks.tabular.prepare`); all cells and
  seeds of an algorithm are one :func:`nash_jax.experiment.run_task`.
  Writes each cell's results and the algorithm's ``sweep.csv`` under
  ``output_dir/<algorithm>/``; returns the ``stability.csv`` rows.

  ``log`` gets, per algorithm, a line before it starts, the progress lines
  of its run (one per evaluation, and where it resumes from a checkpoint)
  and one line per cell when it ends (:func:`format_row`).
  """
  rows = []
  for name, (cells, inputs) in plan.items():
    out = os.path.join(output_dir, name)
    log(f'{name}: {len(cells)} cells x {cells[0][1].num_seeds} seeds, '
        f'{study.query_budget} queries each, in one run')
    prepared = prepared or tabular.prepare(cells[0][1], inputs.file_game,
                                           log)
    results = experiment.run_task(
        tabular.TASK, [c for _, c in cells],
        tabular.TabularInputs(inputs.file_game, prepared), out, log=log,
        query_budget=study.query_budget, checkpoint_every=checkpoint_every)
    for res in results:
      experiment.write_results(res)
    experiment.write_sweep_table(cells, results, out)
    cell_rows = [cell_summary(name, values, res, study)
                 for (values, _), res in zip(cells, results)]
    for row in cell_rows:
      log(format_row(row))
    log(f'{name}: done in {results[0].wall_time:.1f}s')
    rows += cell_rows
  return rows


def format_row(row: dict) -> str:
  """One line of a ``stability.csv`` row, for logs."""
  return (f'{row["algorithm"]:<15} beta {row["beta"]:<6g} lr '
          f'{row["learning_rate"]:<7g} converged {row["fraction_converged"]:.2f}'
          f'  diverged {row["fraction_diverged"]:.2f}  median KL '
          f'{row["kl_median"]:.2e}')


def write_csv(rows: list[dict], path: str) -> None:
  """Writes ``stability.csv`` rows (the columns of
  :data:`STABILITY_COLUMNS`), atomically."""
  io_lib.write_records(path, rows, STABILITY_COLUMNS)


def read_csv(path: str) -> list[dict]:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for key in STABILITY_COLUMNS[1:]:
      row[key] = float(row[key])
  return rows


def plot(rows: list[dict], path: str, title: str = '',
         optimizer: str = 'sgd') -> None:
  """Heatmaps of ``fraction_converged`` over ``learning_rate`` x ``beta``,
  one panel per algorithm, each cell annotated with the converged and
  diverged fractions and the median final KL. Writes ``path`` (PNG) and
  the same name as PDF (each through a temporary name)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(r['algorithm'] for r in rows))
  betas = sorted({r['beta'] for r in rows}, reverse=True)
  rates = sorted({r['learning_rate'] for r in rows})
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names) + 1, 3.6),
                           squeeze=False, constrained_layout=True)
  image = None
  for ax, name in zip(axes[0], names):
    table = np.full((len(betas), len(rates)), np.nan)
    median = np.full_like(table, np.nan)
    diverged = np.full_like(table, np.nan)
    for r in rows:
      if r['algorithm'] == name:
        i, j = betas.index(r['beta']), rates.index(r['learning_rate'])
        table[i, j] = r['fraction_converged']
        median[i, j] = r['kl_median']
        diverged[i, j] = r['fraction_diverged']
    image = ax.imshow(table, vmin=0, vmax=1, cmap='viridis', aspect='auto')
    for i in range(len(betas)):
      for j in range(len(rates)):
        if np.isfinite(table[i, j]):
          ax.text(j, i, f'{table[i, j]:.2f}\ndiv {diverged[i, j]:.2f}\n'
                  f'KL {median[i, j]:.0e}', ha='center', va='center',
                  fontsize=6.5,
                  color='black' if table[i, j] > 0.6 else 'white')
    ax.set_xticks(range(len(rates)), [f'{v:g}' for v in rates])
    ax.set_yticks(range(len(betas)), [f'{v:g}' for v in betas])
    ax.set_xlabel(f'learning rate ({optimizer} step)')
    ax.set_ylabel('beta (KL regularization)')
    ax.set_title(name, color=style(name)['color'])
  fig.colorbar(image, ax=axes[0].tolist(),
               label='fraction of seeds converged (div: diverged)')
  if title:
    fig.suptitle(title, fontsize=9)
  for out, kwargs in ((path, {'dpi': 110}),
                      (os.path.splitext(path)[0] + '.pdf', {})):
    io_lib.atomic_write(out, lambda tmp: fig.savefig(
        tmp, format=os.path.splitext(out)[1][1:], **kwargs))
  plt.close(fig)
