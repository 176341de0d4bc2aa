r"""Post-trains a small transformer with an NLHF algorithm on the listable
token game, many seeds at once, with exact metrics.

  python -m experiments.lm --algorithm=nash_prox --beta=0.1 --num_seeds=8
  python -m experiments.lm --algorithm=online_ipo --sweep=learning_rate=1e-3,3e-3

The reference policy pi_ref is a transformer drawn from --model_seed; every
seed starts from it and is trained by the sampled algorithm (online_ipo,
self_play_pg, nash_prox, approx_nash_mp, nash_md_pg) against the token
game's annotator population. Because every response of at most
--max_length tokens is listed, KL to pi*_beta, the duality gap and
exploitability are exact. --data_parallel=N splits each step's batch over N
devices (parameters replicated, gradients all-reduced); --model_parallel=M
splits each run's transformer parameters over M devices (Megatron style:
heads, MLP width and vocabulary); --dtype=bfloat16 runs the transformer in
bfloat16 (log-probabilities, the optimizer and the exact evaluation stay in
float32). Writes config.json, metrics.csv, samples.jsonl, final_policy.npy,
responses.npy, equilibrium.npy, game.npz, manifest.json and summary.json
into --output_dir (see README.md).
"""

import time

import jax
from absl import app, flags

from experiments import common
from nash_jax import experiment

flags.DEFINE_string('algorithm', experiment.LMConfig().algorithm,
                    'Sampled algorithm: ' +
                    ', '.join(common.SAMPLED_ALGORITHM_NAMES) + '; baselines: ' +
                    ', '.join(common.BASELINE_NAMES) + '.')
flags.DEFINE_multi_string(
    'sweep', [], 'NAME=V1,V2,...: run every combination of these values '
    '(repeat the flag for a grid) with all seeds in one compiled call; NAME '
    'is one of ' + ', '.join(experiment.LM_SWEEPABLE[:-1]) + '. Each cell '
    'is written to OUTPUT_DIR/<name>=<value>_.../ and OUTPUT_DIR/sweep.csv '
    'summarizes the cells.')
common.define_settings(experiment.LMConfig)
common.define_multihost_flags()


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  common.start_jax(flags.FLAGS.dtype)
  try:
    experiment.lock_output_dir(flags.FLAGS.output_dir, only_existing=True)
    config = common.config_from_settings(experiment.LMConfig,
                                         algorithm=flags.FLAGS.algorithm)
    experiment.check_used([config], common.explicit_settings(
        experiment.LMConfig))
    cells = None
    if flags.FLAGS.sweep:
      grid = experiment.parse_sweep(flags.FLAGS.sweep,
                                    experiment.LM_SWEEPABLE[:-1])
      cells = experiment.validate_lm_sweep(config, grid)
    else:
      config = experiment.validate_lm(config)
    experiment.lock_output_dir(config.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  start = time.time()
  if cells is None:
    results = experiment.run_lm([config])
    experiment.write_lm_results(results[0])
    if jax.process_index() == 0:
      print(experiment.format_table(results[0]))
      print(f'wrote {config.output_dir} ({time.time() - start:.1f}s)')
    return
  results = experiment.run_lm([c for _, c in cells], config.output_dir,
                              checkpoint_every=config.checkpoint_every)
  common.report_sweep(cells, results, config.output_dir, start,
                       experiment.write_lm_results)


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
