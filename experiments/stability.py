r"""The stability study: self-play PG / online IPO against Nash Prox over a
grid of step sizes and beta values, many seeds (ALGORITHMS.md section 5,
claims 1 and 2).

  python -m experiments.stability                       # built-in defaults
  python -m experiments.stability --betas=0.1,0.01 --learning_rates=0.01,0.1 \
      --num_seeds=8 --query_budget=50000

Each algorithm runs every (beta, learning_rate) cell for --num_seeds seeds
(seed s plays random game s in every cell) until each seed has used
--query_budget preference queries, all cells and seeds of an algorithm in
one compiled call. Writes, into --output_dir, stability.csv (per algorithm
and cell: the fraction of seeds whose last iterate has kl_to_equilibrium
below --kl_threshold, the fraction that diverged, quantiles of the final
KL), stability.png/.pdf (heatmaps of the converged fraction) and
<algorithm>/<cell>/ result directories in the layout of
experiments.matrix_game.
"""

import math
import os
import time

import jax
from absl import app, flags

from experiments import common
from nash_jax import experiment, stability
from nash_jax import io as io_lib
from nash_jax.algorithms import ConfigError
from nash_jax.figures.common import sampled_schedule
from nash_jax.tasks import tabular

_S = stability.Study()
flags.DEFINE_list('algorithms', list(_S.algorithms), 'Algorithms to study.')
flags.DEFINE_list('betas', [f'{b:g}' for b in _S.betas], 'beta values.')
flags.DEFINE_list('learning_rates', [f'{v:g}' for v in _S.learning_rates],
                  'Learning rates (the sgd step of each algorithm\'s loss).')
flags.DEFINE_integer('query_budget', _S.query_budget, 'Preference queries '
                     'per seed (sets --num_steps to budget / batch_size, rounded up '
                     'to whole --eval_every chunks, in '
                     'sampled mode).')
flags.DEFINE_float('kl_threshold', _S.kl_threshold, 'A seed has converged '
                   'when its final kl_to_equilibrium is below this.')
common.define_settings(tabular.TabularConfig, output_dir='results/stability',
                       num_steps=0, eval_every=0, num_actions=20,
                       num_seeds=32, mode='sampled', seed_block=32)
common.define_deprecated_flags()
common.define_multihost_flags()


def _floats(flag):
  try:
    values = tuple(float(v) for v in flags.FLAGS[flag].value)
  except ValueError:
    raise ConfigError(flag, f'must be numbers, got '
                      f'{",".join(flags.FLAGS[flag].value)}') from None
  if not values:
    raise ConfigError(flag, 'must list at least one value')
  experiment.check_distinct(flag, values)
  return values


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  f = flags.FLAGS
  common.start_jax(f.dtype)
  try:
    io_lib.lock_output_dir(f.output_dir, only_existing=True)
    if not f.algorithms:
      raise ConfigError('algorithms', 'must name at least one algorithm')
    if f.query_budget < 1:
      raise ConfigError('query_budget', f'must be >= 1, got {f.query_budget}')
    if not f.kl_threshold > 0:
      raise ConfigError('kl_threshold', f'must be > 0, got {f.kl_threshold}')
    study = stability.Study(tuple(f.algorithms), _floats('betas'),
                            _floats('learning_rates'), f.query_budget,
                            f.kl_threshold)
    base, _ = common.task_config(tabular.TASK)
    per_step = max(base.batch_size, 1) if base.mode == 'sampled' else 1
    queries = f.num_steps * per_step if f.num_steps else f.query_budget
    steps, every = sampled_schedule(queries, per_step, 10)
    if f.eval_every:  # Whole chunks of the given length.
      every = f.eval_every
      steps = every * math.ceil(steps / every)
    base = base.replace(num_steps=steps, eval_every=every)
    plan = stability.validate(base, study)
    io_lib.lock_output_dir(base.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(common.renamed(e, {'algorithm': 'algorithms',
                                       'beta': 'betas',
                                       'learning_rate': 'learning_rates',
                                       **common.aliases_used()})))
  common.warn_deprecated()
  start = time.time()
  log = print if jax.process_index() == 0 else (lambda line: None)
  rows = stability.run(plan, study, base.output_dir,
                       checkpoint_every=base.checkpoint_every, log=log)
  if jax.process_index() != 0:
    return
  path = os.path.join(base.output_dir, 'stability.csv')
  stability.write_csv(rows, path)
  stability.plot(rows, os.path.join(base.output_dir, 'stability.png'),
                 f'{base.game} games, n={base.num_actions}, '
                 f'{base.mode} ({base.policy}, batch {base.batch_size}), '
                 f'{base.num_seeds} seeds, {study.query_budget} queries, '
                 f'converged: KL < {study.kl_threshold:g}')
  print(f'wrote {path} ({time.time() - start:.1f}s)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
