"""Cross-play: head-to-head win rates among trained policies and pi_ref
under the ground-truth preferences (ALGORITHMS.md
section 5, claim 6).

For policies ``pi_i`` over listed responses, the win rate of ``pi_i``
against ``pi_j`` is::

  W[i, j] = P(pi_i > pi_j) = sum_x rho(x) pi_i(.|x)^T P[x] pi_j(.|x)

exactly (:func:`exact_win_rates`); ``W + W^T = 1`` because ``P + P^T =
1``, and ``W[i, i] = 1/2``. The sampled estimate (:func:`sampled_win_rates`)
draws ``x ~ rho``, ``y ~ pi_i``, ``y' ~ pi_j`` and the oracle's outcome
``o`` (a Bernoulli label, or ``P(y > y'|x)`` itself) ``m`` times per cell,
as one would with policies whose responses cannot be listed, and reports
the mean with a 95% normal interval ``mean ± 1.96 s / sqrt(m)`` (``s``
the sample standard deviation of the outcomes) and the number of
comparisons ``m`` behind it. Each cell is an independent draw (cells
``[i, j]`` and ``[j, i]`` are estimated separately, so the sampled matrix is
not antisymmetric; the exact one is).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nash_jax.distributions import sample_outcome

Z_95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def exact_win_rates(policies, preferences, context_weights) -> np.ndarray:
  """``W [K, K]`` from policies ``[K, X, N]``, ``P [X, N, N]`` and ``rho
  [X]`` (float64, on the host)."""
  policies = np.asarray(policies, np.float64)
  prefs = np.asarray(preferences, np.float64)
  rho = np.asarray(context_weights, np.float64)
  return np.einsum('x,ixa,xab,jxb->ij', rho, policies, prefs, policies)


def _draw(key, probs, count):
  """``count`` indices from each row of ``probs [..., N]`` by inverse CDF:
  ``[..., count]``."""
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.random.uniform(key, probs.shape[:-1] + (count,), probs.dtype)
  index = jnp.sum(cdf[..., None, :] <= u[..., None] * cdf[..., -1:, None],
                  axis=-1)
  return jnp.minimum(index, probs.shape[-1] - 1)


def sampled_win_rates(key: chex.PRNGKey, policies, preferences,
                      context_weights, num_comparisons: int,
                      outcome: str = 'bernoulli') -> dict:
  """Monte Carlo estimate of every cell of ``W`` (module docstring).

  Args:
    key: PRNG key.
    policies: ``[K, X, N]`` distributions over listed responses.
    preferences: ``[X, N, N]``.
    context_weights: ``[X]``.
    num_comparisons: ``m``, comparisons per cell (one preference query
      each).
    outcome: ``'bernoulli'`` (a sampled label) or ``'probability'``.

  Returns:
    ``{'mean', 'low', 'high', 'stderr'}``: ``[K, K]`` float64 arrays, and
    ``'comparisons'``: ``m``.
  """
  policies = jnp.asarray(policies, jnp.float32)
  prefs = jnp.asarray(preferences, jnp.float32)
  rho = jnp.asarray(context_weights, jnp.float32)
  k = policies.shape[0]
  cells = jnp.stack(jnp.meshgrid(jnp.arange(k), jnp.arange(k),
                                 indexing='ij'), -1).reshape(-1, 2)
  keys = jax.random.split(key, k * k)

  def cell(args):
    """``m`` outcome probabilities (or labels) of one cell ``(i, j)``."""
    (i, j), key = args
    x_key, y_key, z_key, o_key = jax.random.split(key, 4)
    x = _draw(x_key, rho, num_comparisons)                       # [m]
    y = _draw(y_key, policies[i][x], 1)[:, 0]
    y_prime = _draw(z_key, policies[j][x], 1)[:, 0]
    prob = prefs[x, y, y_prime]                   # float32, as prefs
    return sample_outcome(o_key, prob, outcome)

  o = jax.jit(lambda c, ks: jax.lax.map(cell, (c, ks)))(cells, keys)
  o = np.asarray(o, np.float64).reshape(k, k, num_comparisons)
  mean = o.mean(-1)
  stderr = (o.std(-1, ddof=1) / np.sqrt(num_comparisons)
            if num_comparisons > 1 else np.full_like(mean, np.inf))
  return {'mean': mean, 'stderr': stderr, 'low': mean - Z_95 * stderr,
          'high': mean + Z_95 * stderr, 'comparisons': num_comparisons}
