"""Files, written one way everywhere: atomic writes, CSV and JSON in one
format each, a full disk told apart from other errors, and the lock that
keeps two runs out of one output directory.

Atomic writes (:func:`atomic_write`): the content goes to ``PATH.tmp``
beside the target, is flushed to the disk (``fsync``), and is renamed over
``PATH`` last, so a reader (or a run resumed after a crash or a kill) sees
the old file or the whole new one, never a half-written or empty one.

CSV (:func:`write_csv`, :func:`write_records`): the ``excel`` dialect of
:mod:`csv`, a header line then one line per row; a float (Python or NumPy)
is written as ``repr(float(v))``, the shortest text that reads back to the
same float64 (:func:`csv_value`), everything else as :mod:`csv` writes it.
JSON (:func:`write_json`): standard JSON, NaN and infinities as ``null``
(:func:`json_safe`), indented by 2, keys sorted, one final newline.
"""

from __future__ import annotations

import atexit
import csv
import errno
import fcntl
import json
import os
from typing import Callable, Iterable, Sequence

import jax
import numpy as np

from nash_jax.errors import ConfigError


def fsync_file(path) -> None:
  """Flushes a written file's content to the disk (``os.fsync``)."""
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def atomic_write(path, write: Callable[[str], None]) -> None:
  """``write(tmp)`` to a temporary name beside ``path`` (a ``str`` or a
  ``Path``), flushed to the disk, then renamed: a reader never sees a
  half-written file, and a crash never leaves an empty one under ``path``.
  """
  tmp = os.fspath(path) + '.tmp'
  write(tmp)
  fsync_file(tmp)
  os.replace(tmp, path)


def csv_value(value):
  """A CSV cell: a float (Python or NumPy) as ``repr(float(value))``, the
  shortest text that reads back to the same float64; anything else as
  is."""
  if isinstance(value, (float, np.floating)):
    return repr(float(value))
  return value


def csv_row(values: Iterable) -> list:
  """A CSV row: :func:`csv_value` of each value."""
  return [csv_value(v) for v in values]


def write_csv(path, header: Sequence, rows: Iterable[Sequence]) -> None:
  """One CSV file (header, then rows of :func:`csv_row`), written
  atomically."""
  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(header)
      writer.writerows(csv_row(row) for row in rows)
  atomic_write(path, write)


def write_records(path, records: Sequence[dict],
                  columns: Sequence[str] | None = None) -> None:
  """Dict rows as one CSV file, written atomically: the header is
  ``columns`` (default: the first record's keys), each record's values in
  that order (:func:`csv_value`; a missing key is an empty cell, a key not
  in the header an error, as :class:`csv.DictWriter` has it)."""
  header = list(records[0] if columns is None else columns)
  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=header)
      writer.writeheader()
      writer.writerows({k: csv_value(v) for k, v in record.items()}
                       for record in records)
  atomic_write(path, write)


def json_safe(obj):
  """NaN and infinities become ``null`` so that the JSON is standard."""
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return obj


def write_json(path, obj, sort_keys: bool = True) -> None:
  """Standard JSON (NaN and infinities as ``null``), written atomically;
  ``sort_keys=False`` keeps the dicts' own key order."""
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(json_safe(obj), f, indent=2, sort_keys=sort_keys,
                allow_nan=False)
      f.write('\n')
  atomic_write(path, write)


def write_jsonl(path, records: Iterable[dict]) -> None:
  """JSON Lines (one object per line, as :func:`json.dumps` writes it),
  written atomically."""
  def write(tmp):
    with open(tmp, 'w') as f:
      for record in records:
        f.write(json.dumps(record) + '\n')
  atomic_write(path, write)


def write_npy(path, array) -> None:
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
