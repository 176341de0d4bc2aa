r"""Runs one NLHF algorithm on a tabular preference game, many seeds at once.

  python -m experiments.matrix_game --algorithm=nash_mp --beta=0.1 \
      --num_actions=20 --num_seeds=8 --output_dir=results/nash_mp
  python -m experiments.matrix_game --mode=sampled --algorithm=nash_prox \
      --policy=loglinear --game=annotators --batch_size=64

Writes config.json, metrics.csv, final_policy.npy, equilibrium.npy and
summary.json into --output_dir (see README.md), prints a progress line per
evaluation and a final table.
"""

from absl import app

from experiments import common
from nash_jax.tasks import tabular

common.define_task_flags(tabular.TASK, output_dir='results/matrix_game',
                         num_steps=1000, eval_every=10, num_actions=20,
                         num_seeds=1)

if __name__ == '__main__':
  app.run(common.task_main(tabular.TASK), flags_parser=common.parse_flags)
