r"""Runs one NLHF algorithm on a tabular preference game, many seeds at once.

  python -m experiments.matrix_game --algorithm=nash_mp --beta=0.1 \
      --num_actions=20 --num_seeds=8 --output_dir=results/nash_mp
  python -m experiments.matrix_game --mode=sampled --algorithm=nash_prox \
      --policy=loglinear --game=annotators --batch_size=64

Writes config.json, metrics.csv, final_policy.npy, equilibrium.npy and
summary.json into --output_dir (see README.md), prints a progress line per
evaluation and a final table.
"""

import time

import jax
from absl import app, flags

from experiments import common
from nash_jax import experiment

flags.DEFINE_string('algorithm', 'nash_mp', '--mode=exact: ' +
                    ', '.join(common.ALGORITHM_NAMES) + '; --mode=sampled: '
                    + ', '.join(common.SAMPLED_ALGORITHM_NAMES) + ' and the '
                    'baselines ' + ', '.join(common.BASELINE_NAMES) + '.')
flags.DEFINE_multi_string(
    'sweep', [], 'NAME=V1,V2,...: run every combination of these values '
    '(repeat the flag for a grid) with all seeds in one compiled call; NAME '
    'is one of ' + ', '.join(experiment.SWEEPABLE) + '. Each cell is written '
    'to OUTPUT_DIR/<name>=<value>_.../ in the usual layout, and '
    'OUTPUT_DIR/sweep.csv summarizes the cells.')
common.define_flags(output_dir='results/matrix_game', num_steps=1000,
                    eval_every=10, num_actions=20, num_seeds=1)


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  common.start_jax(flags.FLAGS.dtype)
  try:
    experiment.lock_output_dir(flags.FLAGS.output_dir, only_existing=True)
    config = common.config_from_flags(algorithm=flags.FLAGS.algorithm)
    experiment.check_used([config], common.explicit_settings(
        experiment.ExperimentConfig))
    if flags.FLAGS.sweep:
      grid = experiment.parse_sweep(flags.FLAGS.sweep)
      cells, file_game = experiment.validate_sweep(config, grid)
    else:
      config, file_game = experiment.validate(config)
    experiment.lock_output_dir(config.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  if flags.FLAGS.sweep:
    return run_sweep(config, cells, file_game)
  results = experiment.run(config, file_game)
  experiment.write_results(results)
  if jax.process_index() == 0:
    print(experiment.format_table(results))
    print(f'wrote {config.output_dir} ({results.wall_time:.1f}s)')


def run_sweep(config, cells, file_game):
  start = time.time()
  results = experiment.run_sweep([c for _, c in cells], config.output_dir,
                                 file_game,
                                 checkpoint_every=config.checkpoint_every)
  common.report_sweep(cells, results, config.output_dir, start,
                       experiment.write_results)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
