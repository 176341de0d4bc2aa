"""The algorithm interface shared by every NLHF method.

An algorithm is a pair of pure, jittable functions (DESIGN.md):

* ``init(key, game) -> state``
* ``step(state, game) -> (state, info)``

plus ``log_policy(state) -> [X, n]`` for evaluation. The state is one pytree
holding everything that changes over time (policy, anchors, previous win
rates, optimizer state, step counter, preference-query counter, PRNG key);
hyperparameters are closed over from an :class:`AlgorithmConfig`, and since no
Python control flow depends on their values, a config whose numbers are
tracers (``vmap`` over ``beta`` or ``eta``) works too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp

from nash_jax.games.core import Game
from nash_jax.rules import normalize

INITS = ('ref', 'random')
OPTIMIZERS = ('sgd', 'adam')


class ConfigError(ValueError):
  """A setting that an algorithm cannot run with; names the flag."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--{flag}: {message}')
    self.flag = flag


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
  """Hyperparameters of every algorithm; each uses the fields it needs.

  Attributes:
    beta: KL regularization strength towards ``pi_ref`` (``>= 0``).
    eta: the algorithm's step (policy-space methods) or prox strength
      (``proximal_point``, ``nash_mp``); ``None`` takes the algorithm's
      default.
    learning_rate: optax step size for parameter-space methods; ``None``
      takes the default.
    optimizer: ``'sgd'`` or ``'adam'`` (parameter-space methods).
    inner_steps: ``proximal_point``: self-play steps per outer step; ``0``
      solves the inner game to ``inner_tolerance``.
    inner_tolerance: span residual at which the inner game counts as solved.
    max_inner_steps: cap on inner steps when solving to a tolerance.
    inner_eta: step of the inner self-play (mirror descent); ``None`` takes
      the default.
    init: initial policy, ``'ref'`` (``pi_ref``) or ``'random'``
      (``pi ∝ pi_ref exp(init_scale * N(0, 1))``, drawn from the seed).
    init_scale: standard deviation of the random initial logits.
  """

  beta: float = 0.1
  eta: float | None = None
  learning_rate: float | None = None
  optimizer: str = 'sgd'
  inner_steps: int = 0
  inner_tolerance: float = 1e-8
  max_inner_steps: int = 100_000
  inner_eta: float | None = None
  init: str = 'ref'
  init_scale: float = 1.0

  def replace(self, **kwargs) -> 'AlgorithmConfig':
    return dataclasses.replace(self, **kwargs)


@flax.struct.dataclass
class PolicyState:
  """State of the tabular algorithms.

  Attributes:
    params: the policy's parameters; log-probabilities ``[X, n]`` for
      policy-space methods, logits for optax-driven ones.
    extra: algorithm-specific pytree (previous win rates, optimizer state).
    step: iterations taken.
    preference_queries: preference queries used so far (see each algorithm).
    key: PRNG key for whatever the algorithm samples.
  """

  params: Any
  extra: Any
  step: chex.Array
  preference_queries: chex.Array
  key: chex.Array


class Algorithm(NamedTuple):
  """An NLHF algorithm as pure functions; see the module docstring."""

  name: str
  init: Callable[[chex.PRNGKey, Game], PolicyState]
  step: Callable[[PolicyState, Game], tuple[PolicyState, dict]]
  log_policy: Callable[[PolicyState], chex.Array]


def initial_log_policy(key, game: Game, config: AlgorithmConfig):
  """``log pi_ref``, or ``log pi_ref`` plus Gaussian noise when ``init='random'``."""
  log_ref = game.log_ref_policy
  if config.init == 'ref':
    return normalize(log_ref)
  noise = jax.random.normal(key, log_ref.shape, log_ref.dtype)
  return normalize(log_ref + config.init_scale * noise)


def new_state(key, params, extra=()) -> PolicyState:
  return PolicyState(params=params, extra=extra,
                     step=jnp.zeros((), jnp.int32),
                     preference_queries=jnp.zeros((), jnp.int32), key=key)


def advance(state: PolicyState, params, extra, queries) -> PolicyState:
  """The next state: new params/extra, one more step, ``queries`` more queries."""
  return state.replace(params=params, extra=extra, step=state.step + 1,
                       preference_queries=state.preference_queries + queries)
