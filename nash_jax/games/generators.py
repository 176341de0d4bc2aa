"""Preference game generators, each a pure function of a PRNG key.

Every generator returns a :class:`~nash_jax.games.core.Game` with
``P + P^T = 1`` exactly (the upper triangle is built from the lower one), uniform
context weights and a uniform or Dirichlet-random reference policy.

Every generated game also carries Gaussian response features
``phi(x, y) ~ N(0, I_d)`` and context features ``psi(x) ~ N(0, I_d)`` for the
parametrized policies (``feature_dim = d``; 0 for none). They are drawn from a
key folded off the game's key, so adding them leaves the preferences as they
were. In most families the preferences ignore them; in ``annotators`` the
preferences are functions of ``phi``, so that a policy sharing parameters
across contexts can generalize.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nash_jax.games.core import Game

REF_POLICIES = ('uniform', 'random')


def _antisymmetric_to_preferences(lower: jax.Array) -> jax.Array:
  """Builds ``P`` from its strict lower triangle: ``P = L + (1 - L^T)`` off diag."""
  n = lower.shape[-1]
  mask = jnp.tril(jnp.ones((n, n), bool), k=-1)
  lower = jnp.where(mask, lower, 0)
  upper = jnp.where(mask.T, 1 - jnp.swapaxes(lower, -1, -2), 0)
  half = jnp.expand_dims(jnp.eye(n, dtype=lower.dtype) * 0.5,
                         tuple(range(lower.ndim - 2)))
  return lower + upper + half


def random_preferences(key, num_contexts, num_actions, dtype):
  """Uniform lower triangle: ``P(y > y') ~ U(0, 1)`` for ``y > y'``."""
  lower = jax.random.uniform(key, (num_contexts, num_actions, num_actions),
                             dtype)
  return _antisymmetric_to_preferences(lower)


def bradley_terry_preferences(key, num_contexts, num_actions, dtype,
                              reward_scale=1.0):
  """Transitive Bradley-Terry: ``P(y > y') = sigmoid(r(y) - r(y'))``.

  Rewards ``r[x, y] ~ N(0, reward_scale^2)``; ``argmax_y r`` is the Condorcet
  winner, hence the von Neumann winner.
  """
  rewards = reward_scale * jax.random.normal(key, (num_contexts, num_actions),
                                             dtype)
  diff = rewards[:, :, None] - rewards[:, None, :]
  return _antisymmetric_to_preferences(jax.nn.sigmoid(diff))


def cyclic_preferences(key, num_contexts, num_actions, dtype):
  """Rock-paper-scissors family: a circulant, intransitive preference.

  ``P(y > y') = 1/2 + c[(y - y') mod n]`` with ``c[k] = -c[n - k]``; for
  ``k = 1..floor((n-1)/2)``, ``c[k] ~ U(0, 1/2]`` (response ``y`` beats the
  ``k``-th response before it). Every response has the same win rate against
  the uniform policy, so uniform is a von Neumann winner, and with a uniform
  ``pi_ref`` it is also ``pi*_beta`` for every ``beta``. ``n = 3`` is
  rock-paper-scissors.
  """
  n = num_actions
  half = (n - 1) // 2
  strengths = 0.5 * (1 - jax.random.uniform(key, (num_contexts, half), dtype))
  offsets = jnp.zeros((num_contexts, n), dtype)
  offsets = offsets.at[:, 1:half + 1].set(strengths)
  offsets = offsets.at[:, n - half:].add(-strengths[:, ::-1])
  idx = (jnp.arange(n)[:, None] - jnp.arange(n)[None, :]) % n
  return 0.5 + offsets[:, idx]


def population_preferences(key, num_contexts, num_actions, dtype,
                           num_annotators=3, reward_scale=3.0):
  """Average of several annotators' Bradley-Terry preferences.

  ``P(y > y') = mean_k sigmoid(r_k(y) - r_k(y'))``, ``r_k[x, y] ~ N(0, s^2)``.
  With a few sharp annotators this is often intransitive (Condorcet's paradox).
  """
  rewards = reward_scale * jax.random.normal(
      key, (num_annotators, num_contexts, num_actions), dtype)
  diff = rewards[..., :, None] - rewards[..., None, :]
  return _antisymmetric_to_preferences(jnp.mean(jax.nn.sigmoid(diff), axis=0))


def annotator_preferences(key, features, num_annotators=3,
                          reward_scale=3.0):
  """A population of annotators whose rewards are linear in the features.

  ``P(y > y' | x) = mean_k sigmoid(r_k(x, y) - r_k(x, y'))`` with
  ``r_k(x, y) = w_k . phi(x, y)`` and ``w_k ~ N(0, reward_scale^2 / d I)``
  shared across contexts. Intransitive for a few sharp annotators (as
  ``population``), and the same weights rank the responses of every context,
  so what a parametrized policy learns on one context transfers.

  Args:
    key: PRNG key for the annotators' weights.
    features: ``[X, n, d]`` response features.
  """
  dim = features.shape[-1]
  weights = reward_scale / jnp.sqrt(dim) * jax.random.normal(
      key, (num_annotators, dim), features.dtype)
  rewards = jnp.einsum('xyd,kd->kxy', features, weights)
  diff = rewards[..., :, None] - rewards[..., None, :]
  return _antisymmetric_to_preferences(jnp.mean(jax.nn.sigmoid(diff), axis=0))


def tie_preferences(key, num_contexts, num_actions, dtype):
  """Every comparison a tie: ``P = 1/2``; ``pi*_beta = pi_ref``."""
  del key
  return jnp.full((num_contexts, num_actions, num_actions), 0.5, dtype)


def deterministic_preferences(key, num_contexts, num_actions, dtype):
  """A random tournament: each pair is won outright, ``P in {0, 1}`` off diag."""
  coins = jax.random.bernoulli(key, 0.5,
                               (num_contexts, num_actions, num_actions))
  return _antisymmetric_to_preferences(coins.astype(dtype))


GENERATORS: dict[str, Callable[..., jax.Array]] = {
    'random': random_preferences,
    'bradley_terry': bradley_terry_preferences,
    'cyclic': cyclic_preferences,
    'population': population_preferences,
    'tie': tie_preferences,
    'deterministic': deterministic_preferences,
}


def reference_policy(key, kind, num_contexts, num_actions, dtype):
  """``pi_ref``: ``'uniform'``, or ``'random'`` drawn from Dirichlet(1)."""
  if kind == 'uniform':
    return jnp.full((num_contexts, num_actions), 1.0 / num_actions, dtype)
  if kind == 'random':
    probs = jax.random.dirichlet(key, jnp.ones((num_actions,), dtype),
                                 (num_contexts,))
    # Keep pi_ref strictly positive so log pi_ref is finite.
    probs = jnp.maximum(probs, jnp.finfo(dtype).tiny * 1e10)
    return probs / jnp.sum(probs, axis=-1, keepdims=True)
  raise ValueError(f'unknown reference policy {kind!r}; '
                   f'expected one of {REF_POLICIES}')


def random_features(key, num_contexts, num_actions, feature_dim, dtype):
  """``(phi, psi)``: response features ``[X, n, d]`` and context features
  ``[X, d]``, standard Gaussian."""
  phi_key, psi_key = jax.random.split(key)
  phi = jax.random.normal(phi_key, (num_contexts, num_actions, feature_dim),
                          dtype)
  psi = jax.random.normal(psi_key, (num_contexts, feature_dim), dtype)
  return phi, psi


FEATURE_GAMES = ('annotators',)


def generate_game(key, game: str, num_contexts: int, num_actions: int,
                  ref_policy: str = 'uniform', dtype=jnp.float32,
                  feature_dim: int = 0) -> Game:
  """Draws a game of a named family. Jittable for fixed names and sizes.

  ``feature_dim > 0`` adds features (see the module docstring); the
  ``annotators`` family needs them.
  """
  if game not in GENERATORS and game not in FEATURE_GAMES:
    raise ValueError(f'unknown game {game!r}; expected one of '
                     f'{sorted(GENERATORS) + list(FEATURE_GAMES)}')
  if game in FEATURE_GAMES and feature_dim < 1:
    raise ValueError(f'game {game!r} needs feature_dim >= 1')
  pref_key, ref_key = jax.random.split(key)
  features = context_features = None
  if feature_dim > 0:
    features, context_features = random_features(
        jax.random.fold_in(key, 1), num_contexts, num_actions, feature_dim,
        dtype)
  if game == 'annotators':
    preferences = annotator_preferences(pref_key, features)
  else:
    preferences = GENERATORS[game](pref_key, num_contexts, num_actions, dtype)
  ref = reference_policy(ref_key, ref_policy, num_contexts, num_actions, dtype)
  weights = jnp.full((num_contexts,), 1.0 / num_contexts, dtype)
  return Game(preferences=preferences, context_weights=weights, ref_policy=ref,
              features=features, context_features=context_features)
