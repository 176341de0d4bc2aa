"""Exact metrics of a tabular policy (ALGORITHMS.md section 2).

All functions take log-probabilities ``log_policy[x, y]`` (normalized) and a
:class:`~nash_jax.games.Game`, work in the game's dtype, and are jittable and
vmappable. ``beta`` may be a traced value.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from nash_jax.games.core import Game, expectation, win_rates

METRICS = ('kl_to_equilibrium', 'duality_gap', 'exploitability',
           'fixed_point_residual', 'win_rate_vs_ref')
# What a run whose responses cannot be listed reports instead, estimated by
# sampling (nash_jax.evaluation.sampled_evaluator).
SAMPLED_METRICS = ('win_rate_vs_ref', 'win_rate_vs_ref_se', 'kl_to_ref',
                   'response_length', 'eos_rate')


def kl(log_p: chex.Array, log_q: chex.Array) -> chex.Array:
  """``KL(p || q)`` per context, ``[X]``; terms with ``p = 0`` count as 0."""
  p = jnp.exp(log_p)
  terms = jnp.where(p > 0, p * (log_p - log_q), 0.0)
  return jnp.sum(terms, axis=-1)


def kl_to_equilibrium(log_policy, log_equilibrium, game: Game):
  """``KL_rho(pi* || pi) = E_x KL(pi*(.|x) || pi(.|x))``."""
  return expectation(game, kl(log_equilibrium, log_policy))


def kl_to_ref(log_policy, game: Game):
  """``KL_rho(pi || pi_ref)``."""
  return expectation(game, kl(log_policy, game.log_ref_policy))


def fixed_point_residual(log_policy, game: Game, beta):
  """``E_x span_y(log pi - log pi_ref - g_pi / beta)``; zero exactly at pi*_beta.

  The span is max minus min over responses. Undefined (NaN) for beta = 0.
  """
  g = win_rates(game.preferences, jnp.exp(log_policy))
  residual = log_policy - game.log_ref_policy - g / beta
  span = jnp.max(residual, axis=-1) - jnp.min(residual, axis=-1)
  return jnp.where(beta > 0, expectation(game, span), jnp.nan)


def best_response_value(log_policy, game: Game, beta):
  """``M_beta(pi) = beta E_x log sum_y pi_ref(y|x) exp(g_pi(y|x) / beta)``.

  The value of the regularized best response ``pi' ∝ pi_ref exp(g_pi / beta)``;
  for ``beta = 0`` its limit ``E_x max_y g_pi(y|x)``.
  """
  g = win_rates(game.preferences, jnp.exp(log_policy))
  safe_beta = jnp.where(beta > 0, beta, 1.0)
  soft = safe_beta * jax.nn.logsumexp(game.log_ref_policy + g / safe_beta,
                                      axis=-1)
  hard = jnp.max(g, axis=-1)
  return expectation(game, jnp.where(beta > 0, soft, hard))


def duality_gap(log_policy, game: Game, beta):
  """Regularized duality gap ``2 (M_beta(pi) + beta KL_rho(pi||pi_ref)) - 1``.

  ``max_pi' J_beta(pi', pi) - min_pi' J_beta(pi, pi')``; non-negative, zero only
  at pi*_beta. At ``beta = 0`` it is twice the exploitability.
  """
  return 2 * (best_response_value(log_policy, game, beta) +
              beta * kl_to_ref(log_policy, game)) - 1


def exploitability(log_policy, game: Game):
  """Unregularized exploitability ``E_x max_y g_pi(y|x) - 1/2`` in [0, 1/2]."""
  g = win_rates(game.preferences, jnp.exp(log_policy))
  return expectation(game, jnp.max(g, axis=-1)) - 0.5


def win_rate(log_policy, log_opponent, game: Game):
  """``P(pi > pi') = E_x sum_{y,y'} pi(y|x) pi'(y'|x) P(y > y'|x)``."""
  g = win_rates(game.preferences, jnp.exp(log_opponent))
  return expectation(game, jnp.sum(jnp.exp(log_policy) * g, axis=-1))


def evaluate(log_policy, game: Game, beta, log_equilibrium) -> dict:
  """Every metric of :data:`METRICS` for one policy, as a dict of scalars."""
  return {
      'kl_to_equilibrium': kl_to_equilibrium(log_policy, log_equilibrium, game),
      'duality_gap': duality_gap(log_policy, game, beta),
      'exploitability': exploitability(log_policy, game),
      'fixed_point_residual': fixed_point_residual(log_policy, game, beta),
      'win_rate_vs_ref': win_rate(log_policy, game.log_ref_policy, game),
  }
