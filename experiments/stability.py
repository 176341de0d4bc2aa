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
from nash_jax.algorithms import ConfigError

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
common.define_flags(output_dir='results/stability', num_steps=0,
                    eval_every=0, num_actions=20, num_seeds=32,
                    mode='sampled', seed_block=32)


def _floats(flag):
  try:
    values = tuple(float(v) for v in flags.FLAGS[flag].value)
  except ValueError:
    raise ConfigError(flag, f'must be numbers, got '
                      f'{",".join(flags.FLAGS[flag].value)}') from None
  if not values:
    raise ConfigError(flag, 'must list at least one value')
  return values


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  f = flags.FLAGS
  common.start_jax(f.dtype)
  try:
    if not f.algorithms:
      raise ConfigError('algorithms', 'must name at least one algorithm')
    if f.query_budget < 1:
      raise ConfigError('query_budget', f'must be >= 1, got {f.query_budget}')
    if not f.kl_threshold > 0:
      raise ConfigError('kl_threshold', f'must be > 0, got {f.kl_threshold}')
    study = stability.Study(tuple(f.algorithms), _floats('betas'),
                            _floats('learning_rates'), f.query_budget,
                            f.kl_threshold)
    base = common.config_from_flags()
    per_step = base.batch_size if base.mode == 'sampled' else 1
    steps = f.num_steps or math.ceil(f.query_budget / max(per_step, 1))
    every = f.eval_every or math.ceil(steps / 10)
    # Whole chunks only: a shorter last chunk would compile a second program.
    base = base.replace(num_steps=every * math.ceil(steps / every),
                        eval_every=every)
    plan = stability.validate(base, study)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  start = time.time()
  rows = []
  for name, (cells, file_game) in plan.items():
    results = stability_run(name, cells, file_game, base, study)
    for (values, _), res in zip(cells, results):
      rows.append(stability.cell_summary(name, values, res, study))
  if jax.process_index() != 0:
    return
  path = os.path.join(base.output_dir, 'stability.csv')
  stability.write_csv(rows, path)
  stability.plot(rows, os.path.join(base.output_dir, 'stability.png'),
                 f'{base.game} games, n={base.num_actions}, '
                 f'{base.mode} ({base.policy}, batch {base.batch_size}), '
                 f'{base.num_seeds} seeds, {study.query_budget} queries, '
                 f'converged: KL < {study.kl_threshold:g}')
  for r in rows:
    print(f'{r["algorithm"]:<15} beta {r["beta"]:<6g} lr {r["learning_rate"]:<7g}'
          f' converged {r["fraction_converged"]:.2f}  diverged '
          f'{r["fraction_diverged"]:.2f}  median KL {r["kl_median"]:.2e}')
  print(f'wrote {path} ({time.time() - start:.1f}s)')


def stability_run(name, cells, file_game, base, study):
  """Runs one algorithm's grid and writes its cell directories."""
  t = time.time()
  results = experiment.run_sweep(
      [c for _, c in cells], os.path.join(base.output_dir, name), file_game,
      log=lambda line: None, query_budget=study.query_budget,
      checkpoint_every=base.checkpoint_every)
  for res in results:
    experiment.write_results(res)
  experiment.write_sweep_table(cells, results,
                               os.path.join(base.output_dir, name))
  if jax.process_index() == 0:
    print(f'{name}: {len(cells)} cells x {base.num_seeds} seeds in '
          f'{time.time() - t:.1f}s')
  return results


if __name__ == '__main__':
  app.run(main)
