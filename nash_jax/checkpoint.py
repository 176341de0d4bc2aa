"""Checkpoints of a run with orbax: resume a killed run bit for bit.

A checkpoint holds everything the run needs to continue: the state of every
real seed (params, anchors, optimizer state, PRNG key, step and query
counters), the evaluation rows so far and the number of steps done. It is
saved with ``orbax.checkpoint.CheckpointManager`` under
``output_dir/checkpoints/<step>/`` (orbax writes to a temporary directory and
renames it, so a kill never leaves a half checkpoint that looks complete),
keeping the last few, with the run's resolved config as
``checkpoints/config.json`` beside them (Brax / Tunix style).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from nash_jax import io as io_lib

# Settings a resumed run may change: they do not change any result.
RESUMABLE_CHANGES = ('num_steps', 'output_dir', 'checkpoint_every',
                     'keep_checkpoints', 'overwrite', 'num_devices',
                     'tensorboard')


def is_closed_loop_noise(unraisable) -> bool:
  """Whether an unraisable exception is the ``RuntimeError('Event loop is
  closed')`` that tensorstore's callbacks raise when reads still in flight
  finish after orbax's failed restore has closed its event loop (harmless:
  nobody waits for those reads any more)."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and
          str(error) == 'Event loop is closed'):
    return False
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_name == '_check_closed'


def quiet_closed_loops() -> None:
  """Drops :func:`is_closed_loop_noise` (one 5-line traceback per pending
  read of a damaged checkpoint) from ``sys.unraisablehook``; every other
  unraisable exception still reaches the previous hook. Installed once."""
  previous = sys.unraisablehook
  if getattr(previous, 'quiet_closed_loops', False):
    return

  def hook(unraisable):
    if not is_closed_loop_noise(unraisable):
      previous(unraisable)
  hook.quiet_closed_loops = True
  sys.unraisablehook = hook


class CheckpointMismatch(ValueError):
  """The checkpoints in a directory belong to a run with other settings
  (``flag``: the flag the message is about)."""

  def __init__(self, message: str, flag: str = 'overwrite'):
    super().__init__(message)
    self.flag = flag


class ChecksumMismatch(ValueError):
  """A checkpoint's data does not match the checksum saved with it."""


def checksum(tree: dict) -> np.ndarray:
  """SHA-256 of every array of a checkpoint tree (paths, dtypes, shapes and
  bytes, in sorted path order; ``'checksum'`` itself excluded), as 32
  ``uint8``."""
  digest = hashlib.sha256()
  for path, leaf in sorted(_leaves(tree)):
    if path == 'checksum':
      continue
    a = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{path}|{a.dtype.str}|{a.shape}|'.encode())
    digest.update(a.tobytes())
  return np.frombuffer(digest.digest(), np.uint8).copy()


def _leaves(tree, prefix: str = ''):
  """``(path, leaf)`` of a nested dict of arrays, paths joined by ``/``."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f'{prefix}/{k}' if prefix else str(k))
  else:
    yield prefix, tree


def verify(tree: dict) -> None:
  """Checks a restored tree against its saved checksum (checkpoints of
  older versions carry none and are taken as they are).

  Raises:
    ChecksumMismatch: the data changed since it was saved.
  """
  if 'checksum' not in tree:
    return
  saved = np.asarray(tree['checksum'], np.uint8)
  if not np.array_equal(saved, checksum(tree)):
    raise ChecksumMismatch('checksum mismatch: the data changed after it '
                           'was saved')


def steps_on_disk(path: str) -> list[int]:
  """The steps of the finished checkpoints in a checkpoint directory."""
  if not os.path.isdir(path):
    return []
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def directory(output_dir: str) -> str:
  return os.path.join(os.path.abspath(output_dir), 'checkpoints')


def differences(saved: dict, current: dict) -> list[str]:
  """Settings that differ between a saved and a current config. A switch
  added after the checkpoint was saved (absent there) matches when it is
  off (``False`` or ``None``), e.g. ``stop_on_divergence``."""
  keys = (set(saved) | set(current)) - set(RESUMABLE_CHANGES)
  new_and_off = {k for k in keys if k not in saved and
                 current.get(k) in (None, False)}
  return sorted(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}'
                for k in keys - new_and_off if saved.get(k) != current.get(k))


class Checkpointer:
  """Saves and restores one run's checkpoints (only process 0 writes)."""

  def __init__(self, output_dir: str, config: dict, keep: int = 3):
    self.path = directory(output_dir)
    # As JSON would give it back (tuples become lists), for comparisons.
    self.config = json.loads(json.dumps(config))
    self.keep = keep
    self._manager = None

  def _open(self):
    quiet_closed_loops()
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, enable_async_checkpointing=False,
          create=True)
      self._manager = ocp.CheckpointManager(self.path, options=options)
    return self._manager

  def saved_config(self) -> dict | None:
    """The settings the checkpoints were saved with; None if there are
    none. An unreadable ``config.json`` makes every checkpoint beside it
    unverifiable: the directory is set aside (see :meth:`_set_all_aside`)
    and the run starts over."""
    path = os.path.join(self.path, 'config.json')
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        saved = json.load(f)
      if not isinstance(saved, dict):
        raise ValueError(f'expected a JSON object, got {type(saved).__name__}')
      return saved
    except (OSError, ValueError) as e:
      self._set_all_aside(f'{path} is unreadable ({type(e).__name__}: '
                          f'{" ".join(str(e).split())[:120]})')
      return None

  def _set_all_aside(self, why: str) -> None:
    """Renames the checkpoint directory to ``checkpoints.damaged`` (one
    warning line) so that the run starts over beside it."""
    self.close()
    target = self.path + '.damaged'
    logging.warning('%s; moved %s to %s, starting over', why, self.path,
                    target)
    if jax.process_index() == 0:
      shutil.rmtree(target, ignore_errors=True)
      os.replace(self.path, target)

  def check(self, overwrite: bool, num_steps: int | None = None) -> None:
    """Refuses checkpoints of different settings, or deletes them with
    ``overwrite``; refuses checkpoints past ``num_steps`` (a resumed run
    would record more steps than asked for). Runs before any work."""
    saved = self.saved_config()
    if saved is None:
      return
    diff = differences(saved, self.config)
    if diff and not overwrite:
      raise CheckpointMismatch(
          f'{self.path} holds checkpoints of a run with other settings ('
          + '; '.join(diff) + '); pass --overwrite to start over')
    if diff or overwrite:
      if jax.process_index() == 0:
        shutil.rmtree(self.path, ignore_errors=True)
      return
    done = steps_on_disk(self.path)
    if num_steps is not None and done and done[-1] > num_steps:
      raise CheckpointMismatch(
          f'{num_steps} is fewer steps than the {done[-1]} already done in '
          f'{self.path}; give --num_steps >= {done[-1]} to continue that '
          'run, or --overwrite to start over', flag='num_steps')

  def save(self, done: int, state, rows: list[dict]) -> None:
    """Saves the host ``state`` (real seeds), ``rows`` and ``done``."""
    if jax.process_index() != 0:
      return
    manager = self._open()
    config_path = os.path.join(self.path, 'config.json')
    if not os.path.exists(config_path):
      def write(tmp):
        with open(tmp, 'w') as f:
          json.dump(self.config, f, indent=2, sort_keys=True)
      io_lib.atomic_write(config_path, write)
    leaves = jax.tree.leaves(state)
    tree = {
        'state': {str(i): np.asarray(x) for i, x in enumerate(leaves)},
        'rows': {k: np.stack([np.asarray(r[k]) for r in rows])
                 for k in rows[0]},
        'done': np.int64(done),
    }
    tree['checksum'] = checksum(tree)
    manager.save(done, args=ocp.args.StandardSave(tree), force=True)
    manager.wait_until_finished()

  def restore(self, state_template):
    """The latest readable checkpoint as ``(state, rows, done)``, or None.

    A damaged checkpoint is skipped with a warning in favour of the one
    before it. ``state_template`` gives the state's tree structure.
    """
    if self.saved_config() is None:
      return None
    treedef = jax.tree.structure(state_template)
    for step in sorted(self._open().all_steps(), reverse=True):
      try:
        tree = self._open().restore(step, args=ocp.args.StandardRestore())
        verify(tree)
        leaves = [tree['state'][str(i)] for i in range(treedef.num_leaves)]
        state = jax.tree.unflatten(treedef, leaves)
        names = list(tree['rows'])
        count = len(tree['rows'][names[0]])
        rows = [{k: tree['rows'][k][t] for k in names} for t in range(count)]
        return state, rows, int(tree['done'])
      except Exception as e:  # noqa: BLE001 - any damage means: fall back.
        logging.warning('checkpoint %s/%d is unreadable (%s: %s); moved to '
                        '%d.damaged, trying the one before', self.path, step,
                        type(e).__name__, ' '.join(str(e).split())[:200],
                        step)
        self._set_aside(step)
    logging.warning('no readable checkpoint in %s; starting over', self.path)
    return None

  def _set_aside(self, step: int) -> None:
    """Renames a damaged checkpoint so that the run can save that step anew."""
    self.close()
    if jax.process_index() == 0:
      source = os.path.join(self.path, str(step))
      target = source + '.damaged'
      shutil.rmtree(target, ignore_errors=True)
      os.replace(source, target)
    self._open()

  def close(self):
    if self._manager is not None:
      self._manager.close()
      self._manager = None
