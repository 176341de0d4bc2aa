"""Policy classes for the sampled algorithms (ALGORITHMS.md section 4).

``make_policy(name, config)`` builds a :class:`Policy`: ``tabular`` (softmax
logits per context), ``loglinear`` (``pi ∝ pi_ref exp(theta . phi)``) or
``mlp`` (Flax MLP over context and response embeddings).
"""

from __future__ import annotations

from nash_jax.policies.core import (
    Policy,
    all_contexts,
    enumerable,
    full_log_policy,
)
from nash_jax.policies.loglinear import make_loglinear
from nash_jax.policies.mlp import make_mlp
from nash_jax.policies.tabular import make_tabular

POLICIES = ('tabular', 'loglinear', 'mlp')
# Policies that read Game.features.
FEATURE_POLICIES = ('loglinear', 'mlp')


def make_policy(name: str, config) -> Policy:
  """The policy class ``name``; ``config`` is an AlgorithmConfig (its
  ``init``, ``init_scale`` and ``hidden_sizes``)."""
  from nash_jax.algorithms.base import initial_log_policy
  if name == 'tabular':
    return make_tabular(lambda key, game: initial_log_policy(key, game,
                                                             config))
  if name == 'loglinear':
    return make_loglinear(config.init, config.init_scale)
  if name == 'mlp':
    return make_mlp(config.hidden_sizes)
  raise ValueError(f'unknown policy {name!r}; expected one of {POLICIES}')


__all__ = ['POLICIES', 'FEATURE_POLICIES', 'Policy', 'all_contexts',
           'enumerable', 'full_log_policy', 'make_policy', 'make_loglinear',
           'make_mlp', 'make_tabular']
