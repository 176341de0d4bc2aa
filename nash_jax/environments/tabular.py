"""A tabular preference game as an environment (the protocol of
:mod:`nash_jax.environments.core`); ``env_params`` is the
:class:`~nash_jax.games.core.Game`.

Contexts are drawn from ``rho``, the oracle reads ``P[x, y, y']`` (a
Bernoulli label, or the probability itself), ``pi_ref`` comes in the context
data (``x.log_ref``, with the features the log-linear and MLP policies
read), and every response is listed, so the exact metrics apply.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

from nash_jax.distributions import check_outcome
from nash_jax.environments.core import Environment, TabularContexts
from nash_jax.games import oracle as oracle_lib
from nash_jax.games.core import Game


def context_data(game: Game, index: chex.Array) -> TabularContexts:
  """What a policy reads of contexts ``index [B]``: ``log pi_ref`` rows and
  the feature rows (where the game has features)."""
  take = lambda a: None if a is None else a[index]
  return TabularContexts(index=index, log_ref=game.log_ref_policy[index],
                         features=take(game.features),
                         context_features=take(game.context_features))


def all_contexts(game: Game) -> TabularContexts:
  """Every context ``0..X-1``, for per-context parameters and evaluation."""
  return context_data(game, jnp.arange(game.num_contexts))


def make_tabular_environment(outcome: str = 'bernoulli') -> Environment:
  """The tabular game whose queries return ``outcome`` (``bernoulli`` or
  ``probability``; see :func:`nash_jax.games.oracle.preference_outcomes`).
  """
  check_outcome(outcome)

  def contexts(game: Game, key, batch_size: int) -> TabularContexts:
    return context_data(game, oracle_lib.sample_contexts(key, game,
                                                         batch_size))

  def ref_log_prob(game: Game, x: TabularContexts, y):
    return oracle_lib.reference_log_prob(game, x.index, y)

  def outcomes(game: Game, key, x: TabularContexts, y, y_prime):
    return oracle_lib.preference_outcomes(key, game, x.index, y, y_prime,
                                          outcome)

  def log_policy(policy, params, game: Game):
    return policy.log_probs(params, all_contexts(game))

  return Environment(name='tabular', contexts=contexts,
                     all_contexts=all_contexts, ref_log_prob=ref_log_prob,
                     outcomes=outcomes, reference=lambda game: None,
                     log_policy=log_policy, game=lambda game: game)
