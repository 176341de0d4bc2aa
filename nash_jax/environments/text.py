"""A text environment: prompts from a file, responses of a pretrained
tokenizer's vocabulary, a preference oracle that is a model.

Nothing here can be listed: responses are sequences of up to ``L`` tokens
of a vocabulary of ``~10^5``. So the environment has no ``log_policy`` and
no exact ``game`` (:mod:`nash_jax.environments.core`), and a run is judged
by sampling (:func:`nash_jax.evaluation.sampled_evaluator`): win rates
against ``pi_ref`` under the oracle, and ``KL(pi || pi_ref)`` estimated
from the policy's own samples.

The environment's data (:class:`TextEnvParams`, a pytree) carries the
prompts, the frozen reference model's parameters and the oracle's
parameters (e.g. a judge language model): they are arguments of the
compiled step, not constants closed over, so a judge of billions of
parameters is not baked into the program.

Contexts are drawn exactly as in the token game (:func:`nash_jax.
environments.tokens.sample_contexts`, inverse CDF of ``rho``), which reads
only ``prompts``, ``prompt_mask`` and ``context_weights``.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.struct
import jax.numpy as jnp

from nash_jax.distributions import check_outcome, sample_outcome
from nash_jax.environments import tokens as tokens_lib
from nash_jax.environments.core import Environment, TokenContexts


@flax.struct.dataclass
class TextEnvParams:
  """The text environment's data (a pytree).

  Attributes:
    prompts: ``[X, P]`` int32 left-padded prompt tokens.
    prompt_mask: ``[X, P]`` bool, False on the padding.
    context_weights: ``[X]`` ``rho`` (uniform over the prompt file).
    reference: the frozen reference model's parameters.
    oracle: the oracle's parameters (a judge's, a learned model's).
  """

  prompts: chex.Array
  prompt_mask: chex.Array
  context_weights: chex.Array
  reference: Any = None
  oracle: Any = None

  @property
  def num_contexts(self) -> int:
    return self.prompts.shape[0]


def text_env_params(contexts: TokenContexts, reference: Any,
                    oracle: Any, dtype=jnp.float32) -> TextEnvParams:
  """The environment's data from encoded prompts
  (:func:`nash_jax.hf.encode_prompts`), uniform ``rho``."""
  num_x = contexts.tokens.shape[0]
  return TextEnvParams(
      prompts=jnp.asarray(contexts.tokens, jnp.int32),
      prompt_mask=jnp.asarray(contexts.mask, bool),
      context_weights=jnp.full((num_x,), 1.0 / num_x, dtype),
      reference=reference, oracle=oracle)


def make_text_environment(ref_log_prob_fn: Callable,
                          probability_fn: Callable,
                          outcome: str = 'bernoulli') -> Environment:
  """The text environment (protocol of :mod:`nash_jax.environments.core`).

  Args:
    ref_log_prob_fn: ``(reference_params, x, y) -> [B]``, ``log
      pi_ref(y|x)``.
    probability_fn: ``(oracle_params, x, y, y_prime) -> [B]``, ``P(y > y'
      | x)`` (e.g. :func:`nash_jax.oracles.make_judge`'s
      ``probability``).
    outcome: ``'bernoulli'`` (``o ~ Bernoulli(P)``) or ``'probability'``
      (``o = P``; :func:`nash_jax.distributions.sample_outcome`).

  Returns:
    An :class:`~nash_jax.environments.core.Environment` over
    :class:`TextEnvParams` with ``log_policy`` and ``game`` ``None``.
  """
  check_outcome(outcome)

  def ref_log_prob(env_params: TextEnvParams, x: TokenContexts, y):
    return ref_log_prob_fn(env_params.reference, x, y)

  def outcomes(env_params: TextEnvParams, key, x: TokenContexts, y,
               y_prime):
    prob = probability_fn(env_params.oracle, x, y, y_prime)
    return sample_outcome(key, prob, outcome)

  return Environment(name='text', contexts=tokens_lib.sample_contexts,
                     all_contexts=tokens_lib.all_contexts,
                     ref_log_prob=ref_log_prob, outcomes=outcomes,
                     reference=lambda env_params: env_params.reference,
                     log_policy=None, game=None)
