"""The preference-oracle protocol: :class:`PreferenceOracle` (pairs of
responses in, ``P(y > y' | x)`` out), its outcomes, and an environment
whose training queries an oracle answers."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex

from nash_jax.distributions import check_outcome, sample_outcome
from nash_jax.environments.core import TokenContexts

MODEL_KINDS = ('bradley_terry', 'pairwise')


class PreferenceOracle(NamedTuple):
  """A preference oracle on token sequences.

  Attributes:
    name: 'annotators', 'bradley_terry', 'pairwise' or 'judge'.
    probability: ``(params, x: TokenContexts, y [B, L], y_prime [B, L]) ->
      [B]``, ``P(y > y' | x)``; pure, jittable, vmappable, with ``P(y >
      y') + P(y' > y) = 1`` and ``P(y > y) = 1/2`` exactly.
  """

  name: str
  probability: Callable[[Any, TokenContexts, chex.Array, chex.Array],
                        chex.Array]


def oracle_outcomes(oracle: PreferenceOracle, params, key: chex.PRNGKey,
                    x: TokenContexts, y: chex.Array, y_prime: chex.Array,
                    outcome: str = 'bernoulli') -> chex.Array:
  """One preference query per pair: ``o ~ Bernoulli(P(y > y'|x))`` (a
  human-style label) or ``o = P`` (``outcome='probability'``;
  :func:`nash_jax.distributions.sample_outcome`). ``[B]``."""
  prob = oracle.probability(params, x, y, y_prime)
  return sample_outcome(key, prob, outcome)


def with_oracle(env, oracle: PreferenceOracle, outcome: str = 'bernoulli'):
  """The environment ``env`` with its training queries answered by
  ``oracle``, whose parameters are the environment data's ``oracle`` field
  (``env_params.oracle``: arguments of the compiled step, never constants,
  in every kind of run); everything else (contexts, reference, the exact
  ``game`` that evaluation reads) unchanged, so evaluation stays on the
  ground truth.
  """
  check_outcome(outcome)

  def outcomes(env_params, key, x, y, y_prime):
    return oracle_outcomes(oracle, env_params.oracle, key, x, y, y_prime,
                           outcome)

  return env._replace(outcomes=outcomes)
