"""The layout of a pair of responses as model input, shared by the learned
models and the judge: cleaned responses and their masks, the canonical
order of a pair, token segments and their RoPE positions, and the exactly
antisymmetric links.

Responses follow :mod:`nash_jax.policies.sequence`: content tokens, then
``EOS``, then padding; a response cut at ``L`` has no ``EOS``. The tokens
after the first ``EOS`` are never read: :func:`clean_responses` replaces
them by ``PAD`` and masks them, and :func:`real_positions` counts real
tokens only, so a padded sequence gives exactly the result of its unpadded
concatenation (up to float rounding).

Exact antisymmetry: a model run on the canonically ordered pair
(:func:`canonical_pairs`) gives a statistic of ``(lo, hi)`` that
:func:`orient` turns into that of ``(y, y')``, and the links
(:func:`logit_probability`, :func:`antisymmetric_probability`) compute
``h`` in ``[1/2, 1]`` and ``1 - h`` (exact there, Sterbenz), so ``P(y >
y') + P(y' > y) = 1`` and ``P(y > y) = 1/2`` in floating point.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies.sequence import EOS_ID, PAD_ID
from nash_jax.policies.transformer import TransformerConfig


def logit_probability(d: chex.Array) -> chex.Array:
  """``sigmoid(d)`` with ``P(d) + P(-d) = 1`` exactly: ``h =
  sigmoid(|d|)`` in ``[1/2, 1]``, then ``h`` or ``1 - h`` (exact, Sterbenz).
  """
  h = jax.nn.sigmoid(jnp.abs(d))
  return jnp.where(d >= 0, h, 1.0 - h)


def antisymmetric_probability(a: chex.Array) -> chex.Array:
  """``1/2 + a`` for an antisymmetric ``a`` in ``[-1/2, 1/2]``, with
  ``P(a) + P(-a) = 1`` exactly (as
  :func:`nash_jax.environments.tokens.population_preference`):
  ``h = min(1/2 + |a|, 1)``, then ``h`` or ``1 - h``."""
  high = jnp.minimum(0.5 + jnp.abs(a), 1.0)
  return jnp.where(a >= 0, high, 1.0 - high)


def _response_mask(y: chex.Array, eos_id: int) -> chex.Array:
  """True through the first ``eos_id`` (every token of a response without
  one): :func:`nash_jax.policies.sequence.response_mask` for any EOS id."""
  is_eos = (y == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


def clean_responses(y: chex.Array, eos_id: int = EOS_ID,
                    pad_id: int = PAD_ID) -> tuple[chex.Array, chex.Array]:
  """``(tokens, mask)``: ``y`` with every token after the first EOS
  replaced by PAD, and the mask of the tokens through the first EOS (every
  token of a response cut at ``L`` without one)."""
  mask = _response_mask(y, eos_id)
  return jnp.where(mask, y, pad_id).astype(jnp.int32), mask


def canonical_pairs(y: chex.Array, y_prime: chex.Array, eos_id: int = EOS_ID,
                    pad_id: int = PAD_ID):
  """Puts each pair in a canonical order, so that a pair and its swap run
  the same computation.

  The responses are compared lexicographically on their tokens through the
  first EOS (padding replaced by PAD, so its content never matters).

  Args:
    y: ``[B, L]`` int responses.
    y_prime: ``[B, L]``.
    eos_id: the end-of-sequence id (static).
    pad_id: the id that replaces the tokens after it (static).

  Returns:
    ``(lo, hi, flip, same)``: ``lo, hi [B, L]`` the cleaned responses in
    increasing order, ``flip [B]`` bool (True where ``y`` is ``hi``),
    ``same [B]`` bool (the responses are equal through their first EOS).
  """
  chex.assert_rank([y, y_prime], 2)
  chex.assert_equal_shape([y, y_prime])
  a, _ = clean_responses(y, eos_id, pad_id)
  b, _ = clean_responses(y_prime, eos_id, pad_id)
  differ = a != b
  first = jnp.argmax(differ, axis=-1)[:, None]
  a_first = jnp.take_along_axis(a, first, axis=-1)[:, 0]
  b_first = jnp.take_along_axis(b, first, axis=-1)[:, 0]
  flip = a_first > b_first
  same = ~jnp.any(differ, axis=-1)
  lo = jnp.where(flip[:, None], b, a)
  hi = jnp.where(flip[:, None], a, b)
  return lo, hi, flip, same


def orient(stat: chex.Array, flip: chex.Array, same: chex.Array):
  """A canonical antisymmetric statistic of ``(lo, hi)`` turned into that
  of ``(y, y')``: negated where flipped (exact), 0 where the responses are
  equal (``flip``, ``same`` from :func:`canonical_pairs`)."""
  return jnp.where(same, jnp.zeros_like(stat), jnp.where(flip, -stat, stat))


def segments(*parts):
  """Concatenates ``(tokens [B, n], mask [B, n])`` segments along time:
  ``(tokens [B, sum n], mask [B, sum n])``, int32 and bool."""
  tokens = jnp.concatenate([p[0].astype(jnp.int32) for p in parts], axis=1)
  mask = jnp.concatenate([p[1].astype(bool) for p in parts], axis=1)
  return tokens, mask


def constant_segment(ids, batch: int):
  """A template segment ``ids`` repeated over the batch, all real:
  ``(tokens [batch, len(ids)], mask)``."""
  ids = jnp.asarray(ids, jnp.int32).reshape(1, -1)
  tokens = jnp.broadcast_to(ids, (batch, ids.shape[1]))
  return tokens, jnp.ones(tokens.shape, bool)


def prompt_segment(x: TokenContexts):
  """The prompts as a segment: ``(tokens, mask)``, left padding masked."""
  return x.tokens.astype(jnp.int32), x.mask.astype(bool)


def real_positions(mask: chex.Array) -> chex.Array:
  """RoPE positions counting real tokens only: ``max(cumsum(mask) - 1,
  0)``."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def last_real_index(mask: chex.Array) -> chex.Array:
  """``[B, 1]`` index of the last True of each row of ``mask [B, T]``."""
  last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
  return last.astype(jnp.int32)[:, None]


def check_token_ids(config: TransformerConfig, flag: str, ids) -> tuple:
  """``ids`` as a tuple of ints, each in ``[0, config.vocab_size)``;
  otherwise raises :class:`~nash_jax.errors.ConfigError` naming ``flag``."""
  ids = tuple(int(i) for i in ids)
  if any(i < 0 or i >= config.vocab_size for i in ids):
    raise ConfigError(flag, f'token ids must lie in [0, '
                      f'{config.vocab_size}), got {ids}')
  return ids
