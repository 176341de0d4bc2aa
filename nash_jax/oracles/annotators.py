"""The ground-truth oracle: the token game's annotator population behind
the oracle protocol (:func:`annotator_oracle`)."""

from __future__ import annotations

import chex
import flax.struct

from nash_jax.environments import tokens as token_env
from nash_jax.environments.core import TokenContexts
from nash_jax.oracles.core import PreferenceOracle


@flax.struct.dataclass
class AnnotatorParams:
  """The annotator population's data (field names as in
  :class:`~nash_jax.environments.tokens.TokenEnvParams`, which therefore
  serves as well).

  Attributes:
    sharpness: ``[K]`` ``tau_k``.
    annotator_weights: ``[K]`` ``w_k`` (summing to 1).
  """

  sharpness: chex.Array
  annotator_weights: chex.Array


def annotator_params(env_params) -> AnnotatorParams:
  """The annotators' data of a ``TokenEnvParams`` (or anything with
  ``sharpness`` and ``annotator_weights``)."""
  return AnnotatorParams(env_params.sharpness, env_params.annotator_weights)


def _annotator_probability(params, x: TokenContexts, y: chex.Array,
                           y_prime: chex.Array) -> chex.Array:
  topic = token_env.prompt_topic(x.tokens, x.mask)
  return token_env.oracle_probability(topic, y, y_prime, params.sharpness,
                                      params.annotator_weights)


def annotator_oracle() -> PreferenceOracle:
  """The ground truth: the token game's annotator population,
  ``P(y > y'|x) = sum_k w_k sigmoid(tau_k (s_k(x, y) - s_k(x, y')))``
  (:func:`nash_jax.environments.tokens.oracle_probability`), read from the
  prompt's topic token and the responses' tokens. Its scores are computed
  by sorting, so it judges responses of any length (exact in the listable
  game, usable where nothing can be listed). ``params``:
  :class:`AnnotatorParams` or the environment's ``TokenEnvParams``."""
  return PreferenceOracle('annotators', _annotator_probability)
