"""The run kit: what every kind of run shares, knowing nothing of games,
tokens or checkpoints.

A kind of run (:mod:`nash_jax.tasks`) is described once by a
:class:`~nash_jax.experiment.task.Task`; the kit runs it:

* :mod:`~nash_jax.experiment.task`: :class:`Task`, :class:`RunPlan` and the
  settings every run has (:class:`RunConfig`, :class:`OutcomeConfig`);
* :mod:`~nash_jax.experiment.checks`: :func:`validate` (the shared checks,
  then the task's) and the public checks every task uses;
* :mod:`~nash_jax.experiment.sweep`: grids of runtime values,
  :func:`validate_sweep`;
* :mod:`~nash_jax.experiment.results`: the documented result files, one
  writer (``summary.json`` last), one ``samples.jsonl`` writer;
* :mod:`~nash_jax.experiment.run`: :func:`run_task` (:func:`run_one` for a
  single config), the one run skeleton
  (every cell and seed in one compiled call per evaluation chunk,
  checkpoints, preemption, bit-exact resume).

Files are written through :mod:`nash_jax.io` (atomic writes, CSV, JSON,
the output lock).
"""

from nash_jax.experiment.checks import (
  MAX_SEED,
  check_output_dir,
  check_used,
  format_bytes,
  memory_limits,
  unused_by,
  validate,
)
from nash_jax.experiment.results import (
  Results,
  format_table,
  manifest,
  metric_columns,
  summary,
  write_results,
  write_samples,
  write_sweep_table,
)
from nash_jax.experiment.run import (
  run_cost,
  run_one,
  run_task,
  seed_keys,
  train_recorded,
)
from nash_jax.experiment.sweep import (
  cell_name,
  check_distinct,
  format_value,
  parse_sweep,
  sweep_cells,
  sweep_checkpoint_config,
  validate_sweep,
)
from nash_jax.experiment.task import OutcomeConfig, RunConfig, RunPlan, Task

__all__ = [
    'MAX_SEED', 'OutcomeConfig', 'Results', 'RunConfig', 'RunPlan', 'Task',
    'cell_name', 'check_distinct', 'check_output_dir', 'check_used',
    'format_bytes', 'format_table', 'format_value', 'manifest',
    'memory_limits', 'metric_columns', 'parse_sweep', 'run_cost', 'run_one',
    'run_task',
    'seed_keys', 'summary', 'sweep_cells', 'sweep_checkpoint_config',
    'train_recorded', 'unused_by', 'validate', 'validate_sweep',
    'write_results', 'write_samples', 'write_sweep_table',
]
