"""The environment protocol: what an algorithm learns against (DESIGN.md,
"Environments and policies are injected").

An :class:`Environment` is a tuple of pure functions of its data
``env_params`` (a pytree, like gymnax's ``EnvParams``: a batch of
environments is one more ``vmap`` axis). A sampled algorithm sees the world
only through these functions and a :class:`~nash_jax.policies.Policy`:

* ``contexts(env_params, key, batch_size) -> x``: ``x ~ rho``, the context
  data of a batch (a pytree whose leaves lead with ``B``; what the policy
  reads: feature rows for a tabular game, prompt tokens for a language
  model).
* ``all_contexts(env_params) -> x``: every context, for policies whose
  parameters are per context and for exact evaluation.
* ``ref_log_prob(env_params, x, y) -> [B]``: ``log pi_ref(y|x)``.
* ``outcomes(env_params, key, x, y, y_prime) -> [B]``: the preference
  outcome ``o`` of ``y`` against ``y'`` (a Bernoulli label or the
  probability itself); each is one preference query.
* ``reference(env_params)``: the reference as the policy needs it to start
  from it and to sample the Nash-MD mixture ``(1 - c) log pi + c log
  pi_ref`` (``None`` where ``x`` carries it, as ``log_ref`` rows of a
  tabular game; the frozen reference parameters of a language model).
* ``log_policy(policy, params, env_params) -> [X, N]``: the policy's whole
  distribution over the listed responses of every context, where responses
  can be listed (``None`` otherwise).
* ``game(env_params) -> Game``: the exact tabular game (preferences over the
  listed responses, ``pi_ref``, ``rho``) that the exact metrics read, where
  responses can be listed (``None`` otherwise).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import flax.struct


class Environment(NamedTuple):
  """An environment as pure functions of ``env_params``; see the module
  docstring."""

  name: str
  contexts: Callable[[Any, chex.PRNGKey, int], Any]
  all_contexts: Callable[[Any], Any]
  ref_log_prob: Callable[[Any, Any, chex.Array], chex.Array]
  outcomes: Callable[..., chex.Array]
  reference: Callable[[Any], Any]
  log_policy: Callable[..., chex.Array] | None
  game: Callable[[Any], Any] | None


@flax.struct.dataclass
class TabularContexts:
  """Context data of a tabular game (what enumerable policies read).

  Attributes:
    index: ``[B]`` int32 context indices.
    log_ref: ``[B, n]`` ``log pi_ref(.|x)``.
    features: ``[B, n, d]`` response features ``phi(x, .)`` or ``None``.
    context_features: ``[B, d]`` context embeddings ``psi(x)`` or ``None``.
  """

  index: chex.Array
  log_ref: chex.Array
  features: chex.Array | None = None
  context_features: chex.Array | None = None


@flax.struct.dataclass
class TokenContexts:
  """Context data of a token environment: left-padded prompts.

  Attributes:
    index: ``[B]`` int32 prompt indices (what the oracle and exact lookups
      use).
    tokens: ``[B, P]`` int32 prompt tokens, left-padded.
    mask: ``[B, P]`` bool, False on the left padding.
  """

  index: chex.Array
  tokens: chex.Array
  mask: chex.Array
