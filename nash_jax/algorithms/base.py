"""The algorithm interface shared by every NLHF method.

An algorithm is a pair of pure, jittable functions (DESIGN.md):

* ``init(key, game) -> state``
* ``step(state, game) -> (state, info)``

plus ``log_policy(state, game) -> [X, n]`` for evaluation. The state is one pytree
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
import optax

from nash_jax.errors import ConfigError  # noqa: F401 (re-exported)
from nash_jax.games.core import Game
from nash_jax.rules import normalize

INITS = ('ref', 'random')
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine')
MODES = ('exact', 'sampled')
ORACLES = ('bernoulli', 'probability')
ANCHORS = ('copy', 'ema')


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
    optimizer: ``'sgd'`` or ``'adam'`` (parameter-space methods); ``None``
      takes the default (adam for log-linear and MLP policies, else sgd).
    inner_steps: ``proximal_point``: self-play steps per outer step, ``0``
      solves the inner game to ``inner_tolerance``; ``approx_nash_mp``:
      policy-gradient steps per half step. ``None`` takes the default.
    inner_tolerance: span residual at which the inner game counts as solved.
    max_inner_steps: cap on inner steps when solving to a tolerance.
    inner_eta: step of the inner self-play (mirror descent); ``None`` takes
      the default.
    init: initial policy, ``'ref'`` (``pi_ref``) or ``'random'``
      (``pi ∝ pi_ref exp(init_scale * N(0, 1))``, drawn from the seed).
    init_scale: standard deviation of the random initial logits.
    mode: ``'exact'`` (expectations over a tabular game) or ``'sampled'``
      (sampled responses and preference outcomes, any policy class).
    policy: policy class of the sampled mode: ``'tabular'``, ``'loglinear'``
      or ``'mlp'``.
    batch_size: comparisons per sampled step (each one preference query).
    oracle: ``'bernoulli'`` (outcome ``o ~ Bernoulli(P(y > y'))``) or
      ``'probability'`` (``o = P(y > y')``).
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
    hidden_sizes: hidden widths of the ``mlp`` policy.
  """

  beta: float = 0.1
  eta: float | None = None
  learning_rate: float | None = None
  optimizer: str | None = None
  inner_steps: int | None = None
  inner_tolerance: float = 1e-8
  max_inner_steps: int = 100_000
  inner_eta: float | None = None
  init: str = 'ref'
  init_scale: float = 1.0
  mode: str = 'exact'
  policy: str = 'tabular'
  batch_size: int = 64
  oracle: str = 'bernoulli'
  anchor: str = 'copy'
  anchor_every: int = 100
  anchor_tau: float = 0.01
  mixture: float = 0.125
  max_grad_norm: float | None = None
  schedule: str = 'constant'
  decay_steps: int | None = None
  hidden_sizes: tuple[int, ...] = (64, 64)

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
  log_policy: Callable[[PolicyState, Game], chex.Array]


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
