"""The algorithm interface shared by every NLHF method.

An algorithm is a tuple of pure, jittable functions (DESIGN.md):

* ``init(key, env_params) -> state``
* ``step(state, env_params) -> (state, info)``

plus the :class:`~nash_jax.policies.Policy` whose parameters ``state.params``
are (evaluation reads the policy's distribution through the environment; the
algorithm never does). The exact algorithms' ``env_params`` is the tabular
:class:`~nash_jax.games.core.Game` (they take expectations over it); the
sampled algorithms receive an :class:`~nash_jax.environments.Environment`
and a policy when they are made and see ``env_params`` only through the
environment's functions. The state is one pytree holding everything that
changes over time (policy, anchors, previous win rates, optimizer state,
step counter, preference-query counter, PRNG key); hyperparameters are
closed over from an :class:`AlgorithmConfig`, and since no Python control
flow depends on their values, a config whose numbers are tracers (``vmap``
over ``beta`` or ``eta``) works too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import flax.struct
import jax.numpy as jnp
import optax

from nash_jax.errors import ConfigError  # noqa: F401 (re-exported)
from nash_jax.policies.core import Policy

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine')
MODES = ('exact', 'sampled')
ANCHORS = ('copy', 'ema')


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
  """Hyperparameters of every algorithm; each uses the fields it needs.

  The policy's settings are in :class:`~nash_jax.policies.PolicyConfig`, the
  oracle's in the environment.

  Attributes:
    beta: KL regularization strength towards ``pi_ref`` (``>= 0``).
    eta: the algorithm's step (policy-space methods) or prox strength
      (``proximal_point``, ``nash_mp``); ``None`` takes the algorithm's
      default.
    learning_rate: optax step size for parameter-space methods; ``None``
      takes the default.
    optimizer: ``'sgd'`` or ``'adam'`` (parameter-space methods); ``None``
      takes the default (adam for log-linear and MLP policies, else sgd).
    inner_steps: ``proximal_point``: self-play steps per outer step, ``0``
      solves the inner game to ``inner_tolerance``; ``approx_nash_mp``:
      policy-gradient steps per half step. ``None`` takes the default.
    inner_tolerance: span residual at which the inner game counts as solved.
    max_inner_steps: cap on inner steps when solving to a tolerance.
    inner_eta: step of the inner self-play (mirror descent); ``None`` takes
      the default.
    mode: ``'exact'`` (expectations over a tabular game) or ``'sampled'``
      (sampled responses and preference outcomes, any policy class).
    batch_size: comparisons per sampled step (each one preference query).
    anchor: ``nash_prox``'s anchor: ``'copy'`` of the policy every
      ``anchor_every`` steps, or ``'ema'`` with rate ``anchor_tau``.
    anchor_every: steps between anchor copies (``M``).
    anchor_tau: EMA rate ``tau`` of the anchor, in ``(0, 1]``.
    mixture: ``nash_md_pg``'s mixture coefficient ``c`` of ``pi_ref`` in
      the opponent's logits (0 is self-play).
    max_grad_norm: clip gradients to this global norm (``None``: no clip).
    schedule: learning-rate schedule, ``'constant'`` or ``'cosine'`` (decay
      to 0 over ``decay_steps``).
    decay_steps: steps of the cosine decay.
  """

  beta: float = 0.1
  eta: float | None = None
  learning_rate: float | None = None
  optimizer: str | None = None
  inner_steps: int | None = None
  inner_tolerance: float = 1e-8
  max_inner_steps: int = 100_000
  inner_eta: float | None = None
  mode: str = 'exact'
  batch_size: int = 64
  anchor: str = 'copy'
  anchor_every: int = 100
  anchor_tau: float = 0.01
  mixture: float = 0.125
  max_grad_norm: float | None = None
  schedule: str = 'constant'
  decay_steps: int | None = None

  def replace(self, **kwargs) -> 'AlgorithmConfig':
    return dataclasses.replace(self, **kwargs)


@flax.struct.dataclass
class PolicyState:
  """State of the exact (tabular) algorithms.

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


@flax.struct.dataclass
class SampledState:
  """State of the sampled algorithms (any policy, any environment).

  Attributes:
    params: the policy's parameters.
    opt_state: the optax state.
    anchor: the anchor's parameters (``nash_prox``: ``pi_k``;
      ``approx_nash_mp``: the prox centre), or ``None``.
    half: ``approx_nash_mp``'s half-step parameters, or ``None``.
    step: steps taken.
    preference_queries: preference queries used so far.
    key: PRNG key of the next step.
  """

  params: Any
  opt_state: Any
  anchor: Any
  half: Any
  step: chex.Array
  preference_queries: chex.Array
  key: chex.Array


class Algorithm(NamedTuple):
  """An NLHF algorithm as pure functions; see the module docstring."""

  name: str
  init: Callable[[chex.PRNGKey, Any], Any]
  step: Callable[[Any, Any], tuple[Any, dict]]
  policy: Policy


def make_optimizer(config: AlgorithmConfig) -> optax.GradientTransformation:
  """The optax chain of a parameter-space method.

  ``clip_by_global_norm(max_grad_norm)`` (if set), then sgd or adam whose
  learning rate is injected (``optax.inject_hyperparams``), constant or a
  cosine decay over ``decay_steps``. ``learning_rate`` may be a tracer, so a
  sweep over it is one compiled call.
  """
  factory = {'sgd': optax.sgd, 'adam': optax.adam}[config.optimizer]
  learning_rate = config.learning_rate
  if config.schedule == 'cosine':
    learning_rate = optax.cosine_decay_schedule(learning_rate,
                                                config.decay_steps)
  optimizer = optax.inject_hyperparams(factory)(learning_rate=learning_rate)
  if config.max_grad_norm is not None:
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                            optimizer)
  return optimizer


def new_state(key, params, extra=()) -> PolicyState:
  return PolicyState(params=params, extra=extra,
                     step=jnp.zeros((), jnp.int32),
                     preference_queries=jnp.zeros((), jnp.int32), key=key)


def advance(state: PolicyState, params, extra, queries) -> PolicyState:
  """The next state: new params/extra, one more step, ``queries`` more queries."""
  return state.replace(params=params, extra=extra, step=state.step + 1,
                       preference_queries=state.preference_queries + queries)
