"""The token environment itself: its data (:class:`TokenEnvParams`),
contexts, the listed log-probabilities, the exact game it induces and
:func:`make_token_environment` (the protocol of
:mod:`nash_jax.environments.core`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from nash_jax.distributions import check_outcome, sample_outcome
from nash_jax.environments.core import Environment, TokenContexts
from nash_jax.environments.tokens.annotators import (
  oracle_probability,
  preference_tensor_of,
)
from nash_jax.environments.tokens.prompts import make_prompts, prompt_topic
from nash_jax.environments.tokens.spec import TokenEnvSpec, check_spec
from nash_jax.environments.tokens.vocabulary import list_responses
from nash_jax.games.core import Game

DEFAULT_CHUNK_SIZE = 8192


@flax.struct.dataclass
class TokenEnvParams:
  """The token environment's data (a pytree).

  Attributes:
    prompts: ``[X, P]`` int32 left-padded prompt tokens.
    prompt_mask: ``[X, P]`` bool.
    context_weights: ``[X]`` ``rho``.
    responses: ``[N, L]`` int32, every response in the canonical order.
    sharpness: ``[K]`` annotators' ``tau_k``.
    annotator_weights: ``[K]`` ``w_k`` (sum 1).
    ref_log_policy: ``[X, N]`` ``log pi_ref`` over the listed responses
      (rows normalized).
    reference: the frozen reference model's params (any pytree, or None).
    oracle: the parameters of the oracle that answers training queries
      (:func:`nash_jax.oracles.with_oracle`), or None: the annotators.
  """

  prompts: chex.Array
  prompt_mask: chex.Array
  context_weights: chex.Array
  responses: chex.Array
  sharpness: chex.Array
  annotator_weights: chex.Array
  ref_log_policy: chex.Array
  reference: Any = None
  oracle: Any = None

  @property
  def num_contexts(self) -> int:
    return self.prompts.shape[0]

  @property
  def num_responses(self) -> int:
    return self.responses.shape[0]


def contexts_at(env_params: TokenEnvParams, index: chex.Array) -> TokenContexts:
  """The context data of prompts ``index [B]``."""
  return TokenContexts(index=index.astype(jnp.int32),
                       tokens=env_params.prompts[index],
                       mask=env_params.prompt_mask[index])


def all_contexts(env_params: TokenEnvParams) -> TokenContexts:
  """Every prompt ``0..X-1``."""
  return contexts_at(env_params, jnp.arange(env_params.num_contexts))


@functools.partial(jax.jit, static_argnums=2)
def sample_contexts(env_params: TokenEnvParams, key,
                    batch_size: int) -> TokenContexts:
  """``x_1..x_B ~ rho`` by inverse CDF (one uniform each; as
  :func:`nash_jax.games.oracle.sample_contexts`)."""
  cdf = jnp.cumsum(env_params.context_weights)
  u = jax.random.uniform(key, (batch_size, 1), cdf.dtype)
  index = jnp.sum(cdf[None, :] <= u * cdf[-1], axis=-1)
  return contexts_at(env_params,
                     jnp.minimum(index, env_params.num_contexts - 1))


@jax.jit
def preference_probability(env_params: TokenEnvParams, x: TokenContexts,
                           y: chex.Array, y_prime: chex.Array) -> chex.Array:
  """``P(y > y' | x)`` per sample, ``[B]``, read from the prompt tokens
  (the topic) and the response tokens."""
  topic = prompt_topic(x.tokens, x.mask)
  return oracle_probability(topic, y, y_prime, env_params.sharpness,
                            env_params.annotator_weights)


@jax.jit
def preference_tensor(env_params: TokenEnvParams) -> chex.Array:
  """``P[x, y, y']`` over every prompt and listed response, ``[X, N, N]``,
  from the same oracle as :func:`preference_probability`."""
  topics = prompt_topic(env_params.prompts, env_params.prompt_mask)
  return preference_tensor_of(topics, env_params.responses,
                              env_params.sharpness,
                              env_params.annotator_weights)


@functools.partial(jax.jit, static_argnums=(0, 3))
def listed_log_probs(log_prob_fn: Callable, params, env_params: TokenEnvParams,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> chex.Array:
  """``log_prob_fn(params, x, y)`` for every prompt and listed response,
  ``[X, N]``: the ``X * N`` pairs in batches of at most ``chunk_size``
  (a ``lax.map`` over chunks; the last chunk is padded with response 0).
  Jittable."""
  num_x, num_y = env_params.num_contexts, env_params.num_responses
  total = num_x * num_y
  pair_x = jnp.repeat(jnp.arange(num_x), num_y)
  pair_y = jnp.tile(jnp.arange(num_y), num_x)

  def batch(ix, iy):
    return log_prob_fn(params, contexts_at(env_params, ix),
                       env_params.responses[iy])

  if total <= chunk_size:
    return batch(pair_x, pair_y).reshape(num_x, num_y)
  num_chunks = -(-total // chunk_size)
  pad = num_chunks * chunk_size - total
  pair_x = jnp.pad(pair_x, (0, pad)).reshape(num_chunks, chunk_size)
  pair_y = jnp.pad(pair_y, (0, pad)).reshape(num_chunks, chunk_size)
  out = jax.lax.map(lambda ab: batch(*ab), (pair_x, pair_y))
  return out.reshape(-1)[:total].reshape(num_x, num_y)


def _normalize_rows(log_policy: chex.Array) -> chex.Array:
  return log_policy - jax.scipy.special.logsumexp(log_policy, axis=-1,
                                                  keepdims=True)


def token_env_params(spec: TokenEnvSpec, reference: Any = None,
                     ref_log_policy=None, ref_log_prob_fn=None,
                     dtype=None, chunk_size: int = DEFAULT_CHUNK_SIZE
                     ) -> TokenEnvParams:
  """Builds the environment's data (host side, once).

  ``log pi_ref`` over the listed responses is, in order of precedence:
  ``ref_log_policy`` (``[X, N]``), or ``ref_log_prob_fn(reference, x, y)``
  evaluated on every pair, or uniform (only when ``reference`` is None).
  Rows are renormalized (a model that follows the EOS convention sums to 1
  already, up to rounding).

  Args:
    spec: the settings (checked first).
    reference: the frozen reference model's params, or None.
    ref_log_policy: ``[X, N]`` ``log pi_ref``, or None.
    ref_log_prob_fn: ``(reference, x, y) -> [B]``, or None.
    dtype: float dtype (default: JAX's default float).
    chunk_size: pairs per reference call.

  Raises:
    ConfigError: an unusable spec.
    ValueError: a reference without a way to score it, or a
      ``ref_log_policy`` of the wrong shape.
  """
  n = check_spec(spec)
  dtype = dtype or jnp.result_type(float)
  prompts, mask = make_prompts(spec)
  num_x = spec.num_prompts
  weights = np.asarray(spec.annotator_weights, np.float64)
  params = TokenEnvParams(
      prompts=jnp.asarray(prompts), prompt_mask=jnp.asarray(mask),
      context_weights=jnp.full((num_x,), 1.0 / num_x, dtype),
      responses=jnp.asarray(list_responses(spec.vocab_size, spec.max_length,
                                           spec.max_responses)),
      sharpness=jnp.asarray(spec.sharpness, dtype),
      annotator_weights=jnp.asarray(weights / weights.sum(), dtype),
      ref_log_policy=jnp.full((num_x, n), -np.log(n), dtype),
      reference=reference)
  if ref_log_policy is None and ref_log_prob_fn is not None:
    ref_log_policy = listed_log_probs(ref_log_prob_fn, reference, params,
                                      chunk_size)
  elif ref_log_policy is None and reference is not None:
    raise ValueError('token_env_params: a reference model needs '
                     'ref_log_prob_fn (or its ref_log_policy) to list pi_ref')
  if ref_log_policy is not None:
    ref_log_policy = np.asarray(ref_log_policy, np.float64)
    if ref_log_policy.shape != (num_x, n):
      raise ValueError(f'ref_log_policy must have shape [{num_x}, {n}], got '
                       f'{list(ref_log_policy.shape)}')
    ref_log_policy = ref_log_policy - scipy.special.logsumexp(
        ref_log_policy, axis=-1, keepdims=True)
    params = params.replace(ref_log_policy=jnp.asarray(ref_log_policy, dtype))
  return params


@jax.jit
def game_of(env_params: TokenEnvParams) -> Game:
  """The exact tabular game: ``P [X, N, N]``, ``rho``, ``pi_ref [X, N]``
  (rows renormalized)."""
  ref_policy = jnp.exp(_normalize_rows(env_params.ref_log_policy))
  ref_policy = ref_policy / jnp.sum(ref_policy, axis=-1, keepdims=True)
  return Game(preferences=preference_tensor(env_params),
              context_weights=env_params.context_weights,
              ref_policy=ref_policy)


def induced_game(spec: TokenEnvSpec, ref_log_policy) -> Game:
  """The game a spec and a listed reference ``log pi_ref [X, N]`` induce
  (for writing a game file: ``np.savez(path, preferences=...,
  ref_policy=..., context_weights=...)``, read by
  :func:`nash_jax.games.files.load_game`)."""
  return game_of(token_env_params(spec, ref_log_policy=ref_log_policy))


def make_token_environment(spec: TokenEnvSpec, ref_log_prob_fn: Callable,
                           outcome: str = 'bernoulli',
                           chunk_size: int = DEFAULT_CHUNK_SIZE
                           ) -> Environment:
  """The token environment (protocol of :mod:`nash_jax.environments.core`).

  Args:
    spec: the settings (checked here, before any work).
    ref_log_prob_fn: ``(reference_params, x, y) -> [B]``, the reference
      model's ``log pi_ref(y|x)``; the environment never imports the model.
    outcome: ``'bernoulli'`` (``o ~ Bernoulli(P)``, a human label) or
      ``'probability'`` (``o = P``; :func:`nash_jax.distributions.
      sample_outcome`).
    chunk_size: pairs per ``policy.log_prob`` call in ``log_policy``.

  Returns:
    An :class:`~nash_jax.environments.core.Environment` over
    :class:`TokenEnvParams` (from :func:`token_env_params`).
  """
  check_spec(spec)
  check_outcome(outcome)

  def ref_log_prob(env_params: TokenEnvParams, x: TokenContexts, y):
    return ref_log_prob_fn(env_params.reference, x, y)

  def outcomes(env_params: TokenEnvParams, key, x: TokenContexts, y,
               y_prime):
    prob = preference_probability(env_params, x, y, y_prime)
    return sample_outcome(key, prob, outcome)

  def log_policy(policy, params, env_params: TokenEnvParams):
    return listed_log_probs(policy.log_prob, params, env_params, chunk_size)

  return Environment(name='tokens', contexts=sample_contexts,
                     all_contexts=all_contexts, ref_log_prob=ref_log_prob,
                     outcomes=outcomes,
                     reference=lambda env_params: env_params.reference,
                     log_policy=log_policy, game=game_of)
