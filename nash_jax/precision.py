"""Optimizer arithmetic in float32 for low-precision parameters.

Every optax optimizer of the package (the policies' steps, SFT, the reward
model of BT-RLHF, the learned preference model) is wrapped in
:func:`in_float32`, so that a bfloat16 model trains with float32 moments
and hyperparameters (mixed precision as in Micikevicius et al., 2018,
"Mixed Precision Training", without the float32 master copy of the
weights: the update is added in float32 and rounded once).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _widen(tree):
  """``tree`` with its floating leaves narrower than float32 (bfloat16,
  float16) cast to float32; every other leaf (float32, float64, ints,
  ``None``) is returned as it is, untouched."""
  def widen(x):
    if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return x
    if jnp.finfo(jnp.result_type(x)).bits >= 32:
      return x
    return jnp.asarray(x, jnp.float32)
  return jax.tree.map(widen, tree, is_leaf=lambda x: x is None)


def in_float32(inner: optax.GradientTransformation
               ) -> optax.GradientTransformation:
  """``inner`` run on float32 copies of low-precision gradients and params.

  For bfloat16 (or float16) params, ``inner``'s state (adam's moments
  ``mu``, ``nu``; ``inject_hyperparams``' stored hyperparameters) and its
  arithmetic are float32, and so are the updates it returns;
  ``optax.apply_updates`` adds them to the params in float32 and rounds the
  sum to the params' dtype. Without this, ``inject_hyperparams`` stores the
  hyperparameters in the params' dtype: in bfloat16 (8 significant bits)
  adam's ``b2 = 0.999`` rounds to 1, the bias correction ``1 - b2^t`` is 0
  and the first update is NaN; and a bfloat16 ``nu`` cannot decay by a
  factor 0.999 (the change is below half an ulp). float32 and float64
  params pass through untouched (the same program as ``inner`` alone).
  """
  def init(params):
    return inner.init(_widen(params))

  def update(updates, state, params=None):
    return inner.update(_widen(updates), state, _widen(params))

  return optax.GradientTransformation(init, update)
