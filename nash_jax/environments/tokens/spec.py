"""The token game's settings: :class:`TokenEnvSpec` (vocabulary,
lengths, prompts, annotators) and :func:`check_spec`, which refuses an
unusable one before any work.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nash_jax.environments.tokens.annotators import ANNOTATORS
from nash_jax.environments.tokens.vocabulary import (
  DEFAULT_MAX_RESPONSES,
  check_listable,
)
from nash_jax.errors import ConfigError
from nash_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class TokenEnvSpec:
  """Static settings of the token environment (hashable; see
  :mod:`nash_jax.environments.tokens` for the meaning of each).

  Attributes:
    vocab_size: ``V``, content tokens (the model vocabulary is ``V + 3``).
    max_length: ``L``, maximum response length in tokens.
    num_prompts: ``X``.
    prompt_length: tokens per prompt, ``BOS`` and topic included (``>= 2``).
    seed: seed of the prompts' filler tokens.
    sharpness: ``tau_k`` per annotator, in the order of :data:`ANNOTATORS`.
    annotator_weights: ``w_k`` (normalized to sum 1).
    max_responses: refuse sizes with more than this many responses.
  """

  vocab_size: int = setting(4, 'Content tokens V of the token game (the '
                            'model vocabulary adds PAD, BOS and EOS).')
  max_length: int = setting(4, 'Maximum response length L; every response '
                            'of at most L tokens is listed (sum_{k<=L} V^k '
                            'of them) for the exact metrics.')
  num_prompts: int = setting(4, 'Prompts X.')
  prompt_length: int = setting(3, 'Tokens per prompt: BOS, the topic token, '
                               'then seeded fillers.')
  seed: int = setting(0, "Seed of the prompts' filler tokens.")
  sharpness: tuple[float, ...] = setting(
      (2.0, 2.0, 2.0), 'Bradley-Terry sharpness tau_k of the annotators ' +
      ', '.join(ANNOTATORS) + ' (comma-separated).', item=float)
  annotator_weights: tuple[float, ...] = setting(
      (1.0, 1.0, 1.0), 'Weights w_k of the annotators in the population '
      'preference (normalized to sum 1).', item=float)
  max_responses: int = setting(DEFAULT_MAX_RESPONSES, 'Refuse token games '
                               'with more listed responses than this.')


def check_spec(spec: TokenEnvSpec) -> int:
  """Refuses unusable settings before any work; returns ``N``.

  Raises:
    ConfigError: naming the setting (``vocab_size``, ``max_length``,
      ``num_prompts``, ``prompt_length``, ``sharpness``,
      ``annotator_weights``).
  """
  n = check_listable(spec.vocab_size, spec.max_length, spec.max_responses)
  if spec.num_prompts < 1:
    raise ConfigError('num_prompts', f'must be >= 1, got {spec.num_prompts}')
  if spec.prompt_length < 2:
    raise ConfigError('prompt_length', f'must be >= 2 (BOS and the topic), '
                      f'got {spec.prompt_length}')
  k = len(ANNOTATORS)
  sharpness = np.asarray(spec.sharpness, float)
  weights = np.asarray(spec.annotator_weights, float)
  if sharpness.shape != (k,) or not np.all(np.isfinite(sharpness)) or np.any(
      sharpness < 0):
    raise ConfigError('sharpness', f'must be {k} finite values >= 0 (one '
                      f'per annotator {ANNOTATORS}), got {spec.sharpness}')
  if weights.shape != (k,) or not np.all(np.isfinite(weights)) or np.any(
      weights < 0) or not weights.sum() > 0:
    raise ConfigError('annotator_weights', f'must be {k} finite values >= 0 '
                      f'with a positive sum, got {spec.annotator_weights}')
  return n
