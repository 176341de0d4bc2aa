"""The files of a Hugging Face model directory and their one-line
refusals.

The names every module of :mod:`nash_jax.hf` reads or writes, and the two
helpers they share: :func:`refuse` (a :class:`ConfigError` naming the flag
and the file) and :func:`read_json` (a JSON object, or such a refusal).
"""

from __future__ import annotations

import json
from pathlib import Path

from nash_jax.errors import ConfigError

CONFIG_FILE = 'config.json'
INDEX_FILE = 'model.safetensors.index.json'
WEIGHTS_FILE = 'model.safetensors'
TOKENIZER_FILE = 'tokenizer.json'
GENERATION_CONFIG_FILE = 'generation_config.json'


def refuse(flag: str, path, message: str):
  """Raises the :class:`ConfigError` ``--flag: path: message``."""
  raise ConfigError(flag, f'{path}: {message}')


def read_json(path: Path, flag: str, what: str = 'a JSON object'):
  """The JSON object of the file ``path``; a missing, unreadable or
  invalid file, or one holding something else, is refused naming
  ``flag``."""
  if not path.is_file():
    refuse(flag, path, 'no such file')
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    refuse(flag, path, f'not valid JSON (line {e.lineno}: {e.msg})')
  except (OSError, UnicodeDecodeError) as e:
    refuse(flag, path, f'cannot be read ({e})')
  if not isinstance(value, dict):
    refuse(flag, path, f'must hold {what}, got {type(value).__name__}')
  return value
