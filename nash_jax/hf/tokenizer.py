"""Tokenizers and prompt files of Hugging Face models.

:func:`load_tokenizer` reads a model directory's ``tokenizer.json``;
:func:`encode_prompts` turns prompt texts into left-padded
:class:`~nash_jax.environments.core.TokenContexts`, :func:`decode_responses`
turns responses back into text (up to their end token), and
:func:`read_prompts` reads a JSONL prompt file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.hf.files import TOKENIZER_FILE, refuse
from nash_jax.policies.sequence import TokenIds


def load_tokenizer(model_dir, flag: str = 'model_dir'):
  """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json``."""
  from tokenizers import Tokenizer

  path = Path(model_dir) / TOKENIZER_FILE
  if not path.is_file():
    refuse(flag, path, 'no such file (a fast tokenizer is needed)')
  try:
    return Tokenizer.from_file(str(path))
  except Exception as e:  # noqa: BLE001 (the library raises plain Exception)
    refuse(flag, path, f'cannot be read as a tokenizer '
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
  return read_fields(path, flag, (field,))[0]


def read_fields(path, flag: str, fields: tuple[str, ...]
                ) -> tuple[list[str], ...]:
  """The string ``fields`` of every object of a JSONL file, one list per
  field, in one reading (:func:`read_prompts` for one field); blank lines
  are skipped. A bad line is refused with one line naming the file and line
  number."""
  path = Path(path)
  if not path.is_file():
    refuse(flag, path, 'no such file')
  columns = tuple([] for _ in fields)
  try:
    with open(path, encoding='utf-8') as f:
      lines = list(f)
  except (OSError, UnicodeDecodeError) as e:
    refuse(flag, path, f'cannot be read ({e})')
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
                        f'"{fields[0]}" string, got {type(obj).__name__}')
    for field, column in zip(fields, columns):
      if not isinstance(obj.get(field), str):
        raise ConfigError(flag, f'{where}: needs a "{field}" string field')
      column.append(obj[field])
  if not columns[0]:
    refuse(flag, path, 'holds no prompts')
  return columns
