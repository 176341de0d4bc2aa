"""What the figure modules share: result files, statistics over seeds and
matplotlib setup.

Statistics. Metrics that fall geometrically (KL, gaps) are summarized on a
log scale: the line is the geometric mean over seeds, ``10^mean(log10 v)``,
and the band the 95% confidence interval of that mean,
``10^(mean ± t_{0.975, S-1} sd / sqrt(S))`` (Student t over the ``S``
seeds). Values are floored at :data:`FLOOR` first, the float64 resolution of
the KL as computed (a sum of ``pi* log(pi*/pi)`` terms of order 1).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import scipy.stats

from nash_jax import io as io_lib

FLOOR = 1e-16
DPI = 110


def _value(text: str):
  try:
    return float(text)
  except ValueError:
    return text


def read_csv(path: str) -> list[dict]:
  """Reads CSV rows (:func:`nash_jax.io.write_records`) back; numbers
  become floats."""
  with open(path, newline='') as f:
    return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def sampled_schedule(query_budget: int, batch_size: int,
                     evaluations: int) -> tuple[int, int]:
  """``(num_steps, eval_every)`` of a sampled run that spends at least
  ``query_budget`` queries, ``batch_size`` a step, evaluated about
  ``evaluations`` times: ``eval_every = ceil(ceil(Q / B) / evaluations)``
  and ``num_steps`` the least multiple of it with ``num_steps B >= Q``.

  ``eval_every`` divides ``num_steps`` so that every chunk of the run has the
  same length: a shorter last chunk would be a second compiled program.
  """
  steps = math.ceil(query_budget / batch_size)
  every = math.ceil(steps / max(1, evaluations))
  return every * math.ceil(steps / every), every


def thousands(ax) -> None:
  """Labels the x axis of ``ax`` in thousands (``50k``)."""
  import matplotlib.ticker
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
      lambda x, _: f'{x / 1000:g}k' if x else '0'))


def column(rows: list[dict], name: str, **where) -> np.ndarray:
  """The values of ``name`` in the rows matching every ``key=value``."""
  return np.asarray([r[name] for r in rows
                     if all(r[k] == v for k, v in where.items())])


def mean_ci(values, axis=0, level=0.95):
  """Mean and the half-width of its Student-t confidence interval, over
  ``axis`` (half-width 0 for a single value)."""
  values = np.asarray(values, np.float64)
  s = values.shape[axis]
  mean = np.mean(values, axis=axis)
  if s < 2:
    return mean, np.zeros_like(mean)
  t = scipy.stats.t.ppf(0.5 + level / 2, s - 1)
  return mean, t * np.std(values, axis=axis, ddof=1) / np.sqrt(s)


def log_band(values, axis=0, level=0.95):
  """Geometric mean over ``axis`` and its confidence band (module docstring):
  ``(low, centre, high)``, values floored at :data:`FLOOR`."""
  logs = np.log10(np.maximum(np.asarray(values, np.float64), FLOOR))
  mean, half = mean_ci(logs, axis, level)
  return 10 ** (mean - half), 10 ** mean, 10 ** (mean + half)


def pyplot():
  """matplotlib's pyplot on the non-interactive Agg backend, print-sized
  fonts."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  plt.rcParams.update({'font.size': 9, 'axes.titlesize': 9,
                       'axes.labelsize': 9, 'legend.fontsize': 8,
                       'xtick.labelsize': 8, 'ytick.labelsize': 8})
  return plt


def save(fig, directory: str, name: str) -> list[str]:
  """Writes ``name.png`` (``DPI``) and ``name.pdf`` into ``directory``,
  each atomically; returns the paths."""
  plt = pyplot()
  paths = []
  for ext in ('png', 'pdf'):
    path = os.path.join(directory, f'{name}.{ext}')
    io_lib.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI,
                                                      format=ext))
    paths.append(path)
  plt.close(fig)
  return paths
