"""Hugging Face decoder checkpoints: open, load, save, tokenize.

A local Hugging Face model directory (what a hub download of a Qwen3,
Llama 3 or Qwen2 causal LM holds) becomes the
:class:`~nash_jax.policies.transformer.TransformerConfig` and params pytree
of :mod:`nash_jax.policies.transformer`, and back. The directory::

  config.json                       architecture, stored dtype, token ids
  generation_config.json            token ids (optional; its ids win)
  model.safetensors                 the weights; or, sharded,
  model-00001-of-00002.safetensors  ... the shards and
  model.safetensors.index.json      their weight_map (tensor -> shard)
  tokenizer.json                    the fast tokenizer
  tokenizer_config.json, ...        copied along by save_checkpoint

Callers write ``from nash_jax import hf`` and use:

* :func:`open_checkpoint` -> a :class:`Checkpoint` that reads each file
  once, when first asked: ``.config`` (the architecture, config.json
  alone), ``.tokenizer``, ``.load(dtype)``;
* :func:`load_checkpoint` -> ``(config, params, info)`` (a
  :class:`CheckpointInfo`); :func:`save_checkpoint` writes the same layout
  (one ``model.safetensors``) into a fresh directory, renamed into place
  only once complete;
* :func:`load_tokenizer`, :func:`encode_prompts` (left-padded
  :class:`~nash_jax.environments.core.TokenContexts`),
  :func:`decode_responses` and :func:`read_prompts` (a JSONL prompt file).

One module per concern: :mod:`~nash_jax.hf.files` (file names, one-line
refusals), :mod:`~nash_jax.hf.config` (config.json <-> TransformerConfig,
token ids), :mod:`~nash_jax.hf.keymap` (tensor names and shapes <-> the
params pytree; the key map is in its docstring),
:mod:`~nash_jax.hf.safetensors_io` (reading the weight files lazily),
:mod:`~nash_jax.hf.tokenizer` (tokenizers, prompt files) and
:mod:`~nash_jax.hf.checkpoint` (the directory opened, loaded, saved).

Old checkpoints' ``rotary_emb.inv_freq`` buffers are ignored (recomputed
from the config); any other unknown key, a missing key or a wrong shape is
refused. Every refusal is a :class:`~nash_jax.errors.ConfigError` whose
one line names the flag (``model_dir`` unless told) and the file.

Token ids (:attr:`CheckpointInfo.token_ids`): the end tokens are
``generation_config.json``'s ``eos_token_id`` (a list for instruct models)
or else ``config.json``'s; the padding token its ``pad_token_id`` or else
the first end token. The policy's distribution is the model's softmax over
the whole vocabulary, less the padding token where that is no end token
(:func:`nash_jax.policies.sequence.full_vocabulary`).
"""

from nash_jax.hf.checkpoint import (
  Checkpoint,
  CheckpointInfo,
  checkpoint_config,
  load_checkpoint,
  open_checkpoint,
  save_checkpoint,
)
from nash_jax.hf.config import (
  ARCHITECTURES,
  MODEL_TYPES,
  canonical,
  hf_config_fields,
  transformer_config,
)
from nash_jax.hf.files import (
  CONFIG_FILE,
  GENERATION_CONFIG_FILE,
  INDEX_FILE,
  TOKENIZER_FILE,
  WEIGHTS_FILE,
)
from nash_jax.hf.keymap import hf_shapes, params_from_hf, params_to_hf
from nash_jax.hf.tokenizer import (
  decode_responses,
  encode_prompts,
  load_tokenizer,
  read_fields,
  read_prompts,
)

__all__ = [
  'ARCHITECTURES', 'CONFIG_FILE', 'GENERATION_CONFIG_FILE', 'INDEX_FILE',
  'MODEL_TYPES', 'TOKENIZER_FILE', 'WEIGHTS_FILE', 'Checkpoint',
  'CheckpointInfo', 'canonical', 'checkpoint_config', 'decode_responses',
  'encode_prompts', 'hf_config_fields', 'hf_shapes', 'load_checkpoint',
  'load_tokenizer', 'open_checkpoint', 'params_from_hf', 'params_to_hf',
  'read_fields', 'read_prompts', 'save_checkpoint', 'transformer_config',
]
