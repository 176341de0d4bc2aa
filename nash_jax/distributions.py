"""Categorical distributions as log-probability arrays: the few operations
that every stage shares (normalization, the Nash-MD geometric mixture and
sampling), so that policies need not import the update rules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def normalize(logits: chex.Array) -> chex.Array:
  """Log-softmax over responses: the normalization ``pi ∝ exp(logits)``."""
  return jax.nn.log_softmax(logits, axis=-1)


def geometric_mixture(log_policy, log_ref, c):
  """Nash-MD's mixture ``pi^mu ∝ pi^{1 - c} pi_ref^c`` (Munos et al. 2024,
  arXiv 2312.00886)."""
  chex.assert_equal_shape([log_policy, log_ref])
  return normalize((1 - c) * log_policy + c * log_ref)


def sample_categorical(key, log_probs: chex.Array) -> chex.Array:
  """One draw per row of ``[B, n]`` log-probabilities, by inverse CDF.

  One uniform per row, where ``jax.random.categorical`` (Gumbel-max) needs
  ``n``: random bits dominate the sampled step on CPU, and this is about
  twice as fast at n = 20. ``y = #{k : F(k) <= u F(n-1)}`` with the
  cumulative sums ``F``, so rows need not be normalized.
  """
  cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
  u = jax.random.uniform(key, cdf.shape[:-1] + (1,), cdf.dtype)
  index = jnp.sum(cdf <= u * cdf[..., -1:], axis=-1)
  return jnp.minimum(index, log_probs.shape[-1] - 1).astype(jnp.int32)
