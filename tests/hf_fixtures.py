"""Tiny random Hugging Face decoder checkpoints (Qwen3, Llama 3, Qwen2).

Shared by tests/test_hf.py (which loads them with nash_jax) and
scripts/hf_golden.py (which loads them with Hugging Face transformers in a
separate PyTorch environment and records the golden log-probabilities in
tests/data/hf_golden.json). Imports numpy, ml_dtypes, safetensors and
tokenizers only: no JAX, no torch.

A checkpoint directory holds what a hub download holds: config.json,
generation_config.json, tokenizer.json, tokenizer_config.json and the
weights as *.safetensors (the Qwen3 one in two shards with
model.safetensors.index.json, stored in bfloat16 like the real Qwen3; the
others in one float32 model.safetensors). Every weight comes from
``numpy.random.default_rng(seed)`` in a fixed order, so the same function
writes the same bytes on every machine; :func:`digest` fingerprints the
tensors, and the golden file records it.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = ('the', 'a', 'cat', 'dog', 'sat', 'ran', 'on', 'under', 'mat', 'log',
         'and', 'then', 'it', 'was', 'red', 'blue', 'big', 'small', 'one',
         'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine',
         'ten', 'yes', 'no', 'why', 'how', 'good', 'bad', 'answer',
         'question', 'is', 'not', 'very', 'quite', '.', ',', '?', '!')
UNK = '<unk>'
FIRST_WORD_ID = 1                    # 0 is <unk>, then the words

QWEN_SPECIALS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>')
LLAMA_SPECIALS = ('<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>')


def _vocabulary(arch: str) -> list[str]:
  specials = LLAMA_SPECIALS if arch == 'llama' else QWEN_SPECIALS
  tokens = [UNK, *WORDS, *specials]
  if arch == 'llama':   # Llama 3 lists reserved specials up to vocab_size
    tokens += [f'<|reserved_special_token_{i}|>' for i in range(8)]
  return tokens


def token_id(arch: str, token: str) -> int:
  return _vocabulary(arch).index(token)


def _hf_config(arch: str) -> dict:
  """config.json as the hub has it (transformers 4.x field names)."""
  if arch == 'qwen3':
    endoftext, im_end = (token_id(arch, t) for t in
                         ('<|endoftext|>', '<|im_end|>'))
    return {
        'architectures': ['Qwen3ForCausalLM'], 'model_type': 'qwen3',
        'vocab_size': 64,          # more rows than the tokenizer (as Qwen3)
        'hidden_size': 48, 'intermediate_size': 96, 'num_hidden_layers': 2,
        'num_attention_heads': 4, 'num_key_value_heads': 2,
        'head_dim': 16,            # != hidden_size / num_attention_heads
        'hidden_act': 'silu', 'max_position_embeddings': 128,
        'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0,
        'rope_scaling': None, 'tie_word_embeddings': False,
        'attention_bias': False, 'attention_dropout': 0.0,
        'use_sliding_window': False, 'sliding_window': None,
        'max_window_layers': 2, 'initializer_range': 0.02,
        'use_cache': True, 'torch_dtype': 'bfloat16',
        'bos_token_id': endoftext, 'eos_token_id': im_end,
        'transformers_version': '4.51.0'}
  if arch == 'llama':
    bos, eos = (token_id(arch, t) for t in
                ('<|begin_of_text|>', '<|end_of_text|>'))
    return {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
        'vocab_size': len(_vocabulary(arch)),
        'hidden_size': 128, 'intermediate_size': 256,
        'num_hidden_layers': 2, 'num_attention_heads': 4,
        'num_key_value_heads': 2, 'head_dim': 32, 'hidden_act': 'silu',
        'max_position_embeddings': 256, 'rms_norm_eps': 1e-05,
        'rope_theta': 500000.0,
        # Wavelengths 2 pi theta^(2i/H) = 6.3, 14.3, 32.4, 73.7, ...: with
        # C = 48 band 0-1 is kept (< C/2 = 24), band 2 is on the ramp and
        # bands 3+ (> C = 48) are divided by 8, at every position.
        'rope_scaling': {'factor': 8.0, 'low_freq_factor': 1.0,
                         'high_freq_factor': 2.0,
                         'original_max_position_embeddings': 48,
                         'rope_type': 'llama3'},
        'tie_word_embeddings': True, 'attention_bias': False,
        'attention_dropout': 0.0, 'mlp_bias': False, 'pretraining_tp': 1,
        'initializer_range': 0.02, 'use_cache': True,
        'torch_dtype': 'float32', 'bos_token_id': bos, 'eos_token_id': eos,
        'transformers_version': '4.45.0'}
  if arch == 'qwen2':
    endoftext = token_id(arch, '<|endoftext|>')
    return {
        'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2',
        'vocab_size': 64, 'hidden_size': 32, 'intermediate_size': 64,
        'num_hidden_layers': 2, 'num_attention_heads': 4,
        'num_key_value_heads': 1, 'hidden_act': 'silu',
        'max_position_embeddings': 128, 'rms_norm_eps': 1e-06,
        'rope_theta': 1000000.0, 'tie_word_embeddings': True,
        'use_sliding_window': False, 'sliding_window': None,
        'max_window_layers': 2, 'attention_dropout': 0.0,
        'initializer_range': 0.02, 'use_cache': True,
        'torch_dtype': 'float32', 'bos_token_id': endoftext,
        'eos_token_id': endoftext, 'transformers_version': '4.43.1'}
  raise ValueError(f'unknown fixture architecture {arch!r}')


ARCHS = ('qwen3', 'llama', 'qwen2')
SEEDS = {'qwen3': 3, 'llama': 5, 'qwen2': 7}
# Sequence lengths: the longest Llama one passes the original context 48.
LENGTHS = {'qwen3': (6, 21, 40), 'llama': (5, 24, 64), 'qwen2': (8, 30)}


def _generation_config(arch: str) -> dict:
  cfg = _hf_config(arch)
  if arch == 'qwen3':     # as Qwen3 instruct: ends at <|im_end|> or EOT
    return {'bos_token_id': cfg['bos_token_id'],
            'eos_token_id': [cfg['eos_token_id'], cfg['bos_token_id']],
            'pad_token_id': cfg['bos_token_id'],
            'transformers_version': cfg['transformers_version']}
  if arch == 'llama':     # as Llama 3 instruct: no pad token
    return {'bos_token_id': cfg['bos_token_id'],
            'eos_token_id': [cfg['eos_token_id'],
                             token_id(arch, '<|eot_id|>')],
            'transformers_version': cfg['transformers_version']}
  return {'bos_token_id': cfg['bos_token_id'],
          'eos_token_id': cfg['eos_token_id'],
          'transformers_version': cfg['transformers_version']}


def hf_config(arch: str) -> dict:
  return _hf_config(arch)


def tensors(arch: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors by Hugging Face name, in the stored dtype.

  Linear weights are ``[out, in]`` with standard deviation ``in^-1/2``;
  the embedding (and head) ``2 D^-1/2``, so that logits spread over a few
  nats; norm scales ``1 + 0.2 N(0, 1)`` and Qwen2's biases ``0.1 N(0, 1)``
  (neither 1 nor 0, so a dropped norm or bias shows in the logits).
  """
  cfg = _hf_config(arch)
  rng = np.random.default_rng(SEEDS[arch])
  d, f, v = cfg['hidden_size'], cfg['intermediate_size'], cfg['vocab_size']
  n, k = cfg['num_attention_heads'], cfg['num_key_value_heads']
  h = cfg.get('head_dim') or d // n

  def normal(shape, std):
    return (std * rng.standard_normal(shape)).astype(np.float32)

  def scale(size):
    return (1 + 0.2 * rng.standard_normal(size)).astype(np.float32)

  out = {'model.embed_tokens.weight': normal((v, d), 2 * d**-0.5)}
  for i in range(cfg['num_hidden_layers']):
    p = f'model.layers.{i}.'
    out[p + 'input_layernorm.weight'] = scale(d)
    out[p + 'self_attn.q_proj.weight'] = normal((n * h, d), d**-0.5)
    out[p + 'self_attn.k_proj.weight'] = normal((k * h, d), d**-0.5)
    out[p + 'self_attn.v_proj.weight'] = normal((k * h, d), d**-0.5)
    out[p + 'self_attn.o_proj.weight'] = normal((d, n * h), (n * h)**-0.5)
    if arch == 'qwen2':
      out[p + 'self_attn.q_proj.bias'] = normal((n * h,), 0.1)
      out[p + 'self_attn.k_proj.bias'] = normal((k * h,), 0.1)
      out[p + 'self_attn.v_proj.bias'] = normal((k * h,), 0.1)
    if arch == 'qwen3':
      out[p + 'self_attn.q_norm.weight'] = scale(h)
      out[p + 'self_attn.k_norm.weight'] = scale(h)
    out[p + 'post_attention_layernorm.weight'] = scale(d)
    out[p + 'mlp.gate_proj.weight'] = normal((f, d), d**-0.5)
    out[p + 'mlp.up_proj.weight'] = normal((f, d), d**-0.5)
    out[p + 'mlp.down_proj.weight'] = normal((d, f), f**-0.5)
  out['model.norm.weight'] = scale(d)
  if not cfg['tie_word_embeddings']:
    out['lm_head.weight'] = normal((v, d), 2 * d**-0.5)
  if cfg['torch_dtype'] == 'bfloat16':
    out = {name: a.astype(ml_dtypes.bfloat16) for name, a in out.items()}
  return out


def digest(named: dict) -> str:
  """SHA-256 of the tensors (names, dtypes, shapes and bytes, by name)."""
  sha = hashlib.sha256()
  for name in sorted(named):
    a = np.ascontiguousarray(named[name])
    sha.update(f'{name}|{a.dtype.name}|{list(a.shape)}|'.encode())
    sha.update(a.tobytes())
  return sha.hexdigest()


def sequences(arch: str) -> list[list[int]]:
  """Fixed token sequences of word tokens (no special token), for the
  per-token log-probabilities compared against transformers."""
  rng = np.random.default_rng(100 + SEEDS[arch])
  last = FIRST_WORD_ID + len(WORDS)
  return [rng.integers(FIRST_WORD_ID, last, size=n).tolist()
          for n in LENGTHS[arch]]


def tokenizer(arch: str) -> Tokenizer:
  """A word-level tokenizer over WORDS with the family's special tokens
  (the Llama one adds ``<|begin_of_text|>`` in front, as Llama 3's does)."""
  vocab = {t: i for i, t in enumerate(_vocabulary(arch))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  specials = LLAMA_SPECIALS if arch == 'llama' else QWEN_SPECIALS
  tok.add_special_tokens(list(specials))
  if arch == 'llama':
    bos = '<|begin_of_text|>'
    tok.post_processor = processors.TemplateProcessing(
        single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
        special_tokens=[(bos, vocab[bos])])
  return tok


def _tokenizer_config(arch: str) -> dict:
  if arch == 'llama':
    return {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>',
            'model_max_length': 256, 'tokenizer_class':
            'PreTrainedTokenizerFast'}
  return {'bos_token': None, 'eos_token': '<|im_end|>',
          'pad_token': '<|endoftext|>', 'model_max_length': 128,
          'tokenizer_class': 'Qwen2Tokenizer'}


def _write_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)
    f.write('\n')


def write_checkpoint(path, arch: str, config_changes: dict | None = None):
  """Writes the ``arch`` checkpoint into the directory ``path`` (created);
  ``config_changes`` edits config.json (a value ``None`` deletes the key).
  Returns ``path``."""
  os.makedirs(path, exist_ok=True)
  cfg = _hf_config(arch)
  for key, value in (config_changes or {}).items():
    if value is None:
      cfg.pop(key, None)
    else:
      cfg[key] = value
  _write_json(os.path.join(path, 'config.json'), cfg)
  _write_json(os.path.join(path, 'generation_config.json'),
              _generation_config(arch))
  _write_json(os.path.join(path, 'tokenizer_config.json'),
              _tokenizer_config(arch))
  tokenizer(arch).save(os.path.join(path, 'tokenizer.json'))
  named = tensors(arch)
  metadata = {'format': 'pt'}
  if arch != 'qwen3':
    save_file(named, os.path.join(path, 'model.safetensors'), metadata)
    return path
  # Two shards and an index, as a hub download of a larger model.
  names = sorted(named)
  split = [n for n in names if n.startswith('model.layers.1.')
           or not n.startswith('model.layers.')
           and n != 'model.embed_tokens.weight']
  shards = {'model-00001-of-00002.safetensors':
            [n for n in names if n not in split],
            'model-00002-of-00002.safetensors': split}
  weight_map, total = {}, 0
  for file, keys in shards.items():
    save_file({n: named[n] for n in keys}, os.path.join(path, file),
              metadata)
    for n in keys:
      weight_map[n] = file
      total += named[n].nbytes
  _write_json(os.path.join(path, 'model.safetensors.index.json'),
              {'metadata': {'total_size': total}, 'weight_map': weight_map})
  return path
