"""Policy classes (ALGORITHMS.md section 4; DESIGN.md "Environments and
policies are injected").

``make_policy(config)`` builds a :class:`Policy` from a :class:`PolicyConfig`:
``tabular`` (softmax logits per context), ``loglinear`` (``pi ∝ pi_ref
exp(theta . phi)``) or ``mlp`` (Flax MLP over context and response
embeddings). The transformer over token sequences is built by
:func:`nash_jax.policies.sequence.make_sequence_policy`.
"""

from __future__ import annotations

import dataclasses

from nash_jax.errors import ConfigError
from nash_jax.policies.core import Policy, enumerable
from nash_jax.policies.loglinear import make_loglinear
from nash_jax.policies.mlp import make_mlp
from nash_jax.policies.tabular import initial_logits, log_table, make_tabular
from nash_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class PolicyClass:
  """What a policy class declares of itself: the defaults an algorithm
  takes with it.

  Attributes:
    shared_parameters: its parameters are shared by every context (the
      sampled mode's default optimizer is then adam, and an sgd rate has no
      context factor).
    adam_learning_rate: the default adam step size with it.
    reads_features: it reads the response features ``phi`` (and ``psi``)
      of a tabular game.
    enumerable: built by :func:`make_policy` from a :class:`PolicyConfig`
      (the transformer is built by :func:`nash_jax.policies.sequence.
      make_sequence_policy`).
  """

  shared_parameters: bool
  adam_learning_rate: float
  reads_features: bool = False
  enumerable: bool = True


POLICY_CLASSES = {
    'tabular': PolicyClass(shared_parameters=False, adam_learning_rate=0.003),
    'loglinear': PolicyClass(shared_parameters=True, adam_learning_rate=0.003,
                             reads_features=True),
    'mlp': PolicyClass(shared_parameters=True, adam_learning_rate=0.003,
                       reads_features=True),
    'transformer': PolicyClass(shared_parameters=True,
                               adam_learning_rate=1e-4, enumerable=False),
}
# The classes --policy chooses among (the transformer is a language-model
# run's).
POLICIES = tuple(k for k, v in POLICY_CLASSES.items() if v.enumerable)
# Policies that read the response features phi (and psi) of a tabular game.
FEATURE_POLICIES = tuple(k for k, v in POLICY_CLASSES.items()
                         if v.reads_features)
INITS = ('ref', 'random')


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Settings of the enumerable policy classes (each field's help text is
  its flag's ``--help``)."""

  policy: str = setting('tabular', 'Policy class (sampled mode): tabular, '
                        'loglinear (pi ∝ pi_ref exp(theta . phi)), mlp (Flax '
                        'MLP over context and response features).')
  init: str = setting('ref', 'Initial policy: ref (pi_ref) or random '
                      '(tabular: pi_ref times exp of Gaussian logits; '
                      'loglinear: theta ~ N(0, init_scale^2 / d); per seed).')
  init_scale: float = setting(1.0, 'Std of the random initial logits with '
                              '--init=random.')
  hidden_sizes: tuple[int, ...] = setting((64, 64), 'mlp policy: hidden '
                                          'layer widths.')

  def replace(self, **kwargs) -> 'PolicyConfig':
    return dataclasses.replace(self, **kwargs)


def validate_policy_config(config: PolicyConfig) -> None:
  """Raises :class:`ConfigError` naming the flag of an unusable setting."""
  if config.policy not in POLICIES:
    raise ConfigError('policy', f'unknown policy {config.policy!r}; expected '
                      f'one of {", ".join(POLICIES)}')
  if config.init not in INITS:
    raise ConfigError('init', f'unknown initial policy {config.init!r}; '
                      f'expected one of {", ".join(INITS)}')
  if not config.init_scale >= 0 or config.init_scale == float('inf'):
    raise ConfigError('init_scale', f'must be a finite number >= 0, got '
                      f'{config.init_scale}')
  if config.policy == 'mlp' and (not config.hidden_sizes or
                                 min(config.hidden_sizes) < 1):
    raise ConfigError('hidden_sizes', f'must be positive widths, got '
                      f'{list(config.hidden_sizes)}')


def make_policy(config: PolicyConfig) -> Policy:
  """The policy class ``config.policy``."""
  if config.policy == 'tabular':
    return make_tabular(config.init, config.init_scale)
  if config.policy == 'loglinear':
    return make_loglinear(config.init, config.init_scale)
  if config.policy == 'mlp':
    return make_mlp(config.hidden_sizes)
  raise ConfigError('policy', f'unknown policy {config.policy!r}; expected '
                    f'one of {", ".join(POLICIES)}')


__all__ = ['FEATURE_POLICIES', 'INITS', 'POLICIES', 'POLICY_CLASSES', 'Policy',
           'PolicyClass', 'PolicyConfig',
           'enumerable', 'initial_logits', 'log_table', 'make_loglinear',
           'make_mlp', 'make_policy', 'make_tabular',
           'validate_policy_config']
