"""Sampling from a tabular game: contexts, reference log-probabilities and
preference outcomes (the environment side of the sampled algorithms).

A sampled algorithm sees the game only through these functions and the
policy's ``sample``/``log_prob``, so that a language-model task (prompts from
a dataset, a frozen reference model, a preference model as judge) can supply
its own versions.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from nash_jax.distributions import sample_outcome
from nash_jax.games.core import Game


def sample_contexts(key, game: Game, batch_size: int) -> chex.Array:
  """``x_1..x_B ~ rho`` (``[B]`` int32), by inverse CDF (one uniform each).
  """
  if game.num_contexts == 1:
    return jnp.zeros((batch_size,), jnp.int32)
  cdf = jnp.cumsum(game.context_weights)
  u = jax.random.uniform(key, (batch_size, 1), cdf.dtype)
  index = jnp.sum(cdf[None, :] <= u * cdf[-1], axis=-1)
  return jnp.minimum(index, game.num_contexts - 1).astype(jnp.int32)


def reference_log_prob(game: Game, contexts, responses) -> chex.Array:
  """``log pi_ref(y|x)`` per sample, ``[B]``."""
  chex.assert_equal_shape([contexts, responses])
  return game.log_ref_policy[contexts, responses]


def preference_outcomes(key, game: Game, contexts, responses,
                        opponents, outcome: str) -> chex.Array:
  """Outcome ``o`` of ``y`` against ``y'`` per sample, ``[B]`` floats.

  ``outcome='bernoulli'``: ``o ~ Bernoulli(P(y > y' | x))`` (a human label);
  ``'probability'``: ``o = P(y > y' | x)`` (the preference model's
  probability). Either way each comparison is one preference query
  (:func:`nash_jax.distributions.sample_outcome`).
  """
  chex.assert_equal_shape([contexts, responses, opponents])
  prob = game.preferences[contexts, responses, opponents]
  return sample_outcome(key, prob, outcome)
