"""Result files (fourth stage of :mod:`nash_jax.experiment`): the
documented layout of a run directory, written atomically by one helper
(:func:`atomic_write`) and CSV files by one writer (:func:`write_csv`).

``config.json``, ``metrics.csv`` (long format: seed, step,
preference_queries, metric columns), ``final_policy.npy``,
``equilibrium.npy``, ``manifest.json`` and ``summary.json`` (last: a
directory without it is not a finished result); ``sweep.csv`` for sweeps.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import errno
import fcntl
import json
import os
import resource
import subprocess
import sys
from typing import Any, Callable, Iterable

import jax
import numpy as np

from nash_jax import metrics as metrics_lib
from nash_jax.algorithms import ConfigError
from nash_jax.environments import tokens as tokens_lib
from nash_jax.experiment.config import ExperimentConfig
from nash_jax.experiment.sweep import cell_name


@dataclasses.dataclass
class Results:
  config: ExperimentConfig
  rows: list          # evaluation rows, dicts of [S] arrays
  final_policy: np.ndarray   # [S, X, n]
  equilibrium: np.ndarray    # [S, X, n]
  wall_time: float
  cost: dict | None = None   # what the run cost (see run.run_cost)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
  """``write(tmp)`` to a temporary name beside ``path``, then rename: a
  reader never sees a half-written file."""
  tmp = path + '.tmp'
  write(tmp)
  os.replace(tmp, path)


def write_csv(path: str, header: list, rows: Iterable[list]) -> None:
  """One CSV file (header, then rows), written atomically."""
  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(header)
      writer.writerows(rows)
  atomic_write(path, write)


def write_json(path: str, obj) -> None:
  """Standard JSON (NaN and infinities as ``null``), written atomically."""
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(json_safe(obj), f, indent=2, sort_keys=True, allow_nan=False)
      f.write('\n')
  atomic_write(path, write)


def write_npy(path: str, array) -> None:
  """A ``.npy`` file, written atomically."""
  def write(tmp):
    with open(tmp, 'wb') as f:
      np.save(f, array)
  atomic_write(path, write)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> bool:
  """Whether ``error`` (or an exception it was raised from) is a full disk
  or exhausted quota: an ``OSError`` ENOSPC or EDQUOT, or tensorstore's
  ``RESOURCE_EXHAUSTED`` report of one (which orbax raises as a
  ``ValueError`` naming "No space left on device")."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
      return True
    text = str(error)
    if 'No space left on device' in text or 'Disk quota exceeded' in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_line(output_dir: str | None) -> str:
  """The one line a run ends with when the disk fills up."""
  where = f'writing {output_dir}' if output_dir else 'writing results'
  return (f'error: no space left on device while {where}; free some space '
          'and rerun the same command to resume from the last checkpoint')


LOCK_NAME = '.lock'


class OutputLock:
  """An exclusive lock on an output directory (``OUTPUT_DIR/.lock``, an
  ``flock`` held by this process, the file holding its process id), so
  that two runs never write one directory at once. The kernel drops the
  lock when the process dies, however it dies; :meth:`release` also
  removes the file."""

  def __init__(self, output_dir: str):
    self.path = os.path.join(output_dir, LOCK_NAME)
    self.fd = None

  def acquire(self) -> 'OutputLock':
    """Takes the lock or refuses.

    Raises:
      ConfigError: naming ``--output_dir`` and the process holding it.
    """
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        holder = lock_holder(self.path)
        raise ConfigError('output_dir', f'{os.path.dirname(self.path)} is in '
                          f'use by another run (process {holder}); wait for '
                          'it to end or choose another --output_dir') from None
      # The holder may have removed the file between our open and flock.
      if (os.path.exists(self.path) and
          os.stat(self.path).st_ino == os.fstat(fd).st_ino):
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    self.fd = fd
    return self

  def release(self) -> None:
    if self.fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self.fd)
    self.fd = None


def lock_holder(path: str) -> str:
  """The process id written in a lock file (``'unknown'`` if unreadable)."""
  try:
    with open(path) as f:
      return f.read().strip() or 'unknown'
  except OSError:
    return 'unknown'


_HELD = {}


def lock_output_dir(output_dir: str,
                    only_existing: bool = False) -> OutputLock | None:
  """Locks ``output_dir`` for the rest of this process (process 0 only;
  released at exit; a second call for the same directory is a no-op).

  The binaries call it twice: with ``only_existing`` first, before
  validation (which deletes checkpoints with ``--overwrite``), without
  creating the directory; then after validation, before any work.

  Raises:
    ConfigError: another run holds it (see :class:`OutputLock`).
  """
  key = os.path.abspath(output_dir)
  if jax.process_index() != 0 or key in _HELD:
    return _HELD.get(key)
  if only_existing and not os.path.isdir(output_dir):
    return None
  lock = OutputLock(output_dir).acquire()
  _HELD[key] = lock
  atexit.register(lock.release)
  return lock


def metric_columns(rows) -> list[str]:
  """Column order of ``metrics.csv`` after ``seed``: the scalar entries of a
  row (per-seed arrays such as generated samples are not columns)."""
  first = [c for c in ['step', 'preference_queries'] + list(
      dict.fromkeys(metrics_lib.METRICS + metrics_lib.SAMPLED_METRICS))
           if c in rows[0]]
  return first + sorted(k for k in rows[0] if k not in first and
                        np.ndim(rows[0][k]) == 1)


def _csv_records(rows, config: ExperimentConfig, columns):
  """``metrics.csv`` records of evaluation rows, one per seed and row."""
  for row in rows:
    for i in range(config.num_seeds):
      values = [np.asarray(row[c][i]).item() for c in columns]
      yield [config.seed + i] + [repr(v) if isinstance(v, float) else v
                                 for v in values]


class MetricsStream:
  """Grows ``metrics.csv`` by one evaluation at a time during a run.

  On a resume the file is rewritten from the checkpoint's rows, so rows of
  the killed run after its last checkpoint are dropped, not duplicated. An
  older ``summary.json`` is removed first: a directory without it is not a
  finished result.
  """

  def __init__(self, config: ExperimentConfig):
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
      self.writer.writerow(['seed'] + self.columns)
    self.writer.writerows(_csv_records([row], self.config, self.columns))
    self.file.flush()

  def close(self):
    if self.file is not None:
      self.file.close()
      self.file = None


class TensorBoard:
  """One TensorBoard run per seed, ``output_dir/tensorboard/seed_<s>``, so
  that seeds are separate curves; every metric column is a scalar against
  the step."""

  def __init__(self, config: ExperimentConfig):
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


def json_safe(obj):
  """NaN and infinities become ``null`` so that the JSON is standard."""
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


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
  write_json(join('config.json'), dataclasses.asdict(results.config))
  columns = metric_columns(results.rows)
  write_csv(join('metrics.csv'), ['seed'] + columns,
            _csv_records(results.rows, results.config, columns))
  if results.final_policy is not None:  # None where nothing is listed.
    write_npy(join('final_policy.npy'), results.final_policy)
  if results.equilibrium is not None:
    write_npy(join('equilibrium.npy'), results.equilibrium)
  if extra is not None:
    extra(join)
  write_json(join('manifest.json'), manifest(results))
  write_json(join('summary.json'), summary(results))


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
  write_csv(path, header, [[r[k] for k in header] for r in records])
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


# --------------------------------------------------------------------------
# Language-model runs.


@dataclasses.dataclass
class LMResults(Results):
  """A language-model run: :class:`Results` (``final_policy [S, X, N]`` over
  the listed responses) plus the induced exact game, the listed responses
  ``[N, L]`` and the prompts ``[X, P]`` (with their mask)."""

  game: Any = None
  reference_report: dict | None = None
  oracle_report: dict | None = None
  responses: np.ndarray | None = None
  prompts: np.ndarray | None = None
  prompt_mask: np.ndarray | None = None


def decode(tokens, mask=None) -> str:
  """Readable text of token ids: content token ``3 + i`` is the letter
  ``'a' + i``, BOS ``<s>``, EOS ``</s>`` (and nothing after it), padding
  (or masked tokens) skipped."""
  words = []
  for i, t in enumerate(np.asarray(tokens).tolist()):
    if mask is not None and not mask[i]:
      continue
    if t == tokens_lib.PAD:
      continue
    if t == tokens_lib.BOS:
      words.append('<s>')
    elif t == tokens_lib.EOS:
      words.append('</s>')
      break
    else:
      words.append(chr(ord('a') + t - tokens_lib.FIRST_CONTENT))
  return ' '.join(words)


def sample_records(results: LMResults):
  """One ``samples.jsonl`` record per evaluation, seed and sample: the
  step, seed, prompt (index and text), response text, its length in
  content tokens, whether it ended with EOS and its log-probability."""
  config = results.config
  for row in results.rows:
    if 'samples' not in row:
      continue
    step = int(row['step'][0])
    for i in range(config.num_seeds):
      for j, (y, lp) in enumerate(zip(row['samples'][i],
                                      row['sample_log_prob'][i])):
        x = j // config.num_samples
        tokens = np.asarray(y).tolist()
        length = next((k for k, t in enumerate(tokens)
                       if t < tokens_lib.FIRST_CONTENT), len(tokens))
        yield {'step': step, 'seed': config.seed + i, 'prompt_index': x,
               'prompt': decode(results.prompts[x], results.prompt_mask[x]),
               'response': decode(y), 'length': length,
               'eos': length < len(tokens) and tokens[length] ==
               tokens_lib.EOS, 'log_prob': float(lp)}


def write_lm_results(results: LMResults, output_dir: str | None = None):
  """Writes a language-model run: the files of :func:`write_results`
  (``final_policy.npy`` and ``equilibrium.npy`` are ``[S, X, N]`` over the
  listed responses) and samples.jsonl, responses.npy ``[N, L]``, game.npz
  (the induced game in the game-file format: ``preferences``,
  ``ref_policy``, ``context_weights``), after SFT of the reference
  reference.json (:func:`nash_jax.experiment.inputs.reference_model`) and,
  with a learned oracle or a judge, oracle.json
  (:func:`nash_jax.experiment.inputs.training_oracle`)."""

  def write_jsonl(tmp):
    with open(tmp, 'w') as f:
      for record in sample_records(results):
        f.write(json.dumps(record) + '\n')

  def write_game(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, preferences=np.asarray(results.game.preferences,
                                         np.float64),
               ref_policy=np.asarray(results.game.ref_policy, np.float64),
               context_weights=np.asarray(results.game.context_weights,
                                          np.float64))

  def extra(join):
    atomic_write(join('samples.jsonl'), write_jsonl)
    write_npy(join('responses.npy'), results.responses)
    atomic_write(join('game.npz'), write_game)
    if results.reference_report is not None:
      write_json(join('reference.json'), results.reference_report)
    if results.oracle_report is not None:
      write_json(join('oracle.json'), results.oracle_report)

  write_results(results, output_dir, extra)
