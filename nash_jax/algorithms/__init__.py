"""Registry of NLHF algorithms: construction, defaults and validation.

Two registries: ``ALGORITHMS`` (``mode='exact'``: expectations over a tabular
game) and ``SAMPLED_ALGORITHMS`` (``mode='sampled'``: sampled comparisons,
any policy class, any environment). ``make_algorithm(name, config, policy,
env)`` builds an :class:`Algorithm` for ``config.mode`` from a ready
:class:`~nash_jax.policies.Policy` and (sampled mode)
:class:`~nash_jax.environments.Environment`;
``resolve_config`` fills in each algorithm's default step sizes and
``validate_config`` refuses settings that make an update invalid, with a
:class:`ConfigError` naming the flag. Both run on Python numbers before any
work starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from nash_jax.algorithms import (
  policy_space,
  reward_based,
  sampled,
  softmax_pg,
)
from nash_jax.algorithms.base import (
  ANCHORS,
  MODES,
  OPTIMIZERS,
  SCHEDULES,
  Algorithm,
  AlgorithmConfig,
  ConfigError,
  PolicyState,
  SampledState,
)
from nash_jax.environments.core import Environment
from nash_jax.policies import POLICY_CLASSES
from nash_jax.policies.core import Policy


def _mirror_eta(beta):
  """Default mirror step: ``eta beta = beta^2 / (beta^2 + 1/4)``.

  Mirror descent on a ``beta``-regularized game contracts when
  ``eta beta < 2 beta^2 / (beta^2 + w^2)`` (see
  ``policy_space.default_inner_eta``); this is the middle of that range.
  """
  return beta / (beta ** 2 + 0.25) if beta > 0 else 0.1


def _nash_md_eta(beta):
  """Default Nash-MD step: the mirror step with ``eta beta`` capped at 0.0025.

  With a constant step Nash-MD converges to a point ``O(eta beta)`` away from
  ``pi*_beta`` (its fixed point is the equilibrium for ``beta / (1 - eta
  beta)``, plus one step): a KL floor of ``c (eta beta)^2``, which the cap
  keeps small (measured ``c``: BENCHMARKS.md, "Default step sizes").
  """
  return min(_mirror_eta(beta), 0.0025 / beta) if beta > 0 else 0.1


# Kinds of run (nash_jax.tasks): a tabular game, the listable token game, a
# Hugging Face checkpoint with prompts and a judge.
RUN_KINDS = ('tabular', 'token_game', 'post_train')
# Settings of the parameter-space methods (optax).
OPTIMIZER_SETTINGS = ('learning_rate', 'optimizer', 'max_grad_norm',
                      'schedule', 'decay_steps')
# Settings a compiled step can take as runtime values (so that a sweep over
# them is one compiled call); each algorithm lists those it reads.
RUNTIME_SETTINGS = ('beta', 'eta', 'learning_rate', 'inner_eta', 'anchor_tau',
                    'mixture')


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """What the registry knows of an algorithm: everything a run needs to
  build, default, validate and sweep it, declared in one entry.

  Attributes:
    make: ``(config, policy, env) -> Algorithm`` (the exact algorithms
      ignore ``env``: they read the tabular game itself).
    default_eta: beta -> default eta (None: the algorithm has no eta).
    max_eta_beta: largest valid ``eta * beta`` (None: no such limit).
    needs_positive_beta: refuses ``beta = 0``.
    parameter_space: uses ``learning_rate`` and ``optimizer`` (and the
      other :data:`OPTIMIZER_SETTINGS`).
    queries_per_step: documentation of the query accounting.
    settings: the :class:`AlgorithmConfig` fields it reads besides
      ``beta``, ``eta`` (with ``default_eta``), the optimizer's (with
      ``parameter_space``) and ``batch_size`` (sampled mode).
    runs: the kinds of run (:data:`RUN_KINDS`) it can run in.
    default_inner_steps: the default of ``inner_steps`` (None: not read).
    ipo_form: its loss is an IPO regression (gradients ``4 / beta`` times
      a policy gradient's), so its default sgd rate is ``beta / 4`` times
      smaller.
    sampled: an algorithm of the sampled mode.
    needs_reward_model: ``make`` also takes a
      :class:`~nash_jax.algorithms.reward_based.RewardModel`.
  """
  make: Callable[[AlgorithmConfig, Policy, Environment | None], Algorithm]
  default_eta: Callable[[float], float] | None
  max_eta_beta: float | None
  needs_positive_beta: bool
  parameter_space: bool
  queries_per_step: str
  settings: tuple[str, ...] = ()
  runs: tuple[str, ...] = ('tabular',)
  default_inner_steps: int | None = None
  ipo_form: bool = False
  sampled: bool = False
  needs_reward_model: bool = False

  @property
  def reads(self) -> frozenset:
    """Every :class:`AlgorithmConfig` field the algorithm reads."""
    return frozenset(
        ('beta', 'mode') + (('eta',) if self.default_eta else ()) +
        (OPTIMIZER_SETTINGS if self.parameter_space else ()) +
        (('batch_size',) if self.sampled else ()) +
        (('inner_steps',) if self.default_inner_steps is not None else ()) +
        self.settings)

  @property
  def sweepable(self) -> tuple[str, ...]:
    """The settings it reads that a sweep may vary (runtime values of the
    compiled step), in :data:`RUNTIME_SETTINGS` order."""
    return tuple(k for k in RUNTIME_SETTINGS if k in self.reads)


def _exact(make, default_eta, max_eta_beta, needs_positive_beta,
           parameter_space, queries, **kw) -> AlgorithmSpec:
  return AlgorithmSpec(lambda config, policy, env=None: make(config, policy),
                       default_eta, max_eta_beta, needs_positive_beta,
                       parameter_space, queries, **kw)


_one_over_beta = lambda b: min(1.0, 1 / b) if b > 0 else 1.0
_PROXIMAL_POINT = ('inner_tolerance', 'max_inner_steps', 'inner_eta')

ALGORITHMS: dict[str, AlgorithmSpec] = {
    'omd': _exact(policy_space.make_omd, _mirror_eta, 1.0, False, False, '1'),
    'mmd': _exact(policy_space.make_mmd, _mirror_eta, None, False, False,
                  '1'),
    'omwu': _exact(policy_space.make_omwu, _one_over_beta, 1.0, False, False,
                   '1'),
    'extragradient': _exact(policy_space.make_extragradient, _one_over_beta,
                            1.0, False, False, '2'),
    'nash_md': _exact(policy_space.make_nash_md, _nash_md_eta, 1.0, False,
                      False, '1'),
    'sppo': _exact(policy_space.make_sppo, lambda b: 1.0, None, False, False,
                   '1'),
    'proximal_point': _exact(
        policy_space.make_proximal_point, lambda b: 1.0, None, True, False,
        'inner steps (+1 at the anchor when solving to a tolerance)',
        settings=_PROXIMAL_POINT, default_inner_steps=0),
    'nash_mp': _exact(policy_space.make_nash_mp, lambda b: 2 * b, None, True,
                      False, '2'),
    'self_play_pg': _exact(softmax_pg.make_self_play_pg, None, None, False,
                           True, '1'),
    'online_ipo': _exact(softmax_pg.make_online_ipo, None, None, True, True,
                         '1', ipo_form=True),
}
ALGORITHM_NAMES = tuple(ALGORITHMS)


def _sampled(make, default_eta, needs_positive_beta, queries, **kw
             ) -> AlgorithmSpec:
  return AlgorithmSpec(make, default_eta, None, needs_positive_beta, True,
                       queries, sampled=True, **kw)


_EVERYWHERE = RUN_KINDS
_OFFLINE = ('offline_pairs',)
# Sampled mode: every comparison is one query, batch_size per step.
SAMPLED_ALGORITHMS: dict[str, AlgorithmSpec] = {
    'online_ipo': _sampled(sampled.make_online_ipo, None, True, 'batch_size',
                           runs=_EVERYWHERE, ipo_form=True),
    'self_play_pg': _sampled(sampled.make_self_play_pg, None, False,
                             'batch_size', runs=_EVERYWHERE),
    'nash_prox': _sampled(sampled.make_nash_prox, lambda b: 1.0, True,
                          'batch_size', runs=_EVERYWHERE, ipo_form=True,
                          settings=('anchor', 'anchor_every', 'anchor_tau')),
    'approx_nash_mp': _sampled(sampled.make_approx_nash_mp, lambda b: 2 * b,
                               True, 'batch_size', runs=_EVERYWHERE,
                               default_inner_steps=10),
    'nash_md_pg': _sampled(sampled.make_nash_md_pg, None, False, 'batch_size',
                           runs=_EVERYWHERE, settings=('mixture',)),
    # Reward-based and offline baselines: offline_pairs queries at init,
    # none after (reward_based.py). bt_rlhf needs a reward model, which a
    # checkpoint run does not have.
    'bt_rlhf': _sampled(reward_based.make_bt_rlhf, None, True,
                        'offline_pairs at init, 0 per step',
                        runs=('tabular', 'token_game'),
                        needs_reward_model=True,
                        settings=_OFFLINE + ('reward_steps',
                                             'reward_learning_rate')),
    'dpo': _sampled(reward_based.make_dpo, None, True,
                    'offline_pairs at init, 0 per step', runs=_EVERYWHERE,
                    settings=_OFFLINE),
    'offline_ipo': _sampled(reward_based.make_offline_ipo, None, True,
                            'offline_pairs at init, 0 per step',
                            runs=_EVERYWHERE, ipo_form=True,
                            settings=_OFFLINE),
}
# The baselines, which learn from a fixed dataset of pi_ref comparisons.
REWARD_BASED_NAMES = tuple(k for k, spec in SAMPLED_ALGORITHMS.items()
                           if 'offline_pairs' in spec.settings)
# The sampled NLHF algorithms (every step asks batch_size queries).
SAMPLED_ALGORITHM_NAMES = tuple(k for k in SAMPLED_ALGORITHMS
                                if k not in REWARD_BASED_NAMES)
ALL_ALGORITHM_NAMES = tuple(dict.fromkeys(ALGORITHM_NAMES +
                                          tuple(SAMPLED_ALGORITHMS)))


def spec_of(name: str, mode: str = 'exact') -> AlgorithmSpec:
  """The registry entry of algorithm ``name`` in ``mode``.

  Raises:
    ConfigError: naming ``--mode`` (the algorithm runs in the other mode)
      or ``--algorithm`` (no such algorithm).
  """
  if mode not in MODES:
    raise ConfigError('mode', f'unknown mode {mode!r}; expected one of '
                      f'{", ".join(MODES)}')
  registry = ALGORITHMS if mode == 'exact' else SAMPLED_ALGORITHMS
  if name not in registry:
    other = SAMPLED_ALGORITHMS if mode == 'exact' else ALGORITHMS
    if name in other:
      raise ConfigError('mode', f'{name} runs only with --mode='
                        f'{"sampled" if mode == "exact" else "exact"} (with '
                        f'--mode={mode}: {", ".join(registry)})')
    raise ConfigError('algorithm', f'unknown algorithm {name!r}; expected one '
                      f'of {", ".join(ALL_ALGORITHM_NAMES)}')
  return registry[name]


def default_learning_rate(name, beta, optimizer, num_contexts):
  """Default optax learning rate of a parameter-space method.

  ``sgd``: ``num_contexts / (beta + 1/4)``. Vanilla softmax policy gradient
  moves context ``x``'s logits by ``lr rho(x) pi(y|x)`` times the natural
  direction, so the factor ``num_contexts = 1 / rho(x)`` undoes the context
  weight; ``1 / (beta + 1/4)`` is about the inverse curvature of ``S`` in the
  logits. It converges on random games at ``beta = 0.1``; at ``beta = 0.01``
  it is stable but slow, and larger rates diverge on some games (the stability
  limit of self-play). ``online_ipo``'s gradient is ``4 / beta`` times that of
  ``self_play_pg``, so its rate is ``beta / 4`` times smaller. ``adam``:
  0.001 (Adam's last iterate oscillates around the equilibrium at larger
  rates).
  """
  if optimizer == 'adam':
    return 0.001
  lr = num_contexts / (beta + 0.25)
  return lr * beta / 4 if ALGORITHMS[name].ipo_form else lr


def default_sampled_learning_rate(name, beta, optimizer, num_contexts,
                                  policy='tabular', feature_dim=1):
  """Default optax learning rate of a sampled algorithm.

  ``sgd``, tabular: a quarter of the exact-mode rate, ``num_contexts /
  (4 (beta + 1/4))`` for the policy-gradient forms (``self_play_pg``,
  ``nash_md_pg``, ``approx_nash_mp``), times ``beta / 4`` for the IPO forms
  (``AlgorithmSpec.ipo_form``: ``online_ipo``, ``nash_prox``, offline IPO),
  whose gradients are ``4 / beta`` times larger; DPO and bt_rlhf take the
  policy-gradient rate. Noise sets a KL floor about proportional to the
  rate, hence the quarter. ``sgd``, a class with shared parameters
  (log-linear, MLP): the same without the context factor and divided by
  ``feature_dim`` (a step moves the logits by about ``lr |phi|^2 = lr
  d``). ``adam``: the policy class's own default
  (:data:`nash_jax.policies.POLICY_CLASSES`). The measurements behind these
  choices are in BENCHMARKS.md ("Default step sizes").
  """
  # An unknown class is refused by validation; it takes the tabular rule.
  policy_class = POLICY_CLASSES.get(policy, POLICY_CLASSES['tabular'])
  if optimizer == 'adam':
    return policy_class.adam_learning_rate
  scale = (1 / max(feature_dim, 1) if policy_class.shared_parameters
           else num_contexts)
  lr = scale / (4 * (beta + 0.25))
  if SAMPLED_ALGORITHMS[name].ipo_form:
    lr *= beta / 4
  return lr


def default_optimizer(config: AlgorithmConfig, policy: str = 'tabular') -> str:
  """adam for the sampled mode's log-linear, MLP and transformer policies,
  else sgd."""
  known = POLICY_CLASSES.get(policy)
  if config.mode == 'sampled' and known and known.shared_parameters:
    return 'adam'
  return 'sgd'


def resolve_config(name: str, config: AlgorithmConfig,
                   num_contexts: int = 1, feature_dim: int = 1,
                   policy: str = 'tabular') -> AlgorithmConfig:
  """Fills in the defaults of ``eta``, ``learning_rate``, ``inner_steps``
  and ``inner_eta``.

  A ``beta`` that :func:`validate_config` will refuse (negative or not finite)
  gets no defaults, so that the refusal names ``--beta``.
  """
  spec = spec_of(name, config.mode)
  if config.optimizer is None and spec.parameter_space:
    config = config.replace(optimizer=default_optimizer(config, policy))
  if config.inner_steps is None and spec.default_inner_steps is not None:
    config = config.replace(inner_steps=spec.default_inner_steps)
  if not (math.isfinite(config.beta) and config.beta >= 0):
    return config
  updates = {}
  if config.eta is None and spec.default_eta is not None:
    updates['eta'] = float(spec.default_eta(config.beta))
  if spec.parameter_space and config.learning_rate is None:
    if config.mode == 'exact':
      updates['learning_rate'] = float(default_learning_rate(
          name, config.beta, config.optimizer, num_contexts))
    elif config.optimizer in OPTIMIZERS:
      updates['learning_rate'] = float(default_sampled_learning_rate(
          name, config.beta, config.optimizer, num_contexts, policy,
          feature_dim))
  config = config.replace(**updates)
  if (name == 'proximal_point' and config.inner_eta is None and
      config.beta > 0 and config.eta > 0):
    config = config.replace(inner_eta=float(
        policy_space.default_inner_eta(config.eta, config.beta)))
  return config


def _finite(flag, value):
  if value is not None and not math.isfinite(value):
    raise ConfigError(flag, f'must be a finite number, got {value}')


def _validate_sampled_settings(config: AlgorithmConfig) -> None:
  """Range checks of the sampled mode's settings, in every mode and for
  every algorithm (a value no run could use is refused even where it would
  be ignored)."""
  if config.batch_size < 1:
    raise ConfigError('batch_size', f'must be >= 1, got {config.batch_size}')
  if config.anchor not in ANCHORS:
    raise ConfigError('anchor', f'unknown anchor {config.anchor!r}; '
                      f'expected one of {", ".join(ANCHORS)}')
  if config.anchor_every < 1:
    raise ConfigError('anchor_every',
                      f'must be >= 1, got {config.anchor_every}')
  if not 0 < config.anchor_tau <= 1:
    raise ConfigError('anchor_tau', f'must be in (0, 1], got '
                      f'{config.anchor_tau}')
  if not 0 <= config.mixture <= 1:
    raise ConfigError('mixture', f'must be in [0, 1], got {config.mixture}')


def _validate_sampled(name: str, config: AlgorithmConfig) -> None:
  """The checks of the sampled mode's algorithm-specific settings."""
  if config.offline_pairs < 1:
    raise ConfigError('offline_pairs', f'must be >= 1, got '
                      f'{config.offline_pairs}')
  if config.reward_steps < 0:
    raise ConfigError('reward_steps', f'must be >= 0, got '
                      f'{config.reward_steps}')
  if not (math.isfinite(config.reward_learning_rate)
          and config.reward_learning_rate > 0):
    raise ConfigError('reward_learning_rate', f'must be a finite number > '
                      f'0, got {config.reward_learning_rate}')
  if name == 'approx_nash_mp' and config.inner_steps < 1:
    raise ConfigError('inner_steps', f'approx_nash_mp needs >= 1 policy-'
                      f'gradient steps per half step, got {config.inner_steps}')
  if config.max_grad_norm is not None and not config.max_grad_norm > 0:
    raise ConfigError('max_grad_norm', f'must be > 0, got '
                      f'{config.max_grad_norm}')


def validate_config(name: str, config: AlgorithmConfig,
                    policy: str = 'tabular') -> None:
  """Raises :class:`ConfigError` for settings ``name`` cannot run with
  (``policy``: the name of the policy class it will be given)."""
  spec = spec_of(name, config.mode)
  if config.mode == 'exact' and policy != 'tabular':
    raise ConfigError('policy', f'{policy} policies need --mode='
                      'sampled (the exact mode updates tabular policies)')
  for flag in ('beta', 'eta', 'learning_rate', 'inner_eta', 'inner_tolerance',
               'anchor_tau', 'mixture', 'max_grad_norm'):
    _finite(flag, getattr(config, flag))
  if config.beta < 0:
    raise ConfigError('beta', f'must be >= 0, got {config.beta}')
  if spec.needs_positive_beta and config.beta == 0:
    raise ConfigError('beta', f'{name} needs beta > 0 (its update divides by '
                      'beta); use omd, mmd, omwu, extragradient, nash_md, '
                      'sppo or self_play_pg for the unregularized game')
  if spec.default_eta is not None:
    if config.eta is None or config.eta <= 0:
      raise ConfigError('eta', f'must be > 0, got {config.eta}')
    if spec.max_eta_beta is not None and (
        config.eta * config.beta > spec.max_eta_beta):
      raise ConfigError(
          'eta', f'{name} needs eta * beta <= {spec.max_eta_beta:g} (the '
          f'exponent 1 - eta*beta of pi_t must stay >= 0), got eta={config.eta}'
          f', beta={config.beta}')
  if spec.parameter_space:
    if config.optimizer not in OPTIMIZERS:
      raise ConfigError('optimizer', f'unknown optimizer {config.optimizer!r};'
                        f' expected one of {", ".join(OPTIMIZERS)}')
    if config.learning_rate is None or config.learning_rate <= 0:
      raise ConfigError('learning_rate',
                        f'must be > 0, got {config.learning_rate}')
    if config.schedule not in SCHEDULES:
      raise ConfigError('schedule', f'unknown schedule {config.schedule!r}; '
                        f'expected one of {", ".join(SCHEDULES)}')
    if config.schedule == 'cosine' and (config.decay_steps is None or
                                        config.decay_steps < 1):
      raise ConfigError('decay_steps', f'must be >= 1 with --schedule=cosine,'
                        f' got {config.decay_steps}')
  _validate_sampled_settings(config)
  if config.mode == 'sampled':
    _validate_sampled(name, config)
  if name == 'proximal_point':
    if config.inner_steps < 0:
      raise ConfigError('inner_steps', f'must be >= 0 (0 solves to '
                        f'--inner_tolerance), got {config.inner_steps}')
    if config.inner_tolerance <= 0:
      raise ConfigError('inner_tolerance',
                        f'must be > 0, got {config.inner_tolerance}')
    if config.max_inner_steps < 1:
      raise ConfigError('max_inner_steps',
                        f'must be >= 1, got {config.max_inner_steps}')
    if config.inner_eta is None or config.inner_eta <= 0:
      raise ConfigError('inner_eta', f'must be > 0, got {config.inner_eta}')
    beta_prox = config.beta * (1 + 1 / config.eta)
    if config.inner_eta * beta_prox > 1:
      raise ConfigError(
          'inner_eta', f'needs inner_eta * beta (1 + 1/eta) <= 1 for the inner '
          f'mirror step, got {config.inner_eta * beta_prox:.4g}')


def make_algorithm(name: str, config: AlgorithmConfig, policy: Policy,
                   env: Environment | None = None,
                   reward_model: reward_based.RewardModel | None = None
                   ) -> Algorithm:
  """Builds algorithm ``name`` of ``config.mode`` from a resolved, validated
  config, a policy (the exact mode: a tabular one, for its initialization)
  and, for the sampled mode, the environment; ``bt_rlhf`` also takes its
  :class:`~nash_jax.algorithms.reward_based.RewardModel` (default: a table
  over a tabular game's responses)."""
  if config.mode == 'sampled' and env is None:
    raise ValueError('a sampled algorithm needs an environment')
  spec = spec_of(name, config.mode)
  if spec.needs_reward_model:
    return spec.make(config, policy, env, reward_model)
  return spec.make(config, policy, env)


__all__ = [
    'ALGORITHMS', 'ALGORITHM_NAMES', 'ALL_ALGORITHM_NAMES', 'Algorithm',
    'AlgorithmConfig', 'AlgorithmSpec', 'ConfigError', 'PolicyState',
    'SampledState',
    'SAMPLED_ALGORITHMS', 'SAMPLED_ALGORITHM_NAMES', 'make_algorithm',
    'resolve_config', 'validate_config', 'default_learning_rate',
    'default_sampled_learning_rate', 'REWARD_BASED_NAMES', 'RUN_KINDS',
    'OPTIMIZER_SETTINGS', 'RUNTIME_SETTINGS', 'spec_of',
]
