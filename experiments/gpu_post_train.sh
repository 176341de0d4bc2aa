#!/usr/bin/env bash
# experiments.post_train on a randomly initialized checkpoint of a real
# architecture (default: Qwen3-0.6B's shapes), for step time and memory on
# a machine with no model hub (README.md, "Post-training a checkpoint").
# Usage: OUT=dir [LAYERS=28 D=1024 HEADS=16 KV=8 HEAD_DIM=128 MLP=3072
#        VOCAB=151936 BATCH=16 LENGTH=32 STEPS=20] experiments/gpu_post_train.sh
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-results/gpu_post_train}
WORK=${WORK:-/tmp/post_train_work}
mkdir -p "$OUT" "$WORK"
python3 - "$WORK" <<PY
import json, sys, time
import jax, numpy as np, tokenizers
from nash_jax import hf
from nash_jax.policies import sequence, transformer
work = sys.argv[1]
start = time.time()
config = transformer.TransformerConfig(
    vocab_size=${VOCAB:-151936}, d_model=${D:-1024}, num_layers=${LAYERS:-28},
    num_heads=${HEADS:-16}, num_kv_heads=${KV:-8}, head_dim=${HEAD_DIM:-128},
    mlp_dim=${MLP:-3072}, rope_theta=1e6, tie_embeddings=True, qk_norm=True,
    param_dtype='bfloat16')
params = transformer.init_params(jax.random.PRNGKey(0), config)
eos = config.vocab_size - 1
hf.save_checkpoint(f'{work}/model', config, params,
                   token_ids=sequence.full_vocabulary(eos), overwrite=True)
# A word-level tokenizer over the whole vocabulary: w0, w1, ...
vocab = {f'w{i}': i for i in range(config.vocab_size)}
tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, 'w0'))
tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
tok.save(f'{work}/model/tokenizer.json')
rng = np.random.default_rng(0)
with open(f'{work}/prompts.jsonl', 'w') as f:
  for _ in range(16):
    words = rng.integers(10, 1000, size=int(rng.integers(8, 24)))
    f.write(json.dumps({'prompt': ' '.join(f'w{w}' for w in words)}) + '\n')
json.dump({'prefix': 'w1', 'marker_first': 'w2', 'marker_second': 'w3',
           'suffix': 'w4', 'answer_first': 'w5', 'answer_second': 'w6'},
          open(f'{work}/template.json', 'w'))
n = sum(a.size for a in jax.tree.leaves(params))
print(f'checkpoint: {n / 1e6:.1f}M parameters written in '
      f'{time.time() - start:.1f}s', flush=True)
PY
python3 -m experiments.post_train --model_dir="$WORK/model" \
  --prompts="$WORK/prompts.jsonl" --judge_template="$WORK/template.json" \
  --dtype=bfloat16 --algorithm=nash_prox --batch_size="${BATCH:-16}" \
  --max_length="${LENGTH:-32}" --num_samples=2 --num_steps="${STEPS:-20}" \
  --eval_every="${EVAL:-10}" --checkpoint_every=0 \
  --output_dir="$WORK/run" 2>&1 | tee "$OUT/post_train.log"
for f in summary.json metrics.csv manifest.json config.json; do
  cp "$WORK/run/$f" "$OUT/" 2>/dev/null
done
ls -la "$WORK/run/final_model/seed_0" 2>&1 | tee -a "$OUT/post_train.log"
