"""The token game's vocabulary and its listed responses: the token ids,
the canonical order of the ``N = sum_{k=0}^{L} V^k`` responses and the
index of a response in it (see :mod:`nash_jax.environments.tokens`).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.errors import ConfigError

PAD = 0
BOS = 1
EOS = 2
FIRST_CONTENT = 3
NUM_SPECIAL = 3

DEFAULT_MAX_RESPONSES = 5000


def model_vocab_size(vocab_size: int) -> int:
  """Token ids a model needs: ``V`` content tokens plus PAD, BOS, EOS."""
  return vocab_size + NUM_SPECIAL


def num_responses(vocab_size: int, max_length: int) -> int:
  """``N = sum_{k=0}^{L} V^k``: ``k < L`` tokens then EOS, or ``L`` tokens.
  """
  return sum(vocab_size ** k for k in range(max_length + 1))


def _count(vocab_size: int, max_length: int) -> str:
  """``N`` for a message: exact up to 10^15, else its order of magnitude."""
  if vocab_size == 1:
    return f'{max_length + 1:,}'
  digits = max_length * np.log10(vocab_size)
  if digits > 15:
    return f'~10^{digits:.0f}'
  return f'{num_responses(vocab_size, max_length):,}'


def check_listable(vocab_size: int, max_length: int,
                   max_responses: int = DEFAULT_MAX_RESPONSES) -> int:
  """Refuses sizes whose responses cannot be listed; returns ``N``.

  Raises:
    ConfigError: ``vocab_size < 1``, ``max_length < 1``, or ``N >
      max_responses`` (naming ``max_length`` and ``N``).
  """
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
    raise ConfigError('vocab_size', f'must be an integer >= 1, got '
                      f'{vocab_size!r}')
  if not isinstance(max_length, (int, np.integer)) or max_length < 1:
    raise ConfigError('max_length', f'must be an integer >= 1, got '
                      f'{max_length!r}')
  total, power = 0, 1
  for _ in range(max_length + 1):  # Stops early: L may be huge.
    total += power
    power *= vocab_size
    if total > max_responses:
      break
  if total > max_responses:
    raise ConfigError(
        'max_length', f'vocab_size={vocab_size} and max_length={max_length} '
        f'give N = {_count(vocab_size, max_length)} responses per prompt '
        f'(sum_k V^k), more than the '
        f'{max_responses:,} that can be listed; lower max_length or '
        f'vocab_size')
  return total


def make_response(content, max_length: int) -> np.ndarray:
  """``[L]`` int32: the content token ids, then EOS (if shorter than
  ``L``), then PAD."""
  content = [int(c) for c in content]
  if len(content) > max_length:
    raise ValueError(f'{len(content)} tokens do not fit max_length '
                     f'{max_length}')
  tail = [EOS] + [PAD] * (max_length - len(content) - 1)
  return np.asarray((content + tail)[:max_length], np.int32)


def list_responses(vocab_size: int, max_length: int,
                   max_responses: int = DEFAULT_MAX_RESPONSES) -> np.ndarray:
  """Every response, ``[N, L]`` int32, in the canonical order: by length
  ``k = 0..L``, then lexicographically (first token most significant).

  Raises:
    ConfigError: see :func:`check_listable`.
  """
  check_listable(vocab_size, max_length, max_responses)
  blocks = []
  for k in range(max_length + 1):
    codes = np.arange(vocab_size ** k)
    block = np.full((len(codes), max_length), PAD, np.int32)
    for t in range(k):
      block[:, t] = FIRST_CONTENT + (codes // vocab_size ** (k - 1 - t)) % (
          vocab_size)
    if k < max_length:
      block[:, k] = EOS
    blocks.append(block)
  return np.concatenate(blocks)


def content_mask(y: chex.Array) -> chex.Array:
  """``[..., L]`` bool: the leading run of content tokens (ids ``>= 3``),
  i.e. the tokens before EOS (or before any other non-content token)."""
  return jnp.cumprod(y >= FIRST_CONTENT, axis=-1).astype(bool)


def response_length(y: chex.Array) -> chex.Array:
  """``[...]`` int32: the number ``k`` of content tokens of ``y [..., L]``.
  """
  return jnp.sum(content_mask(y), axis=-1, dtype=jnp.int32)


def _index_tables(vocab_size: int, max_length: int):
  """Offsets ``O[k] = sum_{j<k} V^j`` ``[L+1]`` and digit weights
  ``W[k, t] = V^(k-1-t)`` for ``t < k`` (else 0), ``[L+1, L]``."""
  offsets = np.array([num_responses(vocab_size, k - 1) if k else 0
                      for k in range(max_length + 1)], np.int64)
  weights = np.zeros((max_length + 1, max_length), np.int64)
  for k in range(max_length + 1):
    for t in range(k):
      weights[k, t] = vocab_size ** (k - 1 - t)
  return offsets.astype(np.int32), weights.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def response_index(y: chex.Array, vocab_size: int,
                   max_length: int) -> chex.Array:
  """The position of each response in :func:`list_responses`, ``[...]``
  int32 (jittable; ``vocab_size`` and ``max_length`` are static).

  ``index(y) = sum_{j<k} V^j + sum_{t<k} (y_t - 3) V^(k-1-t)`` with ``k``
  the number of content tokens. Content ids must lie in ``3 .. 3 + V - 1``
  (not checked).

  Args:
    y: ``[..., L]`` int responses.
    vocab_size: ``V``.
    max_length: ``L`` (must equal ``y.shape[-1]``).

  Raises:
    ConfigError: sizes that cannot be listed (:func:`check_listable`).
  """
  check_listable(vocab_size, max_length, np.iinfo(np.int32).max)
  chex.assert_axis_dimension(y, -1, max_length)
  offsets, weights = _index_tables(vocab_size, max_length)
  valid = content_mask(y)
  k = jnp.sum(valid, axis=-1)
  digits = jnp.where(valid, y - FIRST_CONTENT, 0).astype(jnp.int32)
  code = jnp.sum(digits * jnp.asarray(weights)[k], axis=-1)
  return (jnp.asarray(offsets)[k] + code).astype(jnp.int32)
