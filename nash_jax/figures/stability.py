"""Figure ``stability``: self-play (online IPO) against Nash Prox over step
size x beta (ALGORITHMS.md section 5, claims 1 and 2).

Each algorithm runs every ``(beta, learning_rate)`` cell of the grid on
random games (seed ``s`` plays game ``s`` in every cell), sampled mode with
a tabular policy and a Bernoulli oracle, until every seed has used the query
budget; all cells and seeds of an algorithm are one compiled call
(:func:`nash_jax.experiment.run_task`). A seed has converged when its last
iterate has ``KL_rho(pi*_beta || pi) < kl_threshold``, and diverged when its
final KL exceeds that of ``pi_ref`` (:func:`nash_jax.stability.cell_summary`).
The figure is the heatmap of the converged fraction per cell, one panel per
algorithm (:func:`nash_jax.stability.plot`). Claim 1 predicts that online
IPO fails as ``beta`` shrinks or the step grows; claim 2 that Nash Prox
converges at steps where it fails.
"""

from __future__ import annotations

import json
import os

from nash_jax import stability as study_lib
from nash_jax.figures import common
from nash_jax.tasks import tabular

CLAIM = ('claims 1 and 2: self-play PG / online IPO has a stability limit in '
         'step size and beta; Nash Prox converges where it fails')
OUTPUTS = ['stability.csv']
# The fixed settings of the study; the config sets the rest.
MODE, POLICY = 'sampled', 'tabular'


def study(config: dict) -> study_lib.Study:
  """The grid of ``config`` as a :class:`nash_jax.stability.Study`."""
  return study_lib.Study(
      algorithms=tuple(config['algorithms']),
      betas=tuple(float(b) for b in config['betas']),
      learning_rates=tuple(float(v) for v in config['learning_rates']),
      query_budget=int(config['query_budget']),
      kl_threshold=float(config['kl_threshold']))


def base_config(config: dict, directory: str) -> tabular.TabularConfig:
  """The settings every cell shares; cells go under ``directory/runs``.

  ``seed_block = num_seeds``: one ``vmap`` over the seeds of a cell (faster
  on CPU than blocks of 1; a cell then differs from the single run of its
  config in the last bits, which the figure does not need).
  """
  steps, every = common.sampled_schedule(
      config['query_budget'], config['batch_size'], config['evaluations'])
  return tabular.TabularConfig(
      game=config['game'], num_actions=config['num_actions'],
      ref_policy=config['ref_policy'], mode=MODE, policy=POLICY,
      batch_size=config['batch_size'], outcome=config['outcome'],
      num_seeds=config['num_seeds'], seed=config['seed'],
      seed_block=config['num_seeds'], num_steps=steps, eval_every=every,
      checkpoint_every=0,
      output_dir=os.path.join(directory, 'runs'))


def validate(config: dict, directory: str) -> None:
  """Refuses a config that cannot run (raises ConfigError) before any
  work."""
  study_lib.validate(base_config(config, directory), study(config))


def compute(config: dict, directory: str, log) -> list[str]:
  """Runs the grid of every algorithm; writes ``stability.csv`` (one row per
  algorithm and cell, :data:`nash_jax.stability.STABILITY_COLUMNS`) and each
  cell's result directory under ``runs/<algorithm>/``."""
  grid, base = study(config), base_config(config, directory)
  rows = study_lib.run(study_lib.validate(base, grid), grid, base.output_dir,
                       log=lambda line: log(f'  stability: {line}'))
  for row in rows:
    log(f'    {study_lib.format_row(row)}')
  study_lib.write_csv(rows, os.path.join(directory, 'stability.csv'))
  return OUTPUTS


def _title(directory: str) -> str:
  path = os.path.join(directory, 'result.json')
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    c = json.load(f)['config']
  return (f'{c["game"]} games, n = {c["num_actions"]}, sampled (tabular, '
          f'batch {c["batch_size"]}, {c["outcome"]} outcomes, sgd), '
          f'{c["num_seeds"]} seeds, {c["query_budget"]:,} queries; '
          f'converged: final KL < {c["kl_threshold"]:g}')


def plot(directory: str) -> None:
  """Heatmaps of the converged fraction over learning rate x beta, one per
  algorithm, each cell annotated with the median final KL."""
  rows = study_lib.read_csv(os.path.join(directory, 'stability.csv'))
  common.pyplot()
  study_lib.plot(rows, os.path.join(directory, 'stability.png'),
                 _title(directory))
