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

from absl import app

from experiments import common
from nash_jax.tasks import token_game

common.define_task_flags(token_game.TASK)

if __name__ == '__main__':
  app.run(common.task_main(token_game.TASK), flags_parser=common.parse_flags)
