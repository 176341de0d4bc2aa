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
import jax
import jax.numpy as jnp
import optax

from nash_jax.errors import ConfigError  # noqa: F401 (re-exported)
from nash_jax.policies.core import Policy
from nash_jax.precision import in_float32  # noqa: F401 (re-exported)
from nash_jax.settings import setting

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine')
MODES = ('exact', 'sampled')
ANCHORS = ('copy', 'ema')


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
  """Hyperparameters of every algorithm; each uses the fields it needs.

  Each field's help text (its flag's ``--help``) is declared with it. The
  policy's settings are in :class:`~nash_jax.policies.PolicyConfig`, the
  oracle's with the environment. ``None`` takes the algorithm's default
  (:func:`nash_jax.algorithms.resolve_config`).
  """

  beta: float = setting(0.1, 'KL regularization towards pi_ref, >= 0 (0: '
                        'the unregularized game, metrics against a von '
                        'Neumann winner).')
  eta: float | None = setting(None, 'Step size (policy-space methods) or '
                              'prox strength (proximal_point, nash_mp, '
                              'nash_prox, approx_nash_mp); default per '
                              'algorithm.', float)
  learning_rate: float | None = setting(
      None, 'optax learning rate of the parameter-space methods '
      '(self_play_pg, online_ipo and every sampled algorithm); default per '
      'algorithm.', float)
  optimizer: str | None = setting(
      None, 'optax optimizer of the parameter-space methods: sgd, adam '
      '(default: adam for loglinear, mlp and transformer policies, else '
      'sgd).', str)
  inner_steps: int | None = setting(
      None, 'proximal_point: inner self-play steps per outer step, 0 (its '
      'default) solves each inner game to --inner_tolerance; approx_nash_mp:'
      ' policy-gradient steps per half step (default 10).', int)
  inner_tolerance: float = setting(1e-8, 'proximal_point: span residual of '
                                   'a solved inner game.')
  max_inner_steps: int = setting(100_000, 'proximal_point: cap on inner '
                                 'steps per outer step.')
  inner_eta: float | None = setting(None, 'proximal_point: inner '
                                    'mirror-descent step; default from the '
                                    'prox game strength.', float)
  mode: str = setting('exact', 'exact: expectations over the tabular game '
                      '(1 query = one evaluation of g_pi); sampled: sampled '
                      'responses and preference outcomes with a '
                      'parametrized --policy (online_ipo, self_play_pg, '
                      'nash_prox, approx_nash_mp, nash_md_pg; the '
                      'baselines bt_rlhf, dpo, offline_ipo).')
  batch_size: int = setting(64, 'Sampled mode: comparisons per step, one '
                            'preference query each.')
  anchor: str = setting('copy', 'nash_prox: copy (theta_k <- theta every '
                        '--anchor_every steps) or ema (rate --anchor_tau).')
  anchor_every: int = setting(100, 'nash_prox: steps between anchor copies,'
                              ' M.')
  anchor_tau: float = setting(0.01, 'nash_prox: EMA rate of the anchor, in '
                              '(0, 1].')
  mixture: float = setting(0.125, 'nash_md_pg: mixture coefficient c of '
                           'pi_ref in the opponent (0: self-play).')
  max_grad_norm: float | None = setting(
      None, 'Clip gradients to this global norm (parameter-space methods; '
      'default: no clipping).', float)
  schedule: str = setting('constant', 'Learning-rate schedule: constant, '
                          'cosine (to 0 over --decay_steps).')
  decay_steps: int | None = setting(None, 'Steps of the cosine decay '
                                    '(default: --num_steps).', int)
  offline_pairs: int = setting(1024, 'dpo, offline_ipo, bt_rlhf: labelled '
                               'comparisons of pi_ref samples in their fixed '
                               'dataset (one preference query each, all '
                               'asked at the start).')
  reward_steps: int = setting(2000, 'bt_rlhf: adam steps fitting the '
                              'Bradley-Terry reward to the dataset '
                              '(minibatches of --batch_size).')
  reward_learning_rate: float = setting(0.05, 'bt_rlhf: adam step size of '
                                        'the reward fit.')

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
    generated_tokens: tokens sampled so far (responses and opponents;
      ``Policy.num_tokens``), 0 for policies that do not generate tokens.
    key: PRNG key of the next step.
    data: what an offline or reward-based algorithm learns from (its fixed
      dataset of comparisons, or its fitted reward model), else ``None``.
  """

  params: Any
  opt_state: Any
  anchor: Any
  half: Any
  step: chex.Array
  preference_queries: chex.Array
  generated_tokens: chex.Array
  key: chex.Array
  data: Any = None


# The device-mesh axis a run's per-step batch is split over (data
# parallelism; :func:`nash_jax.train.seed_mesh`).
DATA_AXIS = 'data'


def shard_batch(tree):
  """``tree`` with the leading (batch) axis of every leaf constrained to the
  ``'data'`` axis of the device mesh in context
  (``jax.lax.with_sharding_constraint(x, P('data'))``), so that XLA splits
  the work on that batch over the ``'data'`` devices (the trainer's
  ``shard_map`` is manual over ``'seeds'`` only and leaves ``'data'`` to
  XLA; :mod:`nash_jax.train`). Without a mesh, or with one ``'data'``
  device, ``tree`` is returned untouched and nothing is emitted, so the
  program is the same as without data parallelism. Under ``vmap`` (seeds)
  the constraint applies to the batch axis of each run."""
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or DATA_AXIS not in mesh.axis_names
      or mesh.shape[DATA_AXIS] == 1):
    return tree
  spec = jax.sharding.PartitionSpec(DATA_AXIS)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec),
                      tree)


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
  sweep over it is one compiled call. The chain runs in at least float32
  (:func:`in_float32`): with bfloat16 params its hyperparameters, state
  and updates are float32 and only the params are rounded to bfloat16.
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
  return in_float32(optimizer)


def new_state(key, params, extra=()) -> PolicyState:
  return PolicyState(params=params, extra=extra,
                     step=jnp.zeros((), jnp.int32),
                     preference_queries=jnp.zeros((), jnp.int32), key=key)


def advance(state: PolicyState, params, extra, queries) -> PolicyState:
  """The next state: new params/extra, one more step, ``queries`` more queries."""
  return state.replace(params=params, extra=extra, step=state.step + 1,
                       preference_queries=state.preference_queries + queries)
