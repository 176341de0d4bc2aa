r"""Compares NLHF algorithms on the same tabular games: the main job.

  python -m experiments.compare                       # built-in defaults
  python -m experiments.compare --algorithms=nash_mp,omd --beta=0.01

Every algorithm runs on the same games (same seeds) until each seed has used
--query_budget preference queries. proximal_point is evaluated after every
outer step (--eval_every applies to the others), since one of its steps may
use hundreds of queries. Writes, into --output_dir, one
sub-directory per algorithm in the layout of experiments.matrix_game, plus
comparison.csv (one row per algorithm) and comparison.png (KL to pi*_beta and
duality gap against preference queries), and prints the table.
"""

import os
import time

import jax
from absl import app, flags

from experiments import common
from nash_jax import algorithms, analysis, experiment
from nash_jax import io as io_lib
from nash_jax.algorithms import ConfigError
from nash_jax.tasks import tabular

flags.DEFINE_list('algorithms', list(algorithms.ALGORITHM_NAMES),
                  'Algorithms to compare (comma-separated); default: every '
                  'algorithm of --mode.')
flags.DEFINE_integer('query_budget', 2000, 'Preference queries per seed; '
                     'each algorithm stops at the first evaluation past it.')
common.define_settings(tabular.TabularConfig, output_dir='results/compare',
                       num_steps=100_000, eval_every=10, num_actions=50,
                       num_seeds=8)
common.define_deprecated_flags()
common.define_multihost_flags()


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  common.start_jax(flags.FLAGS.dtype)
  budget = flags.FLAGS.query_budget
  try:
    io_lib.lock_output_dir(flags.FLAGS.output_dir, only_existing=True)
    base, given = common.task_config(tabular.TASK)
    names = flags.FLAGS.algorithms
    if base.mode == 'sampled' and flags.FLAGS['algorithms'].using_default_value:
      names = list(algorithms.SAMPLED_ALGORITHM_NAMES)
    if not names:
      raise ConfigError('algorithms', 'must name at least one algorithm')
    if budget < 1:
      raise ConfigError('query_budget', f'must be >= 1, got {budget}')
    experiment.check_output_dir(base.output_dir)
    experiment.check_used([base.replace(algorithm=n) for n in names], given)
    configs = {}
    for name in names:
      config = base.replace(algorithm=name,
                            output_dir=os.path.join(base.output_dir, name))
      if name == 'proximal_point':
        config = config.replace(eval_every=1)
      configs[name], inputs = experiment.validate(tabular.TASK, config)
    io_lib.lock_output_dir(base.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(common.renamed(e, {'algorithm': 'algorithms',
                                       **common.aliases_used()})))
  common.warn_deprecated()

  start = time.time()
  first = next(iter(configs.values()))
  prepared = tabular.TabularInputs(inputs.file_game, tabular.prepare(
      first, inputs.file_game, log=print if jax.process_index() == 0 else
      (lambda line: None)))
  results = {}
  for name, config in configs.items():
    results[name] = experiment.run_task(
        tabular.TASK, [config], prepared, query_budget=budget,
        log=lambda line: None)[0]
    experiment.write_results(results[name])
    last = results[name].rows[-1]
    if jax.process_index() == 0:
      print(f'{name:<15} {results[name].wall_time:6.1f}s  '
            f'kl_to_equilibrium {last["kl_to_equilibrium"].mean():.3e}')
  if jax.process_index() != 0:
    return
  table = analysis.comparison_rows(results)
  io_lib.write_records(os.path.join(base.output_dir, 'comparison.csv'), table)
  title = (f'{base.game} game, n={first.num_actions}, X={first.num_contexts},'
           f' beta={base.beta:g}, {base.num_seeds} seeds')
  analysis.plot_comparison(results,
                           os.path.join(base.output_dir, 'comparison.png'),
                           title)
  print(analysis.format_table(table))
  print(f'wrote {base.output_dir} ({time.time() - start:.1f}s)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
