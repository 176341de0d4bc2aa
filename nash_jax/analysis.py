"""Tables and figures from results (the last stage of the data flow).

Everything here reads what the trainer produced (evaluation rows or the
``metrics.csv`` files) and never runs an algorithm.
"""

from __future__ import annotations

import csv

import numpy as np

# One colour and line style per algorithm, used by every figure. Colours are
# the Okabe-Ito palette (distinguishable with colour-blindness); the styles
# tell apart the two algorithms that share a colour, also in grey print.
ALGORITHM_STYLE = {
    'nash_mp': ('#D55E00', '-'),
    'proximal_point': ('#CC79A7', '-'),
    'extragradient': ('#0072B2', '--'),
    'omwu': ('#56B4E9', '--'),
    'omd': ('#009E73', '-.'),
    'mmd': ('#009E73', ':'),
    'nash_md': ('#E69F00', '-.'),
    'sppo': ('#999999', ':'),
    'self_play_pg': ('#000000', '-'),
    'online_ipo': ('#000000', ':'),
    # Sampled-mode algorithms: the colour of the exact method each one
    # approximates, told apart from it by the line style.
    'nash_prox': ('#CC79A7', '--'),
    'approx_nash_mp': ('#D55E00', '--'),
    'nash_md_pg': ('#E69F00', '-'),
}


def style(algorithm: str) -> dict:
  colour, line = ALGORITHM_STYLE.get(algorithm, ('#777777', '-'))
  return {'color': colour, 'linestyle': line}


def read_metrics(path: str) -> dict[str, np.ndarray]:
  """Reads a long-format ``metrics.csv`` into ``{column: [rows]}`` arrays."""
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    columns = {name: [] for name in reader.fieldnames}
    for row in reader:
      for name, value in row.items():
        columns[name].append(float(value))
  return {name: np.asarray(values) for name, values in columns.items()}


def queries_to_reach(rows: list[dict], metric: str, threshold: float):
  """Per seed, the preference queries at the first evaluation where
  ``metric < threshold`` (NaN if never), ``[S]``."""
  values = np.stack([r[metric] for r in rows])           # [T, S]
  queries = np.stack([r['preference_queries'] for r in rows]).astype(float)
  reached = values < threshold
  first = np.argmax(reached, axis=0)
  out = queries[first, np.arange(values.shape[1])]
  return np.where(reached.any(axis=0), out, np.nan)


def comparison_rows(results_by_algorithm: dict, thresholds=(1e-3, 1e-6)):
  """One summary row per algorithm: final means and queries to thresholds."""
  table = []
  for name, results in results_by_algorithm.items():
    last = results.rows[-1]
    row = {'algorithm': name, 'num_seeds': results.config.num_seeds,
           'preference_queries': float(np.mean(last['preference_queries'])),
           'kl_to_equilibrium': float(np.mean(last['kl_to_equilibrium'])),
           'duality_gap': float(np.mean(last['duality_gap'])),
           'exploitability': float(np.mean(last['exploitability'])),
           'wall_time_s': results.wall_time}
    for t in thresholds:
      q = queries_to_reach(results.rows, 'kl_to_equilibrium', t)
      row[f'queries_to_kl_{t:g}'] = (float(np.mean(q)) if np.all(np.isfinite(q))
                                     else float('nan'))
      row[f'reached_kl_{t:g}'] = float(np.mean(np.isfinite(q)))
    table.append(row)
  return table


def format_table(rows: list[dict]) -> str:
  """A fixed-width text version of :func:`comparison_rows`."""
  columns = [c for c in rows[0] if c != 'algorithm']
  lines = [f'{"algorithm":<15}' + ''.join(f'{c:>22}' for c in columns)]
  for row in rows:
    cells = []
    for c in columns:
      v = row[c]
      if c.startswith(('queries', 'preference_queries', 'num_seeds')):
        cells.append(f'{v:>22.0f}' if np.isfinite(v) else f'{"never":>22}')
      elif c.startswith('reached') or c == 'wall_time_s':
        cells.append(f'{v:>22.2f}')
      else:
        cells.append(f'{v:>22.3e}')
    lines.append(f'{row["algorithm"]:<15}' + ''.join(cells))
  return '\n'.join(lines)


def plot_comparison(results_by_algorithm: dict, path: str, title: str = ''):
  """KL to the equilibrium and duality gap against preference queries.

  Lines are the median over seeds, bands the range between the 10% and 90%
  quantiles over seeds; y on a log scale (values floored at 1e-16).
  """
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
  for ax, metric, label in (
      (axes[0], 'kl_to_equilibrium', r'KL$(\pi^*_\beta \,\|\, \pi)$'),
      (axes[1], 'duality_gap', r'duality gap Gap$_\beta(\pi)$')):
    for name, results in results_by_algorithm.items():
      rows = results.rows
      x = np.median(np.stack([r['preference_queries'] for r in rows]), axis=1)
      y = np.maximum(np.stack([r[metric] for r in rows]), 1e-16)
      lo, mid, hi = np.quantile(y, [0.1, 0.5, 0.9], axis=1)
      st = style(name)
      ax.plot(x, mid, label=name, lw=1.8, **st)
      ax.fill_between(x, lo, hi, color=st['color'], alpha=0.15, lw=0)
    ax.set_yscale('log')
    ax.set_xlabel('preference queries (exact win-rate evaluations)')
    ax.set_ylabel(label)
    ax.grid(True, which='major', alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncol=5, fontsize=9)
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=120)
  plt.close(fig)
