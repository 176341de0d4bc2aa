"""The exact online IPO loss in expanded form equals the pairwise form.

``rules.online_ipo_loss`` computes ``E_rho [2 Var_w(a) - (4 / beta)
E_w[a (g - 1/2)]]`` (``a = log pi - log pi_ref``, ``w = sg pi``, ``g = P w``)
instead of the pairwise ``E_rho E_{w w}[(h - (P - 1/2) / beta)^2]``. Here, on
random games in float64: the gradients agree to 1e-12, and the values differ
by exactly the stop-gradient term ``E_rho C(w)``, ``C(w) = beta^-2 sum w(y)
w(y') (P(y > y') - 1/2)^2``, which has no gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_numpy_game

from nash_jax import rules


def _random_inputs(seed, num_contexts, num_actions):
  """Random preferences (``P + P^T = 1``), ``rho``, ``pi_ref`` and logits."""
  rng = np.random.default_rng(seed)
  preferences, weights, ref = random_numpy_game(rng, num_contexts,
                                                num_actions)
  log_ref = np.log(ref)
  logits = 2.0 * rng.normal(size=(num_contexts, num_actions))
  return logits, preferences, log_ref, weights


def pairwise_online_ipo_loss(logits, preferences, log_ref, context_weights,
                             beta):
  """The online IPO loss as written in ALGORITHMS.md (``[X, n, n]`` pairs)."""
  log_policy = jax.nn.log_softmax(logits, axis=-1)
  weights = jax.lax.stop_gradient(jnp.exp(log_policy))
  log_ratio = log_policy - log_ref
  h = log_ratio[:, :, None] - log_ratio[:, None, :]
  target = (preferences - 0.5) / beta
  pair_weights = weights[:, :, None] * weights[:, None, :]
  per_context = jnp.sum(pair_weights * (h - target) ** 2, axis=(-1, -2))
  return jnp.sum(context_weights * per_context)


def stop_gradient_term(logits, preferences, context_weights, beta):
  """``E_rho C(w)`` in NumPy."""
  logits = np.asarray(logits)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  per_context = np.einsum('xy,xyz,xz->x', w, (preferences - 0.5) ** 2, w)
  return float(np.dot(context_weights, per_context)) / beta ** 2


@pytest.mark.parametrize('beta', [1.0, 0.1, 0.01])
@pytest.mark.parametrize('seed,num_contexts,num_actions',
                         [(0, 1, 2), (1, 3, 7), (2, 2, 50), (3, 4, 200)])
def test_gradient_equals_the_pairwise_form(seed, num_contexts, num_actions,
                                           beta):
  args = _random_inputs(seed, num_contexts, num_actions)
  want = np.asarray(jax.grad(pairwise_online_ipo_loss)(*args, beta))
  got = np.asarray(jax.grad(rules.online_ipo_loss)(*args, beta))
  scale = np.max(np.abs(want))
  assert scale > 1e-3
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize('beta', [1.0, 0.1, 0.01])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_value_is_pairwise_form_less_the_stop_gradient_term(seed, beta):
  logits, preferences, log_ref, weights = _random_inputs(seed, 3, 20)
  for shift in (0.0, 1.0):  # Two parameter values: the identity holds at each.
    theta = logits + shift * np.random.default_rng(seed + 7).normal(
        size=logits.shape)
    pairwise = float(pairwise_online_ipo_loss(theta, preferences, log_ref,
                                              weights, beta))
    got = float(rules.online_ipo_loss(theta, preferences, log_ref, weights,
                                      beta))
    term = stop_gradient_term(theta, preferences, weights, beta)
    assert got == pytest.approx(pairwise - term, rel=1e-12,
                                abs=1e-12 * abs(pairwise))

