"""The token game's oracle: three annotators' scores of a response, the
population's preference ``P = sum_k w_k sigmoid(tau_k (s_k(x, y) - s_k(x,
y')))`` and Condorcet winners (see :mod:`nash_jax.environments.tokens`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.environments.tokens.vocabulary import content_mask

ANNOTATORS = ('on_topic', 'concise', 'diverse')


def annotator_scores(topic: chex.Array, y: chex.Array,
                     dtype=None) -> chex.Array:
  """The annotators' scores ``s_k(x, y)``, ``[..., 3]`` in the order of
  :data:`ANNOTATORS`: topic mentions, minus the length, and the number of
  distinct content tokens other than the topic (counted by sorting, so any
  ``L`` and any vocabulary).

  Args:
    topic: ``[...]`` the prompt's topic token.
    y: ``[..., L]`` responses.
    dtype: float dtype of the scores (default: JAX's default float).
  """
  dtype = dtype or jnp.result_type(float)
  valid = content_mask(y)
  on_topic = jnp.sum(valid & (y == topic[..., None]), axis=-1)
  length = jnp.sum(valid, axis=-1)
  off = jnp.sort(jnp.where(valid & (y != topic[..., None]), y, -1), axis=-1)
  first = (off[..., 1:] != off[..., :-1]) & (off[..., 1:] >= 0)
  distinct = jnp.sum(first, axis=-1) + (off[..., 0] >= 0)
  return jnp.stack([on_topic, -length, distinct], axis=-1).astype(dtype)


def population_preference(score_diff: chex.Array, sharpness: chex.Array,
                          weights: chex.Array) -> chex.Array:
  """``P = sum_k w_k sigmoid(tau_k d_k)`` from ``d_k = s_k(y) - s_k(y')``.

  Computed so that ``P(d) + P(-d) = 1`` exactly in floating point: the
  antisymmetric part ``A = sum_k w_k sign(d_k) (sigmoid(tau_k |d_k|) -
  1/2)`` flips sign exactly with ``d`` (same terms, same order), and with
  ``h = min(1/2 + |A|, 1)`` the result is ``h`` if ``A >= 0``, else ``1 -
  h``, which is exact for ``h`` in ``[1/2, 1]`` (Sterbenz). ``P(0) = 1/2``.

  Args:
    score_diff: ``[..., K]``.
    sharpness: ``[K]`` ``tau_k >= 0``.
    weights: ``[K]`` ``w_k >= 0``, summing to 1.

  Returns:
    ``[...]`` probabilities in ``[0, 1]``.
  """
  num = score_diff.shape[-1]
  chex.assert_shape([sharpness, weights], (num,))
  shape = (1,) * (score_diff.ndim - 1) + (num,)  # No rank promotion.
  sharpness, weights = sharpness.reshape(shape), weights.reshape(shape)
  half_gap = jax.nn.sigmoid(sharpness * jnp.abs(score_diff)) - 0.5
  # The sign comes last: a multiply-add that XLA may fuse into an FMA then
  # multiplies by +-1 or 0 (exact), so fused and unfused code round alike.
  terms = (weights * half_gap) * jnp.sign(score_diff)
  antisym = terms[..., 0]
  for k in range(1, num):  # A fixed order, the same for every shape.
    antisym = antisym + terms[..., k]
  high = jnp.minimum(0.5 + jnp.abs(antisym), 1.0)
  return jnp.where(antisym >= 0, high, 1.0 - high)


def oracle_probability(topic: chex.Array, y: chex.Array, y_prime: chex.Array,
                       sharpness: chex.Array,
                       weights: chex.Array) -> chex.Array:
  """The ground truth ``P(y > y' | x)`` for topics ``[...]`` and responses
  ``[..., L]``: :func:`population_preference` of score differences."""
  chex.assert_equal_shape([y, y_prime])
  dtype = sharpness.dtype
  diff = (annotator_scores(topic, y, dtype) -
          annotator_scores(topic, y_prime, dtype))
  return population_preference(diff, sharpness, weights)


def preference_tensor_of(topics: chex.Array, responses: chex.Array,
                         sharpness: chex.Array,
                         weights: chex.Array) -> chex.Array:
  """``P[x, y, y']`` for topics ``[X]`` and responses ``[N, L]``: the
  scores of every response once, then the same link as
  :func:`oracle_probability` on all differences. ``[X, N, N]``."""
  chex.assert_rank([topics, responses], [1, 2])
  num = responses.shape[0]
  topic_rows = jnp.broadcast_to(topics[:, None], (topics.shape[0], num))
  scores = annotator_scores(topic_rows, jnp.broadcast_to(
      responses, (topics.shape[0],) + responses.shape), sharpness.dtype)
  diff = scores[:, :, None, :] - scores[:, None, :, :]
  return population_preference(diff, sharpness, weights)


def condorcet_winners(preferences, weak: bool = True) -> np.ndarray:
  """Per context, a Condorcet winner's index, or -1 where there is none.

  A (strict) Condorcet winner ``y`` has ``P(y > y'|x) > 1/2`` for every
  ``y' != y``; a weak one ``>= 1/2`` (nobody beats it). Where several weak
  winners exist (ties), the first is returned.

  Args:
    preferences: ``[X, n, n]``.
    weak: look for weak winners (a stronger check of intransitivity).

  Returns:
    ``[X]`` int.
  """
  prefs = np.asarray(preferences, np.float64)
  off_diagonal = ~np.eye(prefs.shape[-1], dtype=bool)
  wins = prefs >= 0.5 if weak else prefs > 0.5
  beats_all = np.all(wins | ~off_diagonal, axis=-1)
  return np.where(beats_all.any(axis=-1), np.argmax(beats_all, axis=-1), -1)
