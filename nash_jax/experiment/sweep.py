"""Sweeps: a grid of runtime values, its cells, their validation and what
their checkpoints are checked against. A sweep runs every cell and seed in
one compiled call (:func:`nash_jax.experiment.run.run_task`), for any
task.
"""

from __future__ import annotations

import dataclasses
import os

from nash_jax import checkpoint as checkpoint_lib
from nash_jax.errors import ConfigError
from nash_jax.experiment import checks


def parse_sweep(specs: list[str], sweepable) -> dict[str, list[float]]:
  """``['beta=0.1,0.01', 'learning_rate=0.1,1']`` -> ``{name: values}``.

  Raises:
    ConfigError: naming ``--sweep`` for a malformed entry, a name outside
      ``sweepable`` (a task's :meth:`~nash_jax.experiment.task.Task.
      sweep_names`), a repeated name or a value that is not a number.
  """
  grid = {}
  for spec in specs:
    name, sep, values = spec.partition('=')
    name = name.strip()
    if not sep or not values.strip():
      raise ConfigError('sweep', f'expected NAME=V1,V2,..., got {spec!r}')
    if name not in sweepable:
      raise ConfigError('sweep', f'cannot sweep {name!r}; sweepable: '
                        f'{", ".join(sweepable)}')
    if name in grid:
      raise ConfigError('sweep', f'{name} is swept twice')
    try:
      grid[name] = [float(v) for v in values.split(',')]
    except ValueError:
      raise ConfigError('sweep', f'{name} values must be numbers, got '
                        f'{values!r}') from None
    check_distinct('sweep', grid[name], name)
  return grid


def check_distinct(flag: str, values, name: str | None = None) -> None:
  """Refuses a list of swept values with one value twice (two cells would
  share a directory).

  Raises:
    ConfigError: naming ``flag`` (and the swept ``name``) and the repeated
      value.
  """
  seen = []
  for v in values:
    if v in seen:
      prefix = f'{name} ' if name else ''
      raise ConfigError(flag, f'{prefix}lists {format_value(v)} twice; each '
                        'value makes one cell')
    seen.append(v)


def format_value(v: float) -> str:
  """A swept value as text that reads back to the same float: the short
  ``%g`` form when it is exact (``0.1``, ``1e-05``), else the shortest
  round-trip form (``0.1000001``)."""
  short = f'{v:g}'
  return short if float(short) == v else repr(float(v))


def cell_name(values: dict) -> str:
  """A sweep cell's directory name, e.g. ``beta=0.1_learning_rate=0.01``;
  distinct values always give distinct names (see :func:`format_value`)."""
  return '_'.join(f'{k}={format_value(v)}' for k, v in values.items())


def sweep_cells(config, grid: dict[str, list[float]]):
  """The cells of a grid (Cartesian product, in the order given):
  ``[(values, config)]`` with each cell's output in
  ``config.output_dir/<cell_name>``; configs not yet validated."""
  cells = [{}]
  for name, values in grid.items():
    cells = [dict(cell, **{name: v}) for cell in cells for v in values]
  return [(cell, config.replace(output_dir=os.path.join(
      config.output_dir, cell_name(cell)), checkpoint_every=0, **cell))
          for cell in cells]


def validate_sweep(task, config, grid: dict[str, list[float]]):
  """Validates every cell of a sweep of ``task``; returns ``(cells,
  inputs)`` with ``cells = [(values, resolved config)]``.

  Each cell is resolved on its own values (an unswept default such as the
  learning rate follows a swept ``beta``), and every cell must keep the
  same structure (the sweep is one compiled program).

  Raises:
    ConfigError: naming the flag (and the cell).
  """
  for name, values in grid.items():
    check_distinct('sweep', values, name)
  cells, inputs = [], None
  for values, cell in sweep_cells(config, grid):
    try:
      resolved, inputs = checks.validate(task, cell)
    except ConfigError as e:
      raise ConfigError(e.flag, f'{str(e).partition(": ")[2]} (sweep cell '
                        f'{cell_name(values)})') from None
    for name in grid:
      who = checks.unused_by(resolved, name)
      if who:
        raise ConfigError('sweep', f'{who} does not use {name}: every cell '
                          'would be the same run')
      if getattr(resolved, name) is None:
        raise ConfigError('sweep', f'{config.algorithm} has no {name}')
    cells.append((values, resolved))
  if task.check_sweep is not None:
    task.check_sweep(cells)
  structures = {task.structure(c) for _, c in cells}
  if len(structures) > 1:
    raise ConfigError('sweep', 'cells differ in more than swept values')
  try:
    checkpoint_lib.Checkpointer(config.output_dir, sweep_checkpoint_config(
        [c for _, c in cells])).check(config.overwrite, config.num_steps)
  except checkpoint_lib.CheckpointMismatch as e:
    raise ConfigError(e.flag, str(e)) from None
  return cells, inputs


def sweep_checkpoint_config(configs: list) -> dict:
  """What a sweep's checkpoints are checked against: every cell's config
  (less the settings a resumed run may change, such as ``num_steps``)."""
  if len(configs) == 1:
    return dataclasses.asdict(configs[0])
  return {'cells': [{k: v for k, v in dataclasses.asdict(c).items()
                     if k not in checkpoint_lib.RESUMABLE_CHANGES}
                    for c in configs]}
