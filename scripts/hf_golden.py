"""Golden log-probabilities of the tiny Hugging Face checkpoints, from
Hugging Face transformers in PyTorch (an implementation independent of
nash_jax), for tests/test_hf.py.

Writes each checkpoint of tests/hf_fixtures.py (Qwen3, Llama 3 with llama3
RoPE scaling, Qwen2) to a temporary directory, loads it with
``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)`` (eager
attention) and records, for the fixed token sequences of the fixture, the
per-token log-probabilities ``log p(s_{t+1} | s_{<=t})``, the whole
log-softmax at the last position, a summary of the logits, the RoPE
frequencies (``inv_freq``, after any scaling), the tensors' digest and the
transformers and torch versions.

Run it in a separate environment with torch (never nash_jax's .venv)::

  python -m venv /tmp/hfref
  /tmp/hfref/bin/pip install torch==2.13.0 transformers==5.24.0 \\
      safetensors==0.8.0 tokenizers==0.23.3 ml_dtypes==0.6.0 numpy
  /tmp/hfref/bin/python scripts/hf_golden.py   # tests/data/hf_golden.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import hf_fixtures  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402


def golden(arch: str, directory: str) -> dict:
  hf_fixtures.write_checkpoint(directory, arch)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, dtype=torch.float32, attn_implementation='eager')
  model.eval()
  token_log_probs, last, summaries = [], [], []
  for seq in hf_fixtures.sequences(arch):
    with torch.no_grad():
      logits = model(torch.tensor([seq])).logits[0]           # [T, V] f32
    log_softmax = torch.log_softmax(logits.double(), dim=-1)
    picked = log_softmax[torch.arange(len(seq) - 1), torch.tensor(seq[1:])]
    token_log_probs.append(picked.tolist())
    last.append(log_softmax[-1].tolist())
    summaries.append({'mean': logits.double().mean().item(),
                      'std': logits.double().std().item(),
                      'min': logits.min().item(), 'max': logits.max().item()})
  return {'digest': hf_fixtures.digest(hf_fixtures.tensors(arch)),
          'model_class': type(model).__name__,
          'rope_parameters': model.config.rope_parameters,
          'inv_freq': model.model.rotary_emb.inv_freq.tolist(),
          'sequences': hf_fixtures.sequences(arch),
          'token_log_probs': token_log_probs,
          'last_log_softmax': last,
          'logits_summary': summaries}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', default=os.path.join(
      ROOT, 'tests', 'data', 'hf_golden.json'))
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(1)
  result = {
      'generated_by': 'scripts/hf_golden.py',
      'transformers_version': transformers.__version__,
      'torch_version': torch.__version__,
      'dtype': 'float32',
      'archs': {}}
  for arch in hf_fixtures.ARCHS:
    with tempfile.TemporaryDirectory() as directory:
      result['archs'][arch] = golden(arch, directory)
      print(arch, result['archs'][arch]['model_class'],
            result['archs'][arch]['logits_summary'][-1])
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  print('wrote', args.output)


if __name__ == '__main__':
  main()
