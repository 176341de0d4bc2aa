"""Evaluation functions handed to the trainer, and the exact-game runner.

The trainer (:mod:`nash_jax.train`) calls ``evaluate(hyper, state,
env_params, eval_data) -> metrics`` and knows nothing else. Here are the
evaluations of environments whose responses can be listed (a tabular game,
a token game with short responses): the policy's whole distribution
``env.log_policy(policy, params, env_params)`` against the exact tabular game
``env.game(env_params)`` and its reference solution ``eval_data`` (``log
pi*_beta``), with the metrics of :mod:`nash_jax.metrics`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import metrics as metrics_lib
from nash_jax import train as train_lib
from nash_jax.algorithms.base import Algorithm
from nash_jax.environments.core import Environment
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.policies import sequence

# The exact algorithms read the game itself; for evaluation any oracle will
# do (only log_policy and game are used).
TABULAR = make_tabular_environment()


def log_policy(env: Environment, algorithm: Algorithm, state, env_params):
  """``log pi [X, N]`` of a state's policy over the listed responses."""
  return env.log_policy(algorithm.policy, state.params, env_params)


@functools.lru_cache(maxsize=64)
def exact_evaluator(make: Callable, env: Environment = TABULAR) -> Callable:
  """``evaluate(hyper, state, env_params, log_equilibrium)``: the exact
  metrics (:func:`nash_jax.metrics.evaluate`) of the state's whole
  distribution at ``hyper['beta']`` (cached per ``make``, so that the
  trainer's compiled functions are reused)."""

  def evaluate(hyper, state, env_params, log_equilibrium):
    log_pi = log_policy(env, make(hyper), state, env_params)
    return metrics_lib.evaluate(log_pi, env.game(env_params), hyper['beta'],
                                log_equilibrium)

  return evaluate


@functools.lru_cache(maxsize=64)
def constant_maker(algorithm: Algorithm) -> Callable:
  """``make`` of runs whose algorithm is fixed (hyperparameters closed over
  as constants; only ``beta`` of the metrics is passed per run)."""
  return lambda hyper: algorithm


def train_on_game(algorithm: Algorithm, beta, keys, game, log_equilibrium,
                  *, shared_game: bool, **kwargs):
  """:func:`nash_jax.train.train` of a fixed algorithm on a tabular game
  (shared or ``[S, ...]``) with the exact metrics at ``beta``; ``kwargs``
  go to the trainer."""
  make = constant_maker(algorithm)
  dtype = jnp.asarray(log_equilibrium).dtype
  hyper = {'beta': np.full(keys.shape[0], beta, dtype)}
  return train_lib.train(make, exact_evaluator(make), keys, game,
                         log_equilibrium, hyper=hyper, shared=shared_game,
                         **kwargs)


class ListedEval(NamedTuple):
  """What the exact evaluation of a listed environment reads besides the
  state: the exact game over the listed responses and ``log pi*_beta``."""

  game: Any
  log_equilibrium: Any


# Fixed stream of the per-evaluation samples (drawn from the state's key
# without advancing it, so recording samples does not change training).
SAMPLE_STREAM = 0x5A4D


@functools.lru_cache(maxsize=64)
def listed_evaluator(make: Callable, env_of: Callable,
                     num_samples: int = 0) -> Callable:
  """``evaluate(hyper, state, env_params, eval_data: ListedEval)``: the exact
  metrics of the state's distribution over the listed responses of
  ``env_of(hyper)`` (e.g. a token game), ``generated_tokens``, and, with
  ``num_samples``, ``samples [X * num_samples, ...]`` drawn from the policy
  for every context (each context repeated ``num_samples`` times) with
  their ``sample_log_prob``."""

  def evaluate(hyper, state, env_params, eval_data: ListedEval):
    algorithm, env = make(hyper), env_of(hyper)
    policy = algorithm.policy
    log_pi = env.log_policy(policy, state.params, env_params)
    row = metrics_lib.evaluate(log_pi, eval_data.game, hyper['beta'],
                               eval_data.log_equilibrium)
    row['generated_tokens'] = state.generated_tokens
    if num_samples:
      x = env.all_contexts(env_params)
      x = jax.tree.map(lambda a: jnp.repeat(a, num_samples, axis=0), x)
      key = jax.random.fold_in(state.key, SAMPLE_STREAM)
      y = policy.sample(key, state.params, x, 0.0, env.reference(env_params))
      row['samples'] = y
      row['sample_log_prob'] = policy.log_prob(state.params, x, y)
    return row

  return evaluate


# Evaluation by sampling, for environments whose responses cannot be listed.
REFERENCE_STREAM = 0x5245


def sampled_evaluator(make: Callable, env_of: Callable,
                      probability: Callable, num_samples: int,
                      ids) -> Callable:
  """``evaluate(hyper, state, env_params, eval_data)`` by sampling: every
  context is repeated ``num_samples`` times, ``y ~ pi`` and ``y_ref ~
  pi_ref`` are drawn for each (keys from ``state.key``, so the draws are
  the run's own and reproducible), and

  * ``win_rate_vs_ref = sum_x rho(x) mean_s P(y_s > y_ref,s | x)``, the
    policy's expected win rate against the reference under the oracle
    ``probability(env_params.oracle, x, y, y')`` (1/2 at ``pi = pi_ref``);
    ``win_rate_vs_ref_se`` its standard error, the standard deviation of
    the ``X * num_samples`` pair probabilities over the square root of
    their number (a 95% interval is +- 1.96 of it);
  * ``kl_to_ref = mean_(x, s) [log pi(y_s|x) - log pi_ref(y_s|x)]``, the
    Monte Carlo estimate of ``KL(pi || pi_ref)`` per prompt (unbiased; one
    sample can be negative);
  * ``response_length`` (tokens through the end token) and ``eos_rate``
    (the fraction of responses that ended before the length limit),
    means over the policy's samples;
  * ``generated_tokens`` (the run's counter), and the samples themselves
    (``samples``, ``sample_log_prob``, ``sample_ref_log_prob``) for
    ``samples.jsonl``.

  ``eval_data`` is unused (``None``): nothing exact is known. ``ids``:
  the policy's :class:`~nash_jax.policies.sequence.TokenIds` (its end
  tokens)."""

  def evaluate(hyper, state, env_params, eval_data):
    del eval_data
    algorithm, env = make(hyper), env_of(hyper)
    policy = algorithm.policy
    reference = env.reference(env_params)
    x = env.all_contexts(env_params)
    x = jax.tree.map(lambda a: jnp.repeat(a, num_samples, axis=0), x)
    key = jax.random.fold_in(state.key, SAMPLE_STREAM)
    ref_key = jax.random.fold_in(state.key, REFERENCE_STREAM)
    y = policy.sample(key, state.params, x, 0.0, reference)
    y_ref = policy.sample(ref_key, reference, x, 0.0, reference)
    log_pi = policy.log_prob(state.params, x, y)
    log_ref = env.ref_log_prob(env_params, x, y)
    p = probability(env_params.oracle, x, y, y_ref)
    p = p.astype(jnp.promote_types(p.dtype, jnp.float32))
    rho = jnp.repeat(env_params.context_weights, num_samples) / num_samples
    count = p.shape[0]
    length = jnp.sum(sequence.response_mask(y, ids), axis=-1)
    ended = jnp.any(jnp.isin(y, jnp.asarray(ids.end_ids)), axis=-1)
    return {
        'win_rate_vs_ref': jnp.sum(rho * p),
        'win_rate_vs_ref_se': jnp.std(p) / jnp.sqrt(count),
        'kl_to_ref': jnp.mean(log_pi.astype(p.dtype) - log_ref),
        'response_length': jnp.mean(length.astype(p.dtype)),
        'eos_rate': jnp.mean(ended.astype(p.dtype)),
        'generated_tokens': state.generated_tokens,
        'samples': y, 'sample_log_prob': log_pi,
        'sample_ref_log_prob': log_ref,
    }

  return evaluate
