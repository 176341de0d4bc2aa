"""Tabular policies: one row of logits per context.

``pi_theta(y|x) = softmax(theta[x])_y`` with ``theta [X, n]``, initialized
at ``log pi_ref`` (or ``log pi_ref`` plus Gaussian noise with
``init='random'``). The exact-mode algorithms use the same classes:
policy-space methods keep normalized log-probabilities
(:func:`log_table`), the softmax methods logits (:func:`make_tabular`).
"""

from __future__ import annotations

import jax

from nash_jax.distributions import normalize
from nash_jax.policies.core import Policy, enumerable


def initial_logits(key, log_ref, init: str = 'ref', init_scale=1.0):
  """``log pi_ref``, or ``log pi_ref`` plus ``init_scale`` times standard
  Gaussian noise when ``init='random'``, normalized; ``[X, n]``."""
  if init == 'ref':
    return normalize(log_ref)
  noise = jax.random.normal(key, log_ref.shape, log_ref.dtype)
  return normalize(log_ref + init_scale * noise)


def _init(init, init_scale):
  def init_params(key, x, reference=None):
    del reference
    return initial_logits(key, x.log_ref, init, init_scale)
  return init_params


def make_tabular(init: str = 'ref', init_scale=1.0) -> Policy:
  """Softmax logits per context; ``x.index`` selects the rows."""

  def log_probs(params, x):
    return normalize(params[x.index])

  return enumerable('tabular', _init(init, init_scale), log_probs)


def log_table(policy: Policy) -> Policy:
  """``policy`` with its parameters read as normalized log-probabilities per
  context, as they are (the policy-space methods' parameters); same
  ``init``."""

  def log_probs(params, x):
    return params[x.index]

  return enumerable('log_table', policy.init, log_probs)
