"""Result files of every kind of run: the documented layout of a run
directory, each file written atomically by :mod:`nash_jax.io`.

``config.json``, ``metrics.csv`` (long format: seed, step,
preference_queries, metric columns), ``final_policy.npy``,
``equilibrium.npy`` (where responses are listed), the task's own files,
``manifest.json`` and ``summary.json`` (last: a directory without it is not
a finished result); ``sweep.csv`` for sweeps; ``samples.jsonl`` through
:func:`write_samples`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import resource
import subprocess
import sys
from typing import Any, Callable

import jax
import numpy as np

from nash_jax import io as io_lib
from nash_jax import metrics as metrics_lib
from nash_jax.experiment.sweep import cell_name


@dataclasses.dataclass
class Results:
  """What a run of any task returns: its config, the evaluation rows, the
  final policies and references where responses are listed (else None),
  the wall time and what it cost (:func:`nash_jax.experiment.run.
  run_cost`)."""

  config: Any
  rows: list          # evaluation rows, dicts of [S] arrays
  final_policy: np.ndarray   # [S, X, n]
  equilibrium: np.ndarray    # [S, X, n]
  wall_time: float
  cost: dict | None = None   # what the run cost (see run.run_cost)


def metric_columns(rows) -> list[str]:
  """Column order of ``metrics.csv`` after ``seed``: the scalar entries of a
  row (per-seed arrays such as generated samples are not columns)."""
  first = [c for c in ['step', 'preference_queries'] + list(
      dict.fromkeys(metrics_lib.METRICS + metrics_lib.SAMPLED_METRICS))
           if c in rows[0]]
  return first + sorted(k for k in rows[0] if k not in first and
                        np.ndim(rows[0][k]) == 1)


def _csv_header(columns) -> list[str]:
  """The header line of ``metrics.csv``: ``seed``, then ``columns``."""
  return ['seed'] + list(columns)


def _csv_records(rows, config, columns):
  """``metrics.csv`` records of evaluation rows, one per seed and row (the
  values as Python scalars; the writers format them,
  :func:`nash_jax.io.csv_row`)."""
  for row in rows:
    for i in range(config.num_seeds):
      yield [config.seed + i] + [np.asarray(row[c][i]).item()
                                 for c in columns]


class MetricsStream:
  """Grows ``metrics.csv`` by one evaluation at a time during a run.

  On a resume the file is rewritten from the checkpoint's rows, so rows of
  the killed run after its last checkpoint are dropped, not duplicated. An
  older ``summary.json`` is removed first: a directory without it is not a
  finished result.
  """

  def __init__(self, config):
    self.config = config
    self.path = os.path.join(config.output_dir, 'metrics.csv')
    self.file = None
    self.columns = None

  def start(self, rows):
    os.makedirs(self.config.output_dir, exist_ok=True)
    stale = os.path.join(self.config.output_dir, 'summary.json')
    if os.path.exists(stale):
      os.remove(stale)
    self.file = open(self.path, 'w', newline='')
    self.writer = csv.writer(self.file)
    for row in rows:
      self.append(row)

  def append(self, row):
    if self.file is None:
      return
    if self.columns is None:
      self.columns = metric_columns([row])
      self.writer.writerow(_csv_header(self.columns))
    self.writer.writerows(io_lib.csv_row(record) for record in
                          _csv_records([row], self.config, self.columns))
    self.file.flush()

  def close(self):
    if self.file is not None:
      self.file.close()
      self.file = None


class TensorBoard:
  """One TensorBoard run per seed, ``output_dir/tensorboard/seed_<s>``, so
  that seeds are separate curves; every metric column is a scalar against
  the step."""

  def __init__(self, config):
    from tensorboardX import SummaryWriter
    root = os.path.join(config.output_dir, 'tensorboard')
    self.seeds = range(config.seed, config.seed + config.num_seeds)
    self.writers = [SummaryWriter(os.path.join(root, f'seed_{s}'))
                    for s in self.seeds]

  def add(self, row):
    step = int(row['step'][0])
    for name in metric_columns([row])[1:]:
      for i, writer in enumerate(self.writers):
        writer.add_scalar(name, float(row[name][i]), step)

  def close(self):
    for writer in self.writers:
      writer.close()


DIVERGENCE_METRIC = 'kl_to_equilibrium'
# Where nothing exact is known (a text environment): the sampled KL to pi_ref.
SAMPLED_DIVERGENCE_METRIC = 'kl_to_ref'


def divergence_metric(row) -> str:
  """The metric whose non-finite values mark a diverged run:
  ``kl_to_equilibrium`` where the row has it, else ``kl_to_ref``."""
  return (DIVERGENCE_METRIC if DIVERGENCE_METRIC in row
          else SAMPLED_DIVERGENCE_METRIC)


def divergence(kl) -> list[str | None]:
  """Per run: ``'inf'`` or ``'nan'`` where ``kl`` (a row's
  :func:`divergence_metric`) has diverged to that value, else None."""
  kl = np.asarray(kl, np.float64)
  return ['nan' if np.isnan(v) else 'inf' if np.isinf(v) else None
          for v in kl.reshape(-1)]


def diverged(row) -> bool:
  """Whether some run of an evaluation row has diverged."""
  return not np.all(np.isfinite(np.asarray(row[divergence_metric(row)],
                                           np.float64)))


def divergence_note(row) -> str:
  """The progress line's mark of an evaluation row where runs diverged,
  e.g. ``'  DIVERGED: kl_to_equilibrium inf in 1, nan in 2 of 8 runs'``
  (``''`` when none has)."""
  name = divergence_metric(row)
  kinds = divergence(row[name])
  counts = [f'{kind} in {kinds.count(kind)}' for kind in ('inf', 'nan')
            if kind in kinds]
  if not counts:
    return ''
  return (f'  DIVERGED: {name} {", ".join(counts)} of '
          f'{len(kinds)} runs')


def summary(results: Results) -> dict:
  """Final metrics per seed and their mean over seeds, and which seeds
  diverged (``kl_to_equilibrium`` inf or NaN, which JSON writes as
  ``null`` alike): ``"diverged"`` per seed (``"inf"``, ``"nan"`` or
  ``null``) and ``{"inf": [seeds], "nan": [seeds]}``."""
  last = results.rows[-1]
  columns = metric_columns(results.rows)
  seeds = range(results.config.seed,
                results.config.seed + results.config.num_seeds)
  kinds = divergence(last[divergence_metric(last)])
  per_seed = [{'seed': s, **{c: float(last[c][i]) for c in columns},
               'diverged': kinds[i]} for i, s in enumerate(seeds)]
  mean = {c: float(np.mean(last[c])) for c in columns}
  out = {'algorithm': results.config.algorithm, 'final': per_seed,
         'mean': mean, 'wall_time_s': results.wall_time,
         'diverged': {kind: [s for s, k in zip(seeds, kinds) if k == kind]
                      for kind in ('inf', 'nan')}}
  if results.cost is not None:
    out['cost'] = results.cost
  return out


def write_results(results: Results, output_dir: str | None = None,
                  extra: Callable[[Callable[[str], str]], None] | None = None
                  ) -> None:
  """Writes config.json, metrics.csv, final_policy.npy, equilibrium.npy,
  then ``extra(join)`` (more files of a kind of run), manifest.json and
  summary.json (last) into ``output_dir``; only process 0 writes."""
  if jax.process_index() != 0:
    return
  output_dir = output_dir or results.config.output_dir
  os.makedirs(output_dir, exist_ok=True)
  join = lambda name: os.path.join(output_dir, name)
  # An older summary.json would mark half-rewritten files as a result.
  if os.path.exists(join('summary.json')):
    os.remove(join('summary.json'))
  io_lib.write_json(join('config.json'), dataclasses.asdict(results.config))
  columns = metric_columns(results.rows)
  io_lib.write_csv(join('metrics.csv'), _csv_header(columns),
                   _csv_records(results.rows, results.config, columns))
  if results.final_policy is not None:  # None where nothing is listed.
    io_lib.write_npy(join('final_policy.npy'), results.final_policy)
  if results.equilibrium is not None:
    io_lib.write_npy(join('equilibrium.npy'), results.equilibrium)
  if extra is not None:
    extra(join)
  io_lib.write_json(join('manifest.json'), manifest(results))
  io_lib.write_json(join('summary.json'), summary(results))


def write_sweep_table(cells, results: list[Results], output_dir: str) -> str:
  """Writes ``output_dir/sweep.csv``: one row per cell with its swept
  values, the mean over seeds of each final metric and the median final
  ``kl_to_equilibrium``; returns the path."""
  path = os.path.join(output_dir, 'sweep.csv')
  if jax.process_index() != 0:
    return path
  records = []
  for (values, _), res in zip(cells, results):
    s = summary(res)
    kl = [r['kl_to_equilibrium'] for r in s['final']]
    records.append({'cell': cell_name(values), **values,
                    'num_seeds': res.config.num_seeds, **s['mean'],
                    'median_kl_to_equilibrium': float(np.median(kl))})
  os.makedirs(output_dir, exist_ok=True)
  header = list(records[0])
  io_lib.write_csv(path, header, [[r[k] for k in header] for r in records])
  return path


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, timeout=10,
                         capture_output=True, text=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(results: Results) -> dict:
  """Where and with what a run ran: code version, library versions, devices,
  wall time and peak memory."""
  from importlib import metadata
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'orbax-checkpoint',
               'numpy', 'scipy'):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  device_peak = None
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') \
      else None
  if stats and 'peak_bytes_in_use' in stats:
    device_peak = int(stats['peak_bytes_in_use'])
  return {
      'git_commit': _git_commit(),
      'versions': versions,
      'python': sys.version.split()[0],
      'device_kind': devices[0].device_kind,
      'platform': devices[0].platform,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'wall_time_s': results.wall_time,
      'peak_host_rss_bytes': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss * 1024,
      'peak_device_bytes': device_peak,
  }


def format_table(results: Results) -> str:
  """The final table printed by the binary: one line per seed, then the mean."""
  s = summary(results)
  cols = ['preference_queries'] + [
      c for c in dict.fromkeys(metrics_lib.METRICS +
                               metrics_lib.SAMPLED_METRICS)
      if c in s['mean']]
  header = f'{"seed":>6} ' + ' '.join(f'{c:>20}' for c in cols)
  lines = [header]
  for row in s['final'] + [{'seed': 'mean', **s['mean']}]:
    cells = []
    for c in cols:
      v = row[c]
      cells.append(f'{v:>20.0f}' if c == 'preference_queries' else
                   f'{v:>20.4e}')
    lines.append(f'{row["seed"]!s:>6} ' + ' '.join(cells))
  return '\n'.join(lines)


def write_samples(path: str, records) -> None:
  """Writes ``samples.jsonl``, one record per evaluation, seed and sample
  (the task says what a record holds; every task has ``step``, ``seed``,
  ``prompt_index``, ``response``, ``length``, ``eos`` and ``log_prob``),
  atomically."""
  io_lib.write_jsonl(path, records)
