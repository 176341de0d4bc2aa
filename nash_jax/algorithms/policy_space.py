"""Exact NLHF algorithms in policy space (ALGORITHMS.md section 3).

The state's ``params`` are normalized log-probabilities ``log pi[x, y]``. Query
accounting: one exact evaluation of the win rates ``g_pi`` against a policy
counts as one preference query (its sampled analogue compares a batch of
responses with one opponent policy). So ``omd``, ``mmd``, ``omwu``, ``nash_md``
and ``sppo`` use 1 query a step, ``extragradient`` and ``nash_mp`` 2, and
``proximal_point`` one per inner self-play step plus one at the anchor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nash_jax import rules
from nash_jax.algorithms.base import (
  Algorithm,
  AlgorithmConfig,
  PolicyState,
  advance,
  new_state,
)
from nash_jax.environments.tabular import all_contexts
from nash_jax.games.core import Game, win_rates
from nash_jax.policies.core import Policy
from nash_jax.policies.tabular import log_table


def _g(game: Game, log_policy):
  return win_rates(game.preferences, jnp.exp(log_policy))


def _init(policy: Policy):
  """The initial state: the tabular policy's initial log-probabilities."""
  def init(key, game: Game) -> PolicyState:
    init_key, key = jax.random.split(key)
    return new_state(key, policy.init(init_key, all_contexts(game), None))
  return init


def _one_query_algorithm(name, policy, update):
  """An algorithm whose step is ``update(log_pi, log_ref, g_pi)``, 1 query."""
  def step(state: PolicyState, game: Game):
    log_pi = state.params
    new = update(log_pi, game.log_ref_policy, _g(game, log_pi))
    return advance(state, new, state.extra, 1), {}
  return Algorithm(name, _init(policy), step, log_table(policy))


def make_omd(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Online mirror descent / MWU self-play on ``J_beta``; see rules.mirror_descent."""
  eta, beta = config.eta, config.beta
  return _one_query_algorithm(
      'omd', policy,
      lambda lp, lr, g: rules.mirror_descent(lp, lr, g, eta, beta))


def make_mmd(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Magnetic mirror descent; see rules.magnetic_mirror_descent."""
  eta, beta = config.eta, config.beta
  return _one_query_algorithm(
      'mmd', policy,
      lambda lp, lr, g: rules.magnetic_mirror_descent(lp, lr, g, eta, beta))


def make_sppo(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """SPPO-style MWU without reference: ``pi_{t+1} ∝ pi_t exp(eta g_t)``.

  It ignores ``beta``: it is not aimed at ``pi*_beta`` and its last iterate
  need not converge on intransitive games (it does on transitive ones).
  """
  eta = config.eta
  return _one_query_algorithm(
      'sppo', policy, lambda lp, lr, g: rules.normalize(lp + eta * g))


def make_nash_md(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Nash-MD (Munos et al. 2024): play against the mixture, update from pi_t.

  ``pi^mu ∝ pi_t^{1 - eta beta} pi_ref^{eta beta}``,
  ``pi_{t+1} ∝ pi^mu exp(eta g_{pi^mu})``.
  """
  eta, beta = config.eta, config.beta

  def step(state: PolicyState, game: Game):
    mixture = rules.geometric_mixture(state.params, game.log_ref_policy,
                                      eta * beta)
    new = rules.normalize(mixture + eta * _g(game, mixture))
    return advance(state, new, state.extra, 1), {}
  return Algorithm('nash_md', _init(policy), step, log_table(policy))


def make_omwu(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Optimistic MWU: mirror descent with ``2 g_t - g_{t-1}``.

  ``extra`` holds ``g_{t-1}``; at ``t = 0`` it is ``g_0`` (a plain step).
  """
  eta, beta = config.eta, config.beta
  base_init = _init(policy)

  def init(key, game: Game) -> PolicyState:
    state = base_init(key, game)
    return state.replace(extra=_g(game, state.params))

  def step(state: PolicyState, game: Game):
    g = _g(game, state.params)
    new = rules.mirror_descent(state.params, game.log_ref_policy,
                               2 * g - state.extra, eta, beta)
    return advance(state, new, g, 1), {}
  return Algorithm('omwu', init, step, log_table(policy))


def make_extragradient(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Extragradient (EGPO): a mirror half step, then a step from ``pi_t``.

  ``pi_{t+1/2} ∝ pi_t^{1-eta beta} pi_ref^{eta beta} exp(eta g_t)``, then the same
  with ``g_{t+1/2}``. 2 queries a step.
  """
  eta, beta = config.eta, config.beta

  def step(state: PolicyState, game: Game):
    log_pi, log_ref = state.params, game.log_ref_policy
    half = rules.mirror_descent(log_pi, log_ref, _g(game, log_pi), eta, beta)
    new = rules.mirror_descent(log_pi, log_ref, _g(game, half), eta, beta)
    return advance(state, new, state.extra, 2), {}
  return Algorithm('extragradient', _init(policy), step, log_table(policy))


def make_nash_mp(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Nash Mirror Prox: two prox steps from the anchor ``pi_k``.

  ``pi_{k+1/2} ∝ pi_ref^kappa pi_k^{1-kappa} exp(lambda g_{pi_k})``,
  ``pi_{k+1} ∝ pi_ref^kappa pi_k^{1-kappa} exp(lambda g_{pi_{k+1/2}})``.
  With ``eta = 2 beta`` the claimed contraction is ``1 / (1 + 2 beta)`` per
  step in ``KL(pi*_beta || pi_k)``. 2 queries a step.
  """
  eta, beta = config.eta, config.beta

  def step(state: PolicyState, game: Game):
    log_pi, log_ref = state.params, game.log_ref_policy
    half = rules.prox_step(log_pi, log_ref, _g(game, log_pi), eta, beta)
    new = rules.prox_step(log_pi, log_ref, _g(game, half), eta, beta)
    return advance(state, new, state.extra, 2), {}
  return Algorithm('nash_mp', _init(policy), step, log_table(policy))


def default_inner_eta(eta, beta):
  """Inner mirror-descent step for the prox game (strength ``beta'``).

  Mirror descent on a ``beta'``-regularized game is a contraction when
  ``c = eta' beta' < 2 beta'^2 / (beta'^2 + w^2)``, ``w`` the largest modulus of
  an eigenvalue of ``(P - 1/2)(diag pi - pi pi^T)`` (at most about 0.32 in our
  random search; we take ``w = 1/2``). The default is the middle of that range,
  ``c = beta'^2 / (beta'^2 + 1/4)``.
  """
  beta_prox = beta * (1 + 1 / eta)
  return beta_prox / (beta_prox ** 2 + 0.25)


def make_proximal_point(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Exact proximal point with an inner self-play solver.

  Outer step: ``pi_{k+1}`` = the equilibrium of the prox game, i.e. the
  ``beta' = beta (1 + 1/eta)``-regularized game with reference
  ``pi~ ∝ pi_ref^kappa pi_k^{1-kappa}``. Inner solver: mirror-descent self-play
  from ``pi_k`` with step ``inner_eta``, for ``inner_steps`` steps, or (when
  ``inner_steps = 0``) until the prox game's span residual
  ``span(log pi - log pi~ - lambda g_pi)`` is below ``inner_tolerance``
  (at most ``max_inner_steps``). Queries: one per inner step plus one at the
  anchor in tolerance mode. ``info['inner_steps']`` reports the inner steps.
  """
  eta, beta = config.eta, config.beta
  beta_prox = beta * (1 + 1 / eta)
  inner_eta = config.inner_eta
  tol = config.inner_tolerance

  def inner_update(log_pi, log_prox_ref, g):
    return rules.mirror_descent(log_pi, log_prox_ref, g, inner_eta, beta_prox)

  def step(state: PolicyState, game: Game):
    log_anchor = state.params
    log_prox_ref = rules.prox_reference(log_anchor, game.log_ref_policy, eta)
    if (config.inner_steps or 0) > 0:
      def body(_, log_pi):
        return inner_update(log_pi, log_prox_ref, _g(game, log_pi))
      new = jax.lax.fori_loop(0, config.inner_steps, body, log_anchor)
      inner, queries = config.inner_steps, config.inner_steps
    else:
      def span(log_pi, g):
        r = log_pi - log_prox_ref - g / beta_prox
        return jnp.max(jnp.max(r, axis=-1) - jnp.min(r, axis=-1))

      def cond(carry):
        log_pi, g, i = carry
        return (span(log_pi, g) > tol) & (i < config.max_inner_steps)

      def body(carry):
        log_pi, g, i = carry
        log_pi = inner_update(log_pi, log_prox_ref, g)
        return log_pi, _g(game, log_pi), i + 1

      new, _, inner = jax.lax.while_loop(
          cond, body, (log_anchor, _g(game, log_anchor), jnp.int32(0)))
      queries = inner + 1
    return (advance(state, new, state.extra, queries),
            {'inner_steps': jnp.asarray(inner, jnp.int32)})
  return Algorithm('proximal_point', _init(policy), step, log_table(policy))
