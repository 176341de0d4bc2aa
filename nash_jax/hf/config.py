"""config.json <-> :class:`~nash_jax.policies.transformer.TransformerConfig`.

:func:`transformer_config` reads the architecture of a Hugging Face
``config.json`` (``model_type`` qwen3, llama or qwen2; transformers 4's
``rope_theta`` / ``rope_scaling`` or transformers 5's ``rope_parameters``)
and refuses what the decoder here cannot express; :func:`hf_config_fields`
writes it back. :func:`declared_token_ids` reads the beginning, end and
padding ids of config.json and ``generation_config.json`` (the latter wins).
"""

from __future__ import annotations

import dataclasses
import math

from nash_jax.errors import ConfigError
from nash_jax.hf.files import refuse
from nash_jax.policies.transformer import (
  RopeScaling,
  TransformerConfig,
  validate_transformer_config,
)

MODEL_TYPES = ('qwen3', 'llama', 'qwen2')
ARCHITECTURES = {'qwen3': 'Qwen3ForCausalLM', 'llama': 'LlamaForCausalLM',
                 'qwen2': 'Qwen2ForCausalLM'}
# torch dtype names of config.json (``torch_dtype`` or, transformers 5,
# ``dtype``), as numpy dtype names.
TORCH_DTYPES = {'float32': 'float32', 'float': 'float32',
                'bfloat16': 'bfloat16', 'float16': 'float16',
                'half': 'float16', 'float64': 'float64',
                'double': 'float64'}
_DEFAULT_ROPE_THETA = 10_000.0   # transformers' default_theta


def _rope(hf: dict, path, flag) -> tuple[float, RopeScaling | None]:
  """``(theta, scaling)`` from transformers 4's ``rope_theta`` and
  ``rope_scaling`` or transformers 5's ``rope_parameters``."""
  params = hf.get('rope_parameters')
  if params is not None and not isinstance(params, dict):
    refuse(flag, path, f'rope_parameters must be an object, got {params!r}')
  scaling = dict(params or hf.get('rope_scaling') or {})
  theta = scaling.pop('rope_theta', None)
  if theta is None:
    theta = hf.get('rope_theta', _DEFAULT_ROPE_THETA)
  if not (isinstance(theta, (int, float)) and not isinstance(theta, bool)
          and math.isfinite(theta) and theta > 0):
    refuse(flag, path, f'rope_theta must be a positive number, got '
           f'{theta!r}')
  rope_type = scaling.pop('rope_type', scaling.pop('type', 'default'))
  partial = scaling.pop('partial_rotary_factor',
                        hf.get('partial_rotary_factor', 1.0))
  if partial != 1.0:
    refuse(flag, path, f'partial_rotary_factor={partial!r} is not '
           f'supported (only 1.0)')
  if rope_type == 'default':
    return float(theta), None
  if rope_type != 'llama3':
    refuse(flag, path, f'rope type {rope_type!r} is not supported '
           f"(supported: 'default', 'llama3')")
  fields = ('factor', 'low_freq_factor', 'high_freq_factor',
            'original_max_position_embeddings')
  missing = [k for k in fields if k not in scaling]
  if 'original_max_position_embeddings' in missing and (
      'max_position_embeddings' in hf):   # transformers' fallback
    scaling['original_max_position_embeddings'] = hf[
        'max_position_embeddings']
    missing.remove('original_max_position_embeddings')
  if missing:
    refuse(flag, path, f'llama3 rope scaling lacks {", ".join(missing)}')
  rope_scaling = RopeScaling(
      'llama3', float(scaling['factor']), float(scaling['low_freq_factor']),
      float(scaling['high_freq_factor']),
      scaling['original_max_position_embeddings'])
  try:
    validate_transformer_config(TransformerConfig(
        vocab_size=1, d_model=2, num_heads=1, num_kv_heads=1,
        rope_scaling=rope_scaling))
  except ConfigError as e:
    refuse(flag, path, str(e).removeprefix('--'))
  return float(theta), rope_scaling


def transformer_config(hf: dict, dtype: str, path='config.json',
                       flag: str = 'model_dir') -> TransformerConfig:
  """The :class:`TransformerConfig` of a Hugging Face ``config.json`` dict
  (``model_type`` qwen3, llama or qwen2) with parameters in ``dtype``.
  Raises :class:`ConfigError` naming ``path`` for what the architecture
  here cannot express (sliding windows, MLP or output biases, other
  activations or RoPE types)."""
  model_type = hf.get('model_type')
  if model_type not in MODEL_TYPES:
    refuse(flag, path, f'model_type {model_type!r} is not supported '
           f'(supported: {", ".join(MODEL_TYPES)})')
  required = ('vocab_size', 'hidden_size', 'num_hidden_layers',
              'num_attention_heads', 'intermediate_size')
  missing = [k for k in required if k not in hf]
  if missing:
    refuse(flag, path, f'lacks {", ".join(missing)}')
  act = hf.get('hidden_act', 'silu')
  if act != 'silu':
    refuse(flag, path, f"hidden_act {act!r} is not supported (only 'silu')")
  if hf.get('use_sliding_window'):
    refuse(flag, path, 'use_sliding_window=true is not supported')
  if hf.get('mlp_bias'):
    refuse(flag, path, 'mlp_bias=true is not supported')
  if model_type != 'qwen2' and hf.get('attention_bias'):
    refuse(flag, path, 'attention_bias=true is not supported')
  layer_types = hf.get('layer_types')
  if layer_types and any(t != 'full_attention' for t in layer_types):
    refuse(flag, path, 'only full_attention layers are supported')
  theta, scaling = _rope(hf, path, flag)
  num_heads = hf['num_attention_heads']
  num_kv_heads = hf.get('num_key_value_heads') or num_heads
  config = TransformerConfig(
      vocab_size=hf['vocab_size'], d_model=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'], num_heads=num_heads,
      num_kv_heads=num_kv_heads, head_dim=hf.get('head_dim'),
      mlp_dim=hf['intermediate_size'], rope_theta=theta,
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      norm_eps=float(hf.get('rms_norm_eps', 1e-6)), param_dtype=dtype,
      qk_norm=model_type == 'qwen3', rope_scaling=scaling,
      qkv_bias=model_type == 'qwen2')
  try:
    validate_transformer_config(config)
  except ConfigError as e:
    refuse(flag, path, str(e).removeprefix('--'))
  return canonical(config)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def hf_model_type(config: TransformerConfig) -> str:
  """The Hugging Face ``model_type`` of ``config``: qwen3 with
  ``qk_norm``, qwen2 with ``qkv_bias``, else llama (both refused)."""
  if config.qk_norm and config.qkv_bias:
    raise ConfigError('qkv_bias', 'no supported Hugging Face model type has '
                      'both qk_norm and qkv_bias')
  if config.qk_norm:
    return 'qwen3'
  return 'qwen2' if config.qkv_bias else 'llama'


def hf_config_fields(config: TransformerConfig, dtype: str) -> dict:
  """The architecture fields of config.json for ``config`` (transformers 4
  names, which transformers 5 reads too), weights stored in ``dtype``."""
  fields = {
      'model_type': hf_model_type(config),
      'vocab_size': config.vocab_size, 'hidden_size': config.d_model,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_size, 'intermediate_size': config.mlp_dim,
      'hidden_act': 'silu', 'rms_norm_eps': config.norm_eps,
      'rope_theta': config.rope_theta,
      'rope_scaling': (None if config.rope_scaling is None
                       else dataclasses.asdict(config.rope_scaling)),
      'tie_word_embeddings': config.tie_embeddings,
      'torch_dtype': dtype}
  if fields['model_type'] == 'llama':
    fields.update(attention_bias=False, mlp_bias=False)
  elif fields['model_type'] == 'qwen3':
    fields.update(attention_bias=False, use_sliding_window=False)
  else:
    fields.update(use_sliding_window=False)
  return fields


def declared_token_ids(hf: dict, generation: dict, vocab_size: int,
                       path, flag: str):
  """``(bos, eos_ids, pad)`` declared by config.json ``hf`` and
  generation_config.json ``generation`` (``{}`` when absent; its ids win):
  ``eos_ids`` the end tokens without repeats, first the main one (empty if
  none is declared), ``bos`` and ``pad`` an id or ``None``. An id outside
  ``[0, vocab_size)`` is refused naming ``path``."""
  def ids_of(value, what):
    values = value if isinstance(value, list) else [value]
    if not all(_is_int(i) and 0 <= i < vocab_size for i in values):
      refuse(flag, path, f'{what} must be token ids in [0, {vocab_size}), '
              f'got {value!r}')
    return tuple(values)

  eos = generation.get('eos_token_id', hf.get('eos_token_id'))
  eos_ids = () if eos is None else tuple(
      dict.fromkeys(ids_of(eos, 'eos_token_id')))
  pad = generation.get('pad_token_id', hf.get('pad_token_id'))
  bos = generation.get('bos_token_id', hf.get('bos_token_id'))
  pad = None if pad is None else ids_of(pad, 'pad_token_id')[0]
  bos = None if bos is None else ids_of(bos, 'bos_token_id')[0]
  return bos, eos_ids, pad


def canonical(config: TransformerConfig) -> TransformerConfig:
  """``config`` with ``head_dim=None`` where it is ``d_model /
  num_heads`` (two spellings of one architecture)."""
  if config.head_dim is not None and (
      config.head_dim * config.num_heads == config.d_model):
    return dataclasses.replace(config, head_dim=None)
  return config
