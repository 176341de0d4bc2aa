"""MLP policy (Flax) over context and response embeddings.

``pi_theta(y|x) ∝ pi_ref(y|x) exp(f_theta(psi(x), phi(x, y)))`` where ``f`` is
an MLP on the concatenated context embedding ``psi(x)``
(``x.context_features``) and response embedding ``phi(x, y)``
(``x.features``), shared across contexts
and responses. The output layer starts at zero, so the initial policy is
``pi_ref`` whatever the hidden weights.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from nash_jax.policies.core import Policy, enumerable, reference_plus


class ScoreMLP(nn.Module):
  """``f(psi, phi)``: a scalar score per (context, response) pair."""

  hidden: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, inputs):
    h = inputs
    for width in self.hidden:
      h = nn.tanh(nn.Dense(width, param_dtype=inputs.dtype)(h))
    out = nn.Dense(1, kernel_init=nn.initializers.zeros,
                   param_dtype=inputs.dtype)(h)
    return out[..., 0]


def _inputs(x):
  phi = x.features                                     # [B, n, d]
  psi = x.context_features                             # [B, d]
  psi = jnp.broadcast_to(psi[:, None, :], phi.shape[:2] + psi.shape[-1:])
  return jnp.concatenate([psi, phi], axis=-1)


def make_mlp(hidden: Sequence[int] = (64, 64)) -> Policy:
  """An MLP policy with the given hidden widths (tanh activations)."""
  module = ScoreMLP(tuple(hidden))

  def init_params(key, x, reference=None):
    del reference
    return module.init(key, _inputs(x)[:1])

  def log_probs(params, x):
    scores = module.apply(params, _inputs(x))
    return reference_plus(x.log_ref, scores)

  return enumerable('mlp', init_params, log_probs)



