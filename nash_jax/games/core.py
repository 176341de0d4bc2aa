"""The preference game as data.

A game is a pytree (ALGORITHMS.md section 1): preferences ``P[x, y, y'] =
P(y > y' | x)`` with ``P + P^T = 1``, context weights ``rho[x]`` and a reference
policy ``pi_ref[x, y]``. Being a pytree, a batch of games is just another vmap
axis (like gymnax's ``EnvParams``).
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Game:
  """A contextual preference game.

  Attributes:
    preferences: ``[X, n, n]``; ``preferences[x, y, y'] = P(y > y' | x)``.
    context_weights: ``[X]``, the context distribution ``rho`` (sums to 1).
    ref_policy: ``[X, n]``, the reference policy ``pi_ref`` (rows sum to 1,
      strictly positive).
    features: ``[X, n, d]`` response features ``phi(x, y)`` that parametrized
      policies (log-linear, MLP) read, or ``None``.
    context_features: ``[X, d]`` context embeddings ``psi(x)``, or ``None``.
  """

  preferences: chex.Array
  context_weights: chex.Array
  ref_policy: chex.Array
  features: chex.Array | None = None
  context_features: chex.Array | None = None

  @property
  def num_contexts(self) -> int:
    return self.preferences.shape[-3]

  @property
  def num_actions(self) -> int:
    return self.preferences.shape[-1]

  @property
  def log_ref_policy(self) -> chex.Array:
    return jnp.log(self.ref_policy)

  @property
  def feature_dim(self) -> int:
    return 0 if self.features is None else self.features.shape[-1]


def win_rates(preferences: chex.Array, policy: chex.Array) -> chex.Array:
  """Win rate of every response against a policy, ``g_pi(y|x) = P(y > pi | x)``.

  ``g_pi(y|x) = sum_{y'} P(y > y' | x) pi(y'|x)`` (ALGORITHMS.md section 1).
  Written as a batched dot: on XLA:CPU a multiply-and-reduce over the last
  axis of ``[S, X, n, n]`` sums in a different order for different seed
  counts, which breaks bit-identical sweeps; the dot does not
  (tests/test_train.py pins this).

  Args:
    preferences: ``[X, n, n]``.
    policy: ``[X, n]`` probabilities.

  Returns:
    ``[X, n]`` win rates in ``[0, 1]``.
  """
  chex.assert_rank(preferences, 3)
  chex.assert_rank(policy, 2)
  return jnp.einsum('xyz,xz->xy', preferences, policy)


def preference_of(preferences: chex.Array, policy: chex.Array,
                  opponent: chex.Array) -> chex.Array:
  """``P(pi > pi' | x)`` per context, ``[X]``."""
  return jnp.sum(policy * win_rates(preferences, opponent), axis=-1)


def expectation(game: Game, per_context: chex.Array) -> chex.Array:
  """``E_{x ~ rho}`` of a per-context quantity ``[X]``."""
  return jnp.sum(game.context_weights * per_context)


def make_game(preferences, ref_policy=None, context_weights=None,
              dtype=None, features=None, context_features=None) -> Game:
  """Builds a :class:`Game`, filling in uniform ``pi_ref`` and ``rho``.

  Accepts preferences of shape ``[n, n]`` (one context) or ``[X, n, n]``.
  ``features`` (``[X, n, d]``) and ``context_features``
  (``[X, d]``) are optional. No validation happens here; see :mod:`nash_jax.games.files` for checks on
  user-provided data.
  """
  preferences = jnp.asarray(preferences, dtype=dtype)
  dtype = preferences.dtype
  if preferences.ndim == 2:
    preferences = preferences[None]
  num_contexts, num_actions = preferences.shape[0], preferences.shape[-1]
  if ref_policy is None:
    ref_policy = jnp.full((num_contexts, num_actions), 1.0 / num_actions, dtype)
  ref_policy = jnp.asarray(ref_policy, dtype)
  if ref_policy.ndim == 1:
    ref_policy = jnp.broadcast_to(ref_policy, (num_contexts, num_actions))
  if context_weights is None:
    context_weights = jnp.full((num_contexts,), 1.0 / num_contexts, dtype)
  context_weights = jnp.asarray(context_weights, dtype)
  as_array = lambda a: None if a is None else jnp.asarray(a, dtype)
  return Game(preferences=preferences, context_weights=context_weights,
              ref_policy=ref_policy, features=as_array(features),
              context_features=as_array(context_features))


def stack_games(games) -> Game:
  """Stacks games of equal shape along a new leading (seed) axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *games)
