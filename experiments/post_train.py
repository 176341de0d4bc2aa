r"""Post-trains a Hugging Face checkpoint with an NLHF algorithm: prompts
from a JSONL file, preferences from an LLM judge, win rates and KL
estimated by sampling, the trained weights saved back in the same format.

  python -m experiments.post_train --model_dir=Qwen3-0.6B \
      --prompts=prompts.jsonl --algorithm=nash_prox --beta=0.1 \
      --num_steps=500 --output_dir=results/post_train

The checkpoint (a Qwen3, Llama or Qwen2 causal LM directory: config.json,
*.safetensors, tokenizer.json) is the reference pi_ref and every seed's
starting point (after --sft_steps of supervised fine-tuning on --sft_data,
if given). Each step generates two responses per prompt inside the
compiled step, asks the judge (--judge_dir, default the checkpoint itself)
which is better, and takes one optax step. Every --eval_every steps it
estimates the win rate against pi_ref under the judge (with its standard
error) and KL(pi || pi_ref) from --num_samples responses per prompt.
Writes config.json, metrics.csv, samples.jsonl, oracle.json,
reference.json (with SFT), final_model/seed_<s>/ (Hugging Face
checkpoints), manifest.json and summary.json into --output_dir (see
README.md). Rerunning the same command resumes from the last checkpoint.
"""

import time

import jax
from absl import app, flags

from experiments import common
from nash_jax import experiment
from nash_jax.experiment import post_train

flags.DEFINE_string('algorithm', post_train.PostTrainConfig().algorithm,
                    'Algorithm: ' + ', '.join(post_train.ALGORITHMS) + '.')
common.define_settings(post_train.PostTrainConfig)
common.define_multihost_flags()


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  common.start_jax(flags.FLAGS.dtype)
  try:
    experiment.lock_output_dir(flags.FLAGS.output_dir, only_existing=True)
    config = common.config_from_settings(post_train.PostTrainConfig,
                                         algorithm=flags.FLAGS.algorithm)
    experiment.check_used([config], common.explicit_settings(
        post_train.PostTrainConfig))
    config, loaded = post_train.validate_post_train(config)
    experiment.lock_output_dir(config.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  start = time.time()
  results = post_train.run_post_train(config, loaded)
  post_train.write_post_train_results(results)
  if jax.process_index() == 0:
    print(experiment.format_table(results))
    print(f'wrote {config.output_dir} ({time.time() - start:.1f}s)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
