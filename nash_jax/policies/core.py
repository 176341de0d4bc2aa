"""The policy interface every algorithm uses (DESIGN.md: policy = params
pytree + pure functions).

A :class:`Policy` is a tuple of pure functions of a params pytree and of the
environment's context data ``x`` (never of a ``Game``: what a policy reads
comes in ``x``, see :mod:`nash_jax.environments`):

* ``init(key, x, reference) -> params``: initial parameters; ``x`` holds
  every context (policies with per-context parameters size them from it) and
  ``reference`` is the environment's reference (``None`` for a tabular game,
  whose ``pi_ref`` rows come in ``x.log_ref``; the frozen reference
  parameters of a language model, which it starts from).
* ``sample(key, params, x, mixture=0., reference=None) -> y``: one response
  per context, drawn from ``pi_theta(.|x)``, or, with ``mixture = c > 0``,
  from the geometric mixture with logits ``(1 - c) log pi_theta + c log
  pi_ref`` (Nash-MD-PG's opponent; per token for sequences).
* ``log_prob(params, x, y) -> [B]``: ``log pi_theta(y|x)``.
* ``log_probs(params, x) -> [B, n]``: the whole distribution, for policies
  over ``n`` enumerable responses; ``None`` for sequence policies (their
  environment lists the responses and calls ``log_prob``).
* ``num_tokens(y) -> int``: the tokens a batch of responses took to
  generate (sequence policies: every sampled token up to and including
  EOS), for cost accounting; ``None`` where responses are not generated
  token by token.
* ``logical_axes() -> pytree``: the logical axis names of the parameters'
  dimensions (the params' structure, a tuple of names per parameter), from
  which :mod:`nash_jax.sharding` splits them over a device mesh (model
  parallel); ``None`` (tabular, log-linear, MLP) keeps every parameter
  replicated. A function rather than the tree, so that a policy stays
  hashable.

Algorithms call only ``init``, ``sample`` and ``log_prob``, so a tabular
softmax, a log-linear model, an MLP and a transformer run through one
implementation of each algorithm. The enumerable policies here are built by
:func:`enumerable` from a function that returns their log-probabilities.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax.numpy as jnp

from nash_jax.distributions import (
  geometric_mixture,
  normalize,
  sample_categorical,
)


class Policy(NamedTuple):
  """A policy class as pure functions; see the module docstring."""

  name: str
  init: Callable[[chex.PRNGKey, Any, Any], Any]
  sample: Callable[..., chex.Array]
  log_prob: Callable[[Any, Any, chex.Array], chex.Array]
  log_probs: Callable[[Any, Any], chex.Array] | None
  num_tokens: Callable[[chex.Array], chex.Array] | None = None
  logical_axes: Callable[[], Any] | None = None


def enumerable(name: str, init: Callable, log_probs: Callable) -> Policy:
  """A :class:`Policy` over ``n`` responses from ``log_probs(params, x) ->
  [B, n]`` (normalized log-probabilities); the mixture's reference is
  ``x.log_ref``."""

  def sample(key, params, x, mixture=0.0, reference=None):
    del reference
    chex.assert_rank(x.index, 1)
    logits = log_probs(params, x)
    logits = geometric_mixture(logits, x.log_ref, mixture)
    return sample_categorical(key, logits)

  def log_prob(params, x, responses):
    chex.assert_equal_shape([x.index, responses])
    logits = log_probs(params, x)
    return jnp.take_along_axis(logits, responses[:, None], axis=-1)[:, 0]

  return Policy(name, init, sample, log_prob, log_probs)


def reference_plus(log_ref: chex.Array, scores: chex.Array) -> chex.Array:
  """``log pi ∝ log pi_ref + scores``: the parametrized policies start at
  ``pi_ref`` (scores 0) and can represent it."""
  return normalize(log_ref + scores)
