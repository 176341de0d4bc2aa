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

import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

# Settings a resumed run may change: they do not change any result.
RESUMABLE_CHANGES = ('num_steps', 'output_dir', 'checkpoint_every',
                     'keep_checkpoints', 'overwrite', 'num_devices',
                     'tensorboard')


class CheckpointMismatch(ValueError):
  """The checkpoints in a directory belong to a run with other settings."""


def directory(output_dir: str) -> str:
  return os.path.join(os.path.abspath(output_dir), 'checkpoints')


def differences(saved: dict, current: dict) -> list[str]:
  """Settings that differ between a saved and a current config."""
  keys = (set(saved) | set(current)) - set(RESUMABLE_CHANGES)
  return sorted(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}'
                for k in keys if saved.get(k) != current.get(k))


class Checkpointer:
  """Saves and restores one run's checkpoints (only process 0 writes)."""

  def __init__(self, output_dir: str, config: dict, keep: int = 3):
    self.path = directory(output_dir)
    # As JSON would give it back (tuples become lists), for comparisons.
    self.config = json.loads(json.dumps(config))
    self.keep = keep
    self._manager = None

  def _open(self):
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.keep, enable_async_checkpointing=False,
          create=True)
      self._manager = ocp.CheckpointManager(self.path, options=options)
    return self._manager

  def saved_config(self) -> dict | None:
    path = os.path.join(self.path, 'config.json')
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def check(self, overwrite: bool) -> None:
    """Refuses checkpoints of different settings, or deletes them with
    ``overwrite``. Runs before any work."""
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

  def save(self, done: int, state, rows: list[dict]) -> None:
    """Saves the host ``state`` (real seeds), ``rows`` and ``done``."""
    if jax.process_index() != 0:
      return
    manager = self._open()
    config_path = os.path.join(self.path, 'config.json')
    if not os.path.exists(config_path):
      tmp = config_path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(self.config, f, indent=2, sort_keys=True)
      os.replace(tmp, config_path)
    leaves = jax.tree.leaves(state)
    tree = {
        'state': {str(i): np.asarray(x) for i, x in enumerate(leaves)},
        'rows': {k: np.stack([np.asarray(r[k]) for r in rows])
                 for k in rows[0]},
        'done': np.int64(done),
    }
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
