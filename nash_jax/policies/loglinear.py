"""Log-linear policy over the game's response features.

``pi_theta(y|x) ∝ pi_ref(y|x) exp(theta . phi(x, y))`` with one ``theta in
R^d`` shared by every context (``x.features`` ``phi [B, n, d]``). ``theta =
0`` is ``pi_ref``; with ``d >= X n`` and features in general position every
policy is representable, with fewer features the class is a restriction and
``pi*_beta`` may lie outside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nash_jax.policies.core import Policy, enumerable, reference_plus


def make_loglinear(init: str = 'ref', init_scale: float = 1.0) -> Policy:
  """``init='ref'``: ``theta = 0``; ``'random'``: ``theta ~ N(0,
  init_scale^2 / d)``."""

  def init_params(key, x, reference=None):
    del reference
    dim = x.features.shape[-1]
    theta = jnp.zeros((dim,), x.log_ref.dtype)
    if init == 'random':
      theta = init_scale / jnp.sqrt(dim) * jax.random.normal(
          key, (dim,), theta.dtype)
    return theta

  def log_probs(theta, x):
    scores = jnp.einsum('bnd,d->bn', x.features, theta)
    return reference_plus(x.log_ref, scores)

  return enumerable('loglinear', init_params, log_probs)
