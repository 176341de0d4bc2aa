"""The policy interface every sampled algorithm uses (DESIGN.md: policy =
params pytree + apply functions).

A :class:`Policy` is a tuple of pure functions of a params pytree:

* ``init(key, game) -> params``
* ``sample(key, params, game, contexts, mixture=0.) -> responses [B]``: one
  response per context, drawn from ``pi_theta(.|x)``, or, with
  ``mixture = c > 0``, from the geometric mixture with logits
  ``(1 - c) log pi_theta + c log pi_ref`` (Nash-MD-PG's opponent).
* ``log_prob(params, game, contexts, responses) -> [B]``:
  ``log pi_theta(y|x)``.
* ``log_probs(params, game, contexts) -> [B, n]``: the whole distribution,
  for response sets small enough to enumerate (exact metrics, final
  policies); ``None`` where it cannot be enumerated.

Algorithms only call ``init``, ``sample`` and ``log_prob``, so a policy whose
response is a token sequence (an autoregressive language model: ``sample``
generates, ``log_prob`` sums token log-probabilities, the mixture is taken
per token) plugs in without changing any algorithm. The policies here all
have ``n`` enumerable responses and are built by :func:`enumerable` from a
function that returns their log-probabilities.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from nash_jax.games.core import Game
from nash_jax.rules import geometric_mixture, normalize


class Policy(NamedTuple):
  """A policy class as pure functions; see the module docstring."""

  name: str
  init: Callable[[chex.PRNGKey, Game], Any]
  sample: Callable[..., chex.Array]
  log_prob: Callable[[Any, Game, chex.Array, chex.Array], chex.Array]
  log_probs: Callable[[Any, Game, chex.Array], chex.Array] | None


def sample_categorical(key, log_probs: chex.Array) -> chex.Array:
  """One draw per row of ``[B, n]`` log-probabilities, by inverse CDF.

  One uniform per row, where ``jax.random.categorical`` (Gumbel-max) needs
  ``n``: random bits dominate the sampled step on CPU, and this is about
  twice as fast at n = 20. ``y = #{k : F(k) <= u F(n-1)}`` with the
  cumulative sums ``F``, so rows need not be normalized.
  """
  cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
  u = jax.random.uniform(key, cdf.shape[:-1] + (1,), cdf.dtype)
  index = jnp.sum(cdf <= u * cdf[..., -1:], axis=-1)
  return jnp.minimum(index, log_probs.shape[-1] - 1).astype(jnp.int32)


def enumerable(name: str, init: Callable, log_probs: Callable) -> Policy:
  """A :class:`Policy` over ``n`` responses from ``log_probs(params, game,
  contexts) -> [B, n]`` (normalized log-probabilities)."""

  def sample(key, params, game: Game, contexts, mixture=0.0):
    chex.assert_rank(contexts, 1)
    logits = log_probs(params, game, contexts)
    logits = geometric_mixture(logits, game.log_ref_policy[contexts], mixture)
    return sample_categorical(key, logits)

  def log_prob(params, game: Game, contexts, responses):
    chex.assert_equal_shape([contexts, responses])
    logits = log_probs(params, game, contexts)
    return jnp.take_along_axis(logits, responses[:, None], axis=-1)[:, 0]

  return Policy(name, init, sample, log_prob, log_probs)


def all_contexts(game: Game) -> chex.Array:
  """``[0, 1, ..., X - 1]``: every context, for exact evaluation."""
  return jnp.arange(game.num_contexts)


def full_log_policy(policy: Policy, params, game: Game) -> chex.Array:
  """``log pi_theta(y|x)`` for every context and response, ``[X, n]``."""
  return policy.log_probs(params, game, all_contexts(game))


def reference_plus(log_ref: chex.Array, scores: chex.Array) -> chex.Array:
  """``log pi ∝ log pi_ref + scores``: the parametrized policies start at
  ``pi_ref`` (scores 0) and can represent it."""
  return normalize(log_ref + scores)
