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

from absl import app

from experiments import common
from nash_jax.tasks import post_train

common.define_task_flags(post_train.TASK)

if __name__ == '__main__':
  app.run(common.task_main(post_train.TASK), flags_parser=common.parse_flags)
