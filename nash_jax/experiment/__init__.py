"""One tabular experiment: settings in, result files out.

The library side of ``experiments/matrix_game.py`` and
``experiments/compare.py`` (the binaries only parse flags), one module per
stage, each importing only earlier ones:

* :mod:`~nash_jax.experiment.config`: the composed settings schema
  (:class:`ExperimentConfig`) and :func:`validate`, which checks every
  setting (and reads the game file) before any work;
* :mod:`~nash_jax.experiment.inputs`: the games, their exact references and
  the algorithm built from its config, policy and environment;
* :mod:`~nash_jax.experiment.sweep`: grids of hyperparameters;
* :mod:`~nash_jax.experiment.results`: the documented result files, written
  atomically (``summary.json`` last);
* :mod:`~nash_jax.experiment.run`: :func:`run` and :func:`run_sweep`, every
  seed (and cell) in one compiled call per evaluation chunk.

The same stages serve language-model runs (``experiments/lm.py``):
:class:`LMConfig` and :func:`validate_lm`, the reference transformer and
the token game in ``inputs``, :func:`write_lm_results`, :func:`run_lm`.
"""

from nash_jax.experiment.config import (
  DTYPES,
  GAMES,
  LM_SWEEPABLE,
  MAX_SEED,
  SWEEPABLE,
  ExperimentConfig,
  GameConfig,
  LMConfig,
  ModelConfig,
  OracleConfig,
  RunConfig,
  SampleLogConfig,
  TokenGameConfig,
  check_output_dir,
  check_used,
  hyperparameters,
  lm_hyperparameters,
  unused_by,
  validate,
  validate_lm,
)
from nash_jax.experiment.inputs import (
  algorithm_maker,
  build_games,
  equilibria,
  prepare,
  seed_keys,
  shares_game,
)
from nash_jax.experiment.results import (
  LMResults,
  OutputLock,
  Results,
  atomic_write,
  disk_full,
  disk_full_line,
  format_table,
  lock_output_dir,
  manifest,
  metric_columns,
  summary,
  write_csv,
  write_json,
  write_lm_results,
  write_npy,
  write_results,
  write_sweep_table,
)
from nash_jax.experiment.run import run, run_lm, run_sweep
from nash_jax.experiment.sweep import (
  cell_name,
  check_distinct,
  format_value,
  parse_sweep,
  sweep_cells,
  sweep_checkpoint_config,
  validate_lm_sweep,
  validate_sweep,
)
