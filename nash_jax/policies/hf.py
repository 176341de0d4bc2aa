"""Hugging Face decoder checkpoints: load, save, tokenize.

A local Hugging Face model directory (what a hub download of a Qwen3,
Llama 3 or Qwen2 causal LM holds: ``config.json``, ``*.safetensors``, with
``model.safetensors.index.json`` when sharded, ``tokenizer.json`` and
perhaps ``tokenizer_config.json`` / ``generation_config.json``) becomes the
:class:`~nash_jax.policies.transformer.TransformerConfig` and params pytree
of :mod:`nash_jax.policies.transformer`, and back:

* :func:`load_checkpoint` -> ``(config, params, info)``;
  :func:`save_checkpoint` writes the same layout (one ``model.safetensors``)
  into a fresh directory, renamed into place only once complete.
* :func:`load_tokenizer`, :func:`encode_prompts` (left-padded
  :class:`~nash_jax.environments.core.TokenContexts`),
  :func:`decode_responses` and :func:`read_prompts` (a JSONL prompt file).

The key map (torch ``Linear`` weights are ``[out, in]``; ``N`` query heads,
``K`` key-value heads of ``H`` features, ``D`` model width, ``F`` MLP
width, ``V`` vocabulary; ``.T`` a transpose)::

  model.embed_tokens.weight [V, D]          embedder/embedding [V, D]
  model.layers.{i}.input_layernorm.weight   layer_{i}/attn_norm/scale
  ...self_attn.q_proj.weight [N H, D]       layer_{i}/attn/q/w = W.T -> [D, N, H]
  ...self_attn.{k,v}_proj.weight [K H, D]   layer_{i}/attn/{k,v}/w  [D, K, H]
  ...self_attn.{q,k,v}_proj.bias            layer_{i}/attn/{q,k,v}/b [N|K, H]
  ...self_attn.o_proj.weight [D, N H]       layer_{i}/attn/o/w = W.T -> [N, H, D]
  ...self_attn.{q,k}_norm.weight [H]        layer_{i}/attn/{q,k}_norm/scale
  ...post_attention_layernorm.weight        layer_{i}/mlp_norm/scale
  ...mlp.{gate,up}_proj.weight [F, D]       layer_{i}/mlp/{gate,up}/w = W.T
  ...mlp.down_proj.weight [D, F]            layer_{i}/mlp/down/w = W.T
  model.norm.weight                         final_norm/scale
  lm_head.weight [V, D]                     head/w = W.T   (untied only)

The flattening ``N H`` is head-major (``reshape``), as transformers' ``view(
..., -1, head_dim)``; query head ``n`` reads key-value head ``n // (N/K)``
in both. Old checkpoints' ``rotary_emb.inv_freq`` buffers are ignored
(recomputed from the config); any other unknown key, a missing key or a
wrong shape is refused. Every refusal is a :class:`ConfigError` whose one
line names the flag (``model_dir`` unless told) and the file.

Token ids (:attr:`CheckpointInfo.token_ids`): the end tokens are
``generation_config.json``'s ``eos_token_id`` (a list for instruct models)
or else ``config.json``'s; the padding token its ``pad_token_id`` or else
the first end token. The policy's distribution is the model's softmax over
the whole vocabulary, less the padding token where that is no end token
(:func:`nash_jax.policies.sequence.full_vocabulary`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies.sequence import (
  TokenIds,
  full_vocabulary,
  validate_token_ids,
)
from nash_jax.policies.transformer import (
  PARAM_DTYPES,
  RopeScaling,
  TransformerConfig,
  init_params,
  validate_transformer_config,
)

MODEL_TYPES = ('qwen3', 'llama', 'qwen2')
ARCHITECTURES = {'qwen3': 'Qwen3ForCausalLM', 'llama': 'LlamaForCausalLM',
                 'qwen2': 'Qwen2ForCausalLM'}
CONFIG_FILE = 'config.json'
INDEX_FILE = 'model.safetensors.index.json'
WEIGHTS_FILE = 'model.safetensors'
TOKENIZER_FILE = 'tokenizer.json'
GENERATION_CONFIG_FILE = 'generation_config.json'
# Files of a model directory that save_checkpoint does not copy (it writes
# its own config and weights).
_NOT_COPIED_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.h5',
                        '.msgpack', '.ckpt', '.gguf')
# torch dtype names of config.json (``torch_dtype`` or, transformers 5,
# ``dtype``) and safetensors dtype codes, as numpy dtype names.
_TORCH_DTYPES = {'float32': 'float32', 'float': 'float32',
                 'bfloat16': 'bfloat16', 'float16': 'float16',
                 'half': 'float16', 'float64': 'float64',
                 'double': 'float64'}
_DEFAULT_ROPE_THETA = 10_000.0   # transformers' default_theta


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """What :func:`load_checkpoint` read besides the weights.

  Attributes:
    model_dir: the directory read.
    model_type: 'qwen3', 'llama' or 'qwen2'.
    stored_dtype: the dtype of the stored weights ('bfloat16', 'float32',
      ...), as config.json's ``torch_dtype`` (or the embedding's).
    bos_id: the beginning-of-sequence id, or ``None``.
    eos_ids: the end tokens, first the main one (empty if none is
      declared).
    pad_id: the padding id, or ``None`` (none declared).
    hf_config: config.json as read (a dict; not compared or hashed).
  """

  model_dir: str
  model_type: str
  stored_dtype: str
  bos_id: int | None
  eos_ids: tuple[int, ...]
  pad_id: int | None
  hf_config: dict = dataclasses.field(compare=False, hash=False,
                                      repr=False)

  @property
  def token_ids(self) -> TokenIds:
    """The policy's ids over the whole vocabulary (module docstring);
    refused (:class:`ConfigError`) when the checkpoint declares no end
    token."""
    if not self.eos_ids:
      _refuse('model_dir', Path(self.model_dir) / CONFIG_FILE,
              f'declares no eos_token_id (nor does {GENERATION_CONFIG_FILE})'
              f'; a policy needs an end token')
    return full_vocabulary(self.eos_ids[0], self.pad_id, self.eos_ids[1:])


def _refuse(flag: str, path, message: str):
  raise ConfigError(flag, f'{path}: {message}')


def _read_json(path: Path, flag: str, what: str = 'a JSON object'):
  if not path.is_file():
    _refuse(flag, path, 'no such file')
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    _refuse(flag, path, f'not valid JSON (line {e.lineno}: {e.msg})')
  except (OSError, UnicodeDecodeError) as e:
    _refuse(flag, path, f'cannot be read ({e})')
  if not isinstance(value, dict):
    _refuse(flag, path, f'must hold {what}, got {type(value).__name__}')
  return value


# --- config.json <-> TransformerConfig ---------------------------------------

def _rope(hf: dict, path, flag) -> tuple[float, RopeScaling | None]:
  """``(theta, scaling)`` from transformers 4's ``rope_theta`` and
  ``rope_scaling`` or transformers 5's ``rope_parameters``."""
  params = hf.get('rope_parameters')
  if params is not None and not isinstance(params, dict):
    _refuse(flag, path, f'rope_parameters must be an object, got {params!r}')
  scaling = dict(params or hf.get('rope_scaling') or {})
  theta = scaling.pop('rope_theta', None)
  if theta is None:
    theta = hf.get('rope_theta', _DEFAULT_ROPE_THETA)
  if not (isinstance(theta, (int, float)) and not isinstance(theta, bool)
          and math.isfinite(theta) and theta > 0):
    _refuse(flag, path, f'rope_theta must be a positive number, got '
            f'{theta!r}')
  rope_type = scaling.pop('rope_type', scaling.pop('type', 'default'))
  partial = scaling.pop('partial_rotary_factor',
                        hf.get('partial_rotary_factor', 1.0))
  if partial != 1.0:
    _refuse(flag, path, f'partial_rotary_factor={partial!r} is not '
            f'supported (only 1.0)')
  if rope_type == 'default':
    return float(theta), None
  if rope_type != 'llama3':
    _refuse(flag, path, f'rope type {rope_type!r} is not supported '
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
    _refuse(flag, path, f'llama3 rope scaling lacks {", ".join(missing)}')
  rope_scaling = RopeScaling(
      'llama3', float(scaling['factor']), float(scaling['low_freq_factor']),
      float(scaling['high_freq_factor']),
      scaling['original_max_position_embeddings'])
  try:
    validate_transformer_config(TransformerConfig(
        vocab_size=1, d_model=2, num_heads=1, num_kv_heads=1,
        rope_scaling=rope_scaling))
  except ConfigError as e:
    _refuse(flag, path, str(e).removeprefix('--'))
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
    _refuse(flag, path, f'model_type {model_type!r} is not supported '
            f'(supported: {", ".join(MODEL_TYPES)})')
  required = ('vocab_size', 'hidden_size', 'num_hidden_layers',
              'num_attention_heads', 'intermediate_size')
  missing = [k for k in required if k not in hf]
  if missing:
    _refuse(flag, path, f'lacks {", ".join(missing)}')
  act = hf.get('hidden_act', 'silu')
  if act != 'silu':
    _refuse(flag, path, f"hidden_act {act!r} is not supported (only 'silu')")
  if hf.get('use_sliding_window'):
    _refuse(flag, path, 'use_sliding_window=true is not supported')
  if hf.get('mlp_bias'):
    _refuse(flag, path, 'mlp_bias=true is not supported')
  if model_type != 'qwen2' and hf.get('attention_bias'):
    _refuse(flag, path, 'attention_bias=true is not supported')
  layer_types = hf.get('layer_types')
  if layer_types and any(t != 'full_attention' for t in layer_types):
    _refuse(flag, path, 'only full_attention layers are supported')
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
    _refuse(flag, path, str(e).removeprefix('--'))
  return canonical(config)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _model_type(config: TransformerConfig) -> str:
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
      'model_type': _model_type(config),
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


# --- tensors -----------------------------------------------------------------

def hf_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor of the Hugging Face checkpoint of ``config`` and its
  shape (``lm_head.weight`` only when untied)."""
  d, n, k, h, f, v = (config.d_model, config.num_heads, config.num_kv_heads,
                      config.head_size, config.mlp_dim, config.vocab_size)
  shapes = {'model.embed_tokens.weight': (v, d), 'model.norm.weight': (d,)}
  for i in range(config.num_layers):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'input_layernorm.weight': (d,),
        p + 'post_attention_layernorm.weight': (d,),
        p + 'self_attn.q_proj.weight': (n * h, d),
        p + 'self_attn.k_proj.weight': (k * h, d),
        p + 'self_attn.v_proj.weight': (k * h, d),
        p + 'self_attn.o_proj.weight': (d, n * h),
        p + 'mlp.gate_proj.weight': (f, d),
        p + 'mlp.up_proj.weight': (f, d),
        p + 'mlp.down_proj.weight': (d, f)})
    if config.qk_norm:
      shapes[p + 'self_attn.q_norm.weight'] = (h,)
      shapes[p + 'self_attn.k_norm.weight'] = (h,)
    if config.qkv_bias:
      shapes[p + 'self_attn.q_proj.bias'] = (n * h,)
      shapes[p + 'self_attn.k_proj.bias'] = (k * h,)
      shapes[p + 'self_attn.v_proj.bias'] = (k * h,)
  if not config.tie_embeddings:
    shapes['lm_head.weight'] = (v, d)
  return shapes


def _key_map(config: TransformerConfig):
  """``(hf_name, path in params, to_ours, to_hf)`` for every tensor, with
  numpy functions between the two layouts."""
  d, n, k, h = (config.d_model, config.num_heads, config.num_kv_heads,
                config.head_size)
  same = (lambda a: a, lambda a: a)
  transpose = (lambda a: a.T, lambda a: a.T)

  def heads(count):                    # [count H, D] <-> [D, count, H]
    return (lambda a: a.T.reshape(d, count, h),
            lambda a: a.reshape(d, count * h).T)

  def bias(count):                     # [count H] <-> [count, H]
    return (lambda a: a.reshape(count, h), lambda a: a.reshape(count * h))

  out = (lambda a: a.T.reshape(n, h, d),           # [D, N H] <-> [N, H, D]
         lambda a: a.reshape(n * h, d).T)
  rows = [('model.embed_tokens.weight', ('embedder', 'embedding'), same),
          ('model.norm.weight', ('final_norm', 'scale'), same)]
  for i in range(config.num_layers):
    p, q = f'model.layers.{i}.', f'layer_{i}'
    rows += [
        (p + 'input_layernorm.weight', (q, 'attn_norm', 'scale'), same),
        (p + 'post_attention_layernorm.weight', (q, 'mlp_norm', 'scale'),
         same),
        (p + 'self_attn.q_proj.weight', (q, 'attn', 'q', 'w'), heads(n)),
        (p + 'self_attn.k_proj.weight', (q, 'attn', 'k', 'w'), heads(k)),
        (p + 'self_attn.v_proj.weight', (q, 'attn', 'v', 'w'), heads(k)),
        (p + 'self_attn.o_proj.weight', (q, 'attn', 'o', 'w'), out),
        (p + 'mlp.gate_proj.weight', (q, 'mlp', 'gate', 'w'), transpose),
        (p + 'mlp.up_proj.weight', (q, 'mlp', 'up', 'w'), transpose),
        (p + 'mlp.down_proj.weight', (q, 'mlp', 'down', 'w'), transpose)]
    if config.qk_norm:
      rows += [(p + 'self_attn.q_norm.weight', (q, 'attn', 'q_norm', 'scale'),
                same),
               (p + 'self_attn.k_norm.weight', (q, 'attn', 'k_norm', 'scale'),
                same)]
    if config.qkv_bias:
      rows += [(p + 'self_attn.q_proj.bias', (q, 'attn', 'q', 'b'), bias(n)),
               (p + 'self_attn.k_proj.bias', (q, 'attn', 'k', 'b'), bias(k)),
               (p + 'self_attn.v_proj.bias', (q, 'attn', 'v', 'b'), bias(k))]
  if not config.tie_embeddings:
    rows.append(('lm_head.weight', ('head', 'w'), transpose))
  return [(name, path, fns[0], fns[1]) for name, path, fns in rows]


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def params_from_hf(config: TransformerConfig, tensors) -> dict:
  """Our params pytree (jax arrays in ``config.param_dtype``) from
  Hugging Face tensors by name (numpy arrays, any float dtype; extra names
  such as a tied ``lm_head.weight`` are ignored). Raises ``KeyError`` for a
  missing name; shapes are checked by :func:`load_checkpoint`."""
  dtype = np.dtype(jnp.dtype(config.param_dtype))
  params = {}
  for name, path, to_ours, _ in _key_map(config):
    value = np.asarray(tensors[name])
    if value.dtype != dtype:
      value = value.astype(dtype)
    _set(params, path, jnp.asarray(np.ascontiguousarray(to_ours(value))))
  return params


def params_to_hf(config: TransformerConfig, params, dtype=None
                 ) -> dict[str, np.ndarray]:
  """Hugging Face tensors by name (contiguous numpy arrays in ``dtype``,
  default the params') from our params pytree; the inverse of
  :func:`params_from_hf`."""
  tensors = {}
  for name, path, _, to_hf in _key_map(config):
    value = np.asarray(jax.device_get(_get(params, path)))
    if dtype is not None and value.dtype != np.dtype(jnp.dtype(dtype)):
      value = value.astype(jnp.dtype(dtype))
    tensors[name] = np.ascontiguousarray(to_hf(value))
  return tensors


# --- reading ----------------------------------------------------------------

def _shard_files(model_dir: Path, flag: str):
  """``{file: None}`` or, with an index, ``{file: [names]}``; and the file
  to name for missing tensors."""
  index_path = model_dir / INDEX_FILE
  if index_path.is_file():
    index = _read_json(index_path, flag)
    weight_map = index.get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
      _refuse(flag, index_path, 'has no weight_map object')
    files = {}
    for name, file in weight_map.items():
      if not isinstance(file, str) or os.sep in file or file.startswith('.'):
        _refuse(flag, index_path, f'bad file name {file!r} for {name}')
      files.setdefault(file, []).append(name)
    for file in files:
      if not (model_dir / file).is_file():
        _refuse(flag, model_dir / file, f'no such file (listed in '
                f'{INDEX_FILE})')
    return files, index_path
  found = sorted(p.name for p in model_dir.glob('*.safetensors'))
  if not found:
    _refuse(flag, model_dir, 'holds no *.safetensors file (nor '
            f'{INDEX_FILE}); only safetensors weights are read')
  where = model_dir / found[0] if len(found) == 1 else model_dir
  return {file: None for file in found}, where


# safetensors dtype codes of float tensors, as numpy dtype names.
_SAFETENSORS_FLOATS = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16',
                       'BF16': 'bfloat16'}


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


class _Tensors(Mapping):
  """The tensors of a checkpoint by name, read from their files only when
  looked up (so loading holds one stored tensor at a time in host memory,
  beside the converted params). ``meta[name] = (file, shape, dtype code)``
  comes from the headers alone."""

  def __init__(self, model_dir: Path, flag: str):
    self.flag = flag
    self.meta = {}
    self._handles = {}
    files, self.missing_where = _shard_files(model_dir, flag)
    for file, listed in files.items():
      path = model_dir / file
      handle = self._open(path)
      names = list(handle.keys())
      if listed is not None:
        absent = sorted(set(listed) - set(names), key=_natural)
        if absent:
          more = f' and {len(absent) - 1} more' if len(absent) > 1 else ''
          _refuse(flag, path, f'lacks {absent[0]}{more} (listed in '
                  f'{INDEX_FILE})')
      for name in names:
        if listed is not None and name not in listed:
          continue                   # the index places it in another file
        if name in self.meta:
          _refuse(flag, path, f'{name} is also in {self.meta[name][0].name}')
        try:
          view = handle.get_slice(name)
          shape, code = tuple(view.get_shape()), view.get_dtype()
        except Exception as e:  # noqa: BLE001 (SafetensorError and others)
          _refuse(flag, path, f'cannot read the header of {name} '
                  f'({_first_line(e)})')
        self.meta[name] = (path, shape, code)

  def _open(self, path: Path):
    from safetensors import safe_open

    if path not in self._handles:
      try:
        self._handles[path] = safe_open(path, framework='numpy')
      except Exception as e:  # noqa: BLE001 (SafetensorError, OSError)
        _refuse(self.flag, path, f'cannot be read as safetensors '
                f'({_first_line(e)})')
    return self._handles[path]

  def __getitem__(self, name):
    path = self.meta[name][0]
    try:
      return self._open(path).get_tensor(name)
    except Exception as e:  # noqa: BLE001
      _refuse(self.flag, path, f'cannot read {name} ({_first_line(e)})')

  def __iter__(self):
    return iter(self.meta)

  def __len__(self):
    return len(self.meta)


def _stored_dtype(hf: dict, tensors: _Tensors) -> str:
  name = hf.get('torch_dtype', hf.get('dtype'))
  if isinstance(name, str) and name.removeprefix('torch.') in _TORCH_DTYPES:
    return _TORCH_DTYPES[name.removeprefix('torch.')]
  meta = tensors.meta.get('model.embed_tokens.weight')
  return 'float32' if meta is None else _SAFETENSORS_FLOATS.get(
      meta[2], 'float32')


def _token_ids(hf: dict, generation: dict, vocab_size: int, path, flag):
  def ids_of(value, what):
    values = value if isinstance(value, list) else [value]
    if not all(_is_int(i) and 0 <= i < vocab_size for i in values):
      _refuse(flag, path, f'{what} must be token ids in [0, {vocab_size}), '
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


def checkpoint_config(model_dir, flag: str = 'model_dir'
                      ) -> TransformerConfig:
  """The architecture of a checkpoint directory from its config.json alone
  (no weights read; the dtype field is a placeholder, float32), with the
  refusals of :func:`load_checkpoint` for a missing or unsupported
  config."""
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    _refuse(flag, model_dir, 'no such directory')
  config_path = model_dir / CONFIG_FILE
  return transformer_config(_read_json(config_path, flag), 'float32',
                            config_path, flag)


def load_checkpoint(model_dir, dtype: str | None = None,
                    flag: str = 'model_dir'):
  """Reads a Hugging Face Qwen3 / Llama / Qwen2 causal LM directory.

  Every file is checked (config, tensor names, shapes and dtypes from the
  safetensors headers) before any weight is read; the weights are then
  read and converted one tensor at a time.

  Args:
    model_dir: the directory (config.json, *.safetensors, perhaps
      model.safetensors.index.json and generation_config.json).
    dtype: the params' dtype ('float32', 'bfloat16', 'float64'); ``None``
      for the stored one (config.json's ``torch_dtype``; float16 is read
      as float32, which holds it exactly).
    flag: the flag named by refusals.

  Returns:
    ``(config, params, info)``: the :class:`TransformerConfig`, the params
    pytree (jax arrays, the layout of :mod:`nash_jax.policies.transformer`)
    and a :class:`CheckpointInfo`.

  Raises:
    ConfigError: one line naming ``flag`` and the file, for a missing
      file, an unsupported model type or setting, a missing or unexpected
      tensor, or a tensor of the wrong shape or a non-float dtype.
  """
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    _refuse(flag, model_dir, 'no such directory')
  if dtype is not None and dtype not in PARAM_DTYPES:
    raise ConfigError('dtype', f'must be one of {PARAM_DTYPES} or None, got '
                      f'{dtype!r}')
  config_path = model_dir / CONFIG_FILE
  hf = _read_json(config_path, flag)
  generation_path = model_dir / GENERATION_CONFIG_FILE
  generation = (_read_json(generation_path, flag)
                if generation_path.is_file() else {})
  transformer_config(hf, dtype or 'float32', config_path, flag)
  tensors = _Tensors(model_dir, flag)
  stored = _stored_dtype(hf, tensors)
  if dtype is None:
    dtype = stored if stored in PARAM_DTYPES else 'float32'
  config = transformer_config(hf, dtype, config_path, flag)
  bos, eos_ids, pad = _token_ids(
      hf, generation, config.vocab_size,
      generation_path if generation else config_path, flag)
  shapes = hf_shapes(config)
  for name in sorted(set(tensors) - set(shapes), key=_natural):
    if name.endswith('rotary_emb.inv_freq') or (
        name == 'lm_head.weight' and config.tie_embeddings):
      continue
    _refuse(flag, tensors.meta[name][0], f'unexpected tensor {name} (not in '
            f'a {hf["model_type"]} model of {config_path.name})')
  for name in sorted(shapes, key=_natural):
    if name not in tensors:
      _refuse(flag, tensors.missing_where, f'lacks tensor {name}')
    path, shape, code = tensors.meta[name]
    if shape != shapes[name]:
      _refuse(flag, path, f'{name} has shape {list(shape)}; '
              f'{config_path.name} implies {list(shapes[name])}')
    if code not in _SAFETENSORS_FLOATS:
      _refuse(flag, path, f'{name} has dtype {code}, not a float '
              f'({", ".join(_SAFETENSORS_FLOATS)})')
  if config.tie_embeddings and 'lm_head.weight' in tensors:
    if not np.array_equal(tensors['lm_head.weight'],
                          tensors['model.embed_tokens.weight']):
      _refuse(flag, config_path, 'tie_word_embeddings is true but '
              'lm_head.weight differs from model.embed_tokens.weight')
  params = params_from_hf(config, tensors)
  _check_tree(config, params)
  info = CheckpointInfo(str(model_dir), hf['model_type'], stored, bos,
                        eos_ids, pad, hf)
  return config, params, info


def _natural(name: str):
  """Sort key: ``model.layers.2`` before ``model.layers.10``."""
  return [int(t) if t.isdigit() else t for t in name.split('.')]


def _check_tree(config: TransformerConfig, params):
  """The params have exactly the module's structure, shapes and dtypes."""
  expected = jax.eval_shape(
      lambda: init_params(jax.random.PRNGKey(0), config))
  got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), expected)
  if got != want:
    raise AssertionError(f'params {got} do not match the module {want}')


def canonical(config: TransformerConfig) -> TransformerConfig:
  """``config`` with ``head_dim=None`` where it is ``d_model /
  num_heads`` (two spellings of one architecture)."""
  if config.head_dim is not None and (
      config.head_dim * config.num_heads == config.d_model):
    return dataclasses.replace(config, head_dim=None)
  return config


# --- writing ----------------------------------------------------------------

def _write_json(path: Path, value):
  with open(path, 'w') as f:
    json.dump(value, f, indent=2)
    f.write('\n')


def _fsync(path: Path):
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


def save_checkpoint(out_dir, config: TransformerConfig, params,
                    source_dir=None, *, dtype: str | None = None,
                    token_ids: TokenIds | None = None,
                    overwrite: bool = False, flag: str = 'output') -> Path:
  """Writes ``params`` as a Hugging Face checkpoint directory ``out_dir``.

  ``config.json`` is the source directory's (every field kept) with the
  architecture fields of ``config`` and ``torch_dtype`` set, or built from
  ``config`` alone (model type qwen3 with ``qk_norm``, qwen2 with
  ``qkv_bias``, else llama); the weights go to one ``model.safetensors``
  (the names of :func:`load_checkpoint`; metadata ``format: pt``, as
  transformers expects); every other file of ``source_dir`` (tokenizer,
  generation config, license, chat template) is copied, except its weights
  and index. Everything is written into a temporary sibling directory that
  is renamed to ``out_dir`` last, so a killed save leaves ``out_dir`` as it
  was (absent, or the old checkpoint) and no half-written one.

  Args:
    out_dir: the directory to create.
    config: the architecture of ``params``.
    params: the params pytree.
    source_dir: the model directory the params were loaded from, or
      ``None``.
    dtype: the stored dtype ('float32', 'bfloat16', ...); ``None`` for the
      params' own.
    token_ids: written into config.json (and a copied
      generation_config.json) as ``eos_token_id`` (a list with
      ``extra_eos``) and ``pad_token_id`` when given (``None`` keeps the
      source's).
    overwrite: replace an existing ``out_dir`` (the old one is removed only
      after the new one is complete); without it an existing ``out_dir``
      is refused.
    flag: the flag named by refusals.

  Returns:
    ``Path(out_dir)``.
  """
  from safetensors.numpy import save_file

  out_dir = Path(out_dir)
  validate_transformer_config(config)
  if out_dir.exists() and not overwrite:
    _refuse(flag, out_dir, 'exists (pass overwrite=True to replace it)')
  stored = dtype or config.param_dtype
  if stored not in _TORCH_DTYPES.values():
    raise ConfigError('dtype', f'must be a float dtype name, got {stored!r}')
  hf = {}
  if source_dir is not None:
    source_dir = Path(source_dir)
    hf = _read_json(source_dir / CONFIG_FILE, 'model_dir')
  hf.setdefault('architectures', [ARCHITECTURES[_model_type(config)]])
  fields = hf_config_fields(config, stored)
  if 'rope_parameters' in hf:        # transformers 5 layout: keep it
    rope = {'rope_type': 'default', 'rope_theta': fields['rope_theta']}
    if fields['rope_scaling'] is not None:
      rope.update(fields['rope_scaling'])
    hf['rope_parameters'] = rope
    fields.pop('rope_theta')
    fields.pop('rope_scaling')
  if 'dtype' in hf:                  # transformers 5 name of torch_dtype
    hf['dtype'] = fields.pop('torch_dtype')
  hf.update(fields)
  if token_ids is not None:
    validate_token_ids(token_ids, config.vocab_size)
    ends = list(token_ids.end_ids)
    hf['eos_token_id'] = ends[0] if len(ends) == 1 else ends
    hf['pad_token_id'] = token_ids.pad
  check = transformer_config(hf, config.param_dtype)
  if check != canonical(config):
    raise AssertionError(f'config.json would read back as {check}, not '
                         f'{config}')
  tensors = params_to_hf(config, params, stored)

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.tmp-',
                              dir=out_dir.parent))
  try:
    if source_dir is not None:
      for item in sorted(source_dir.iterdir()):
        if (item.is_file() and item.name not in (CONFIG_FILE, INDEX_FILE)
            and not item.name.endswith(_NOT_COPIED_SUFFIXES)):
          shutil.copy2(item, tmp / item.name)
      generation_path = tmp / GENERATION_CONFIG_FILE
      if token_ids is not None and generation_path.is_file():
        generation = _read_json(generation_path, 'model_dir')
        for key in ('eos_token_id', 'pad_token_id'):   # it wins on load
          generation[key] = hf[key]
        _write_json(generation_path, generation)
    save_file(tensors, tmp / WEIGHTS_FILE, metadata={'format': 'pt'})
    _write_json(tmp / CONFIG_FILE, hf)
    for item in tmp.iterdir():
      _fsync(item)
    os.chmod(tmp, 0o755)
    if out_dir.exists():
      old = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.old-',
                                  dir=out_dir.parent))
      os.rename(out_dir, old / out_dir.name)
      os.rename(tmp, out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


# --- tokenizer and prompts ---------------------------------------------------

def load_tokenizer(model_dir, flag: str = 'model_dir'):
  """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json``."""
  from tokenizers import Tokenizer

  path = Path(model_dir) / TOKENIZER_FILE
  if not path.is_file():
    _refuse(flag, path, 'no such file (a fast tokenizer is needed)')
  try:
    return Tokenizer.from_file(str(path))
  except Exception as e:  # noqa: BLE001 (the library raises plain Exception)
    _refuse(flag, path, f'cannot be read as a tokenizer '
            f'({str(e).splitlines()[0] if str(e) else type(e).__name__})')


def encode_prompts(tokenizer, texts, pad_id: int,
                   max_prompt_length: int | None = None,
                   add_special_tokens: bool = True,
                   source: str = 'prompts') -> TokenContexts:
  """Left-padded :class:`TokenContexts` of prompt texts.

  Args:
    tokenizer: a ``tokenizers.Tokenizer``.
    texts: the prompt strings (``index`` is their position).
    pad_id: the id written on the padding (masked, never read).
    max_prompt_length: ``P``, the padded width (fixed shapes compile once);
      ``None`` for the longest prompt. A longer prompt is refused.
    add_special_tokens: apply the tokenizer's post-processor (Llama 3 puts
      ``<|begin_of_text|>`` first; Qwen adds nothing).
    source: names the prompts in refusals (a file name, a flag).

  Returns:
    ``TokenContexts(index [B], tokens [B, P] int32, mask [B, P] bool)``.
  """
  texts = list(texts)
  if not texts:
    raise ConfigError('prompts', f'{source}: no prompts')
  encoded = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
  rows = [e.ids for e in encoded]
  for i, row in enumerate(rows):
    if not row:
      raise ConfigError('prompts', f'{source}: prompt {i} has no tokens')
    if max_prompt_length is not None and len(row) > max_prompt_length:
      raise ConfigError('prompts', f'{source}: prompt {i} has {len(row)} '
                        f'tokens, more than max_prompt_length='
                        f'{max_prompt_length}')
  width = max_prompt_length or max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    tokens[i, width - len(row):] = row
    mask[i, width - len(row):] = True
  return TokenContexts(jnp.arange(len(rows), dtype=jnp.int32),
                       jnp.asarray(tokens), jnp.asarray(mask))


def decode_responses(tokenizer, y, ids: TokenIds,
                     skip_special_tokens: bool = True) -> list[str]:
  """The text of each response row of ``y [B, L]``, up to (not including)
  its first end token."""
  texts = []
  for row in np.asarray(y).tolist():
    end = next((t for t, token in enumerate(row) if token in ids.end_ids),
               len(row))
    texts.append(tokenizer.decode(row[:end],
                                  skip_special_tokens=skip_special_tokens))
  return texts


def read_prompts(path, flag: str = 'prompt_file', field: str = 'prompt'
                 ) -> list[str]:
  """The prompts of a JSONL file: one JSON object per line with a string
  ``field``; blank lines are skipped. A bad line is refused with one line
  naming the file and line number."""
  path = Path(path)
  if not path.is_file():
    _refuse(flag, path, 'no such file')
  prompts = []
  try:
    with open(path, encoding='utf-8') as f:
      lines = list(f)
  except (OSError, UnicodeDecodeError) as e:
    _refuse(flag, path, f'cannot be read ({e})')
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f'{path}:{number}'
    try:
      obj: Any = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(flag, f'{where}: not valid JSON ({e.msg})') from None
    if not isinstance(obj, dict):
      raise ConfigError(flag, f'{where}: must be a JSON object with a '
                        f'"{field}" string, got {type(obj).__name__}')
    if not isinstance(obj.get(field), str):
      raise ConfigError(flag, f'{where}: needs a "{field}" string field')
    prompts.append(obj[field])
  if not prompts:
    _refuse(flag, path, 'holds no prompts')
  return prompts
