#!/usr/bin/env bash
# The benchmarks on a GPU machine, in one call (BENCHMARKS.md, "GPU").
# Usage: OUT=dir experiments/gpu_benchmarks.sh   (from the repository root)
# Wheels in .whl/ (trl, datasets, dill, multiprocess) are installed first
# where the machine has no registry; every part runs under its own timeout
# so that one failure leaves the others' results.
set -u
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 - <<'PY'
import importlib.metadata as m
print({n: m.version(n) for n in ('jax', 'jaxlib', 'flax', 'optax', 'chex',
      'orbax-checkpoint', 'torch', 'transformers', 'trl', 'datasets',
      'pyarrow', 'fsspec', 'tokenizers', 'safetensors')})
PY
timeout "${TABULAR_S:-230}" python3 -m experiments.benchmark \
  --sizes=100,1000,4000 --seeds=1,16,256 --blocks=1,16,64,256 --memory=false \
  --seconds=0.05 --repeats=2 --matmul_size=8192 --bandwidth_mib=4096 \
  --output="$OUT/benchmark_gpu.csv" 2>&1 | tee "$OUT/benchmark_gpu.log"
timeout "${LM_S:-230}" python3 -m experiments.benchmark_lm --trl=auto \
  --trl_threads=0 --matmul_size=8192 --output="$OUT/benchmark_lm_gpu.jsonl" \
  2>&1 | tee "$OUT/benchmark_lm_gpu.log"
