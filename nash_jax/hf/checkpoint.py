"""A Hugging Face checkpoint directory: opened once, loaded, saved.

:func:`open_checkpoint` gives a :class:`Checkpoint` that reads each file of
the directory (config.json, generation_config.json, tokenizer.json, the
weights) at most once, when first asked; :func:`load_checkpoint` reads the
whole checkpoint into ``(config, params, info)``; :func:`save_checkpoint`
writes the same layout (one ``model.safetensors``) into a fresh directory,
renamed into place only once complete.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from nash_jax import io as io_lib
from nash_jax.errors import ConfigError
from nash_jax.hf.config import (
  ARCHITECTURES,
  TORCH_DTYPES,
  canonical,
  declared_token_ids,
  hf_config_fields,
  hf_model_type,
  transformer_config,
)
from nash_jax.hf.files import (
  CONFIG_FILE,
  GENERATION_CONFIG_FILE,
  INDEX_FILE,
  WEIGHTS_FILE,
  read_json,
  refuse,
)
from nash_jax.hf.keymap import (
  hf_shapes,
  params_from_hf,
  params_to_hf,
  tensor_order,
)
from nash_jax.hf.safetensors_io import (
  SAFETENSORS_FLOATS,
  LazyTensors,
  stored_dtype,
)
from nash_jax.hf.tokenizer import load_tokenizer
from nash_jax.policies.sequence import (
  TokenIds,
  full_vocabulary,
  validate_token_ids,
)
from nash_jax.policies.transformer import (
  PARAM_DTYPES,
  TransformerConfig,
  init_params,
  validate_transformer_config,
)

# Files of a model directory that save_checkpoint does not copy (it writes
# its own config and weights).
_NOT_COPIED_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.h5',
                        '.msgpack', '.ckpt', '.gguf')


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
    """The policy's ids over the whole vocabulary (:mod:`nash_jax.hf`);
    refused (:class:`ConfigError`) when the checkpoint declares no end
    token."""
    if not self.eos_ids:
      refuse('model_dir', Path(self.model_dir) / CONFIG_FILE,
             f'declares no eos_token_id (nor does {GENERATION_CONFIG_FILE})'
             f'; a policy needs an end token')
    return full_vocabulary(self.eos_ids[0], self.pad_id, self.eos_ids[1:])


class Checkpoint:
  """A Hugging Face model directory whose files are each read at most once.

  Opening reads nothing. Each attribute reads its file when first asked and
  keeps what it read, so a caller that checks the architecture, then the
  tokenizer, then loads the weights reads config.json,
  generation_config.json and tokenizer.json once each, and meets the
  refusals of :func:`load_checkpoint` and :func:`load_tokenizer` in the
  order it asks.

  Attributes:
    model_dir: the directory.
    flag: the flag named by refusals.
  """

  def __init__(self, model_dir, flag: str = 'model_dir'):
    self.model_dir = Path(model_dir)
    self.flag = flag

  @property
  def config_path(self) -> Path:
    """``model_dir/config.json``."""
    return self.model_dir / CONFIG_FILE

  @functools.cached_property
  def hf_config(self) -> dict:
    """config.json as read (a dict); a missing directory or file, or one
    that holds no JSON object, is refused."""
    if not self.model_dir.is_dir():
      refuse(self.flag, self.model_dir, 'no such directory')
    return read_json(self.config_path, self.flag)

  @functools.cached_property
  def generation_config(self) -> dict:
    """generation_config.json as read, ``{}`` where there is none."""
    path = self.model_dir / GENERATION_CONFIG_FILE
    return read_json(path, self.flag) if path.is_file() else {}

  @functools.cached_property
  def config(self) -> TransformerConfig:
    """The architecture from config.json alone (no weights read; the dtype
    field is a placeholder, float32), with the refusals of :meth:`load`
    for an unsupported config."""
    return transformer_config(self.hf_config, 'float32', self.config_path,
                              self.flag)

  @functools.cached_property
  def tokenizer(self):
    """The ``tokenizers.Tokenizer`` of tokenizer.json
    (:func:`~nash_jax.hf.tokenizer.load_tokenizer`)."""
    return load_tokenizer(self.model_dir, self.flag)

  def load(self, dtype: str | None = None):
    """``(config, params, info)``, the weights read in ``dtype``: see
    :func:`load_checkpoint`."""
    model_dir, flag = self.model_dir, self.flag
    if not model_dir.is_dir():
      refuse(flag, model_dir, 'no such directory')
    if dtype is not None and dtype not in PARAM_DTYPES:
      raise ConfigError('dtype', f'must be one of {PARAM_DTYPES} or None, got '
                        f'{dtype!r}')
    config_path = model_dir / CONFIG_FILE
    hf = self.hf_config
    generation_path = model_dir / GENERATION_CONFIG_FILE
    generation = self.generation_config
    transformer_config(hf, dtype or 'float32', config_path, flag)
    tensors = LazyTensors(model_dir, flag)
    stored = stored_dtype(hf, tensors)
    if dtype is None:
      dtype = stored if stored in PARAM_DTYPES else 'float32'
    config = transformer_config(hf, dtype, config_path, flag)
    bos, eos_ids, pad = declared_token_ids(
        hf, generation, config.vocab_size,
        generation_path if generation else config_path, flag)
    shapes = hf_shapes(config)
    for name in sorted(set(tensors) - set(shapes), key=tensor_order):
      if name.endswith('rotary_emb.inv_freq') or (
          name == 'lm_head.weight' and config.tie_embeddings):
        continue
      refuse(flag, tensors.meta[name][0], f'unexpected tensor {name} (not in '
             f'a {hf["model_type"]} model of {config_path.name})')
    for name in sorted(shapes, key=tensor_order):
      if name not in tensors:
        refuse(flag, tensors.missing_where, f'lacks tensor {name}')
      path, shape, code = tensors.meta[name]
      if shape != shapes[name]:
        refuse(flag, path, f'{name} has shape {list(shape)}; '
               f'{config_path.name} implies {list(shapes[name])}')
      if code not in SAFETENSORS_FLOATS:
        refuse(flag, path, f'{name} has dtype {code}, not a float '
               f'({", ".join(SAFETENSORS_FLOATS)})')
    if config.tie_embeddings and 'lm_head.weight' in tensors:
      if not np.array_equal(tensors['lm_head.weight'],
                            tensors['model.embed_tokens.weight']):
        refuse(flag, config_path, 'tie_word_embeddings is true but '
               'lm_head.weight differs from model.embed_tokens.weight')
    params = params_from_hf(config, tensors)
    _check_tree(config, params)
    info = CheckpointInfo(str(model_dir), hf['model_type'], stored, bos,
                          eos_ids, pad, hf)
    return config, params, info


def open_checkpoint(model_dir, flag: str = 'model_dir') -> Checkpoint:
  """The :class:`Checkpoint` of ``model_dir`` (nothing read yet); refusals
  name ``flag``."""
  return Checkpoint(model_dir, flag)


def checkpoint_config(model_dir, flag: str = 'model_dir'
                      ) -> TransformerConfig:
  """The architecture of a checkpoint directory from its config.json alone
  (:attr:`Checkpoint.config`)."""
  return open_checkpoint(model_dir, flag).config


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
  return open_checkpoint(model_dir, flag).load(dtype)


def _check_tree(config: TransformerConfig, params):
  """The params have exactly the module's structure, shapes and dtypes."""
  expected = jax.eval_shape(
      lambda: init_params(jax.random.PRNGKey(0), config))
  got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
  want = jax.tree.map(lambda a: (a.shape, a.dtype), expected)
  if got != want:
    raise AssertionError(f'params {got} do not match the module {want}')


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
    refuse(flag, out_dir, 'exists (pass overwrite=True to replace it)')
  stored = dtype or config.param_dtype
  if stored not in TORCH_DTYPES.values():
    raise ConfigError('dtype', f'must be a float dtype name, got {stored!r}')
  hf = {}
  if source_dir is not None:
    source_dir = Path(source_dir)
    hf = read_json(source_dir / CONFIG_FILE, 'model_dir')
  hf.setdefault('architectures', [ARCHITECTURES[hf_model_type(config)]])
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
        generation = read_json(generation_path, 'model_dir')
        for key in ('eos_token_id', 'pad_token_id'):   # it wins on load
          generation[key] = hf[key]
        io_lib.write_json(generation_path, generation, sort_keys=False)
    save_file(tensors, tmp / WEIGHTS_FILE, metadata={'format': 'pt'})
    io_lib.write_json(tmp / CONFIG_FILE, hf, sort_keys=False)
    for item in tmp.iterdir():
      io_lib.fsync_file(item)
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
