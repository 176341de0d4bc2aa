"""Update rules: pure functions on log-policies and logits (rlax style).

Policy-space rules (ALGORITHMS.md section 3) map ``log pi_t``, ``log pi_ref`` and
win rates ``g`` to the next normalized log-policy, per context. Every argument
is an array of shape ``[..., n]`` (a leading context axis, batching left to
``vmap``); step sizes and ``beta`` may be traced scalars, so sweeps over them
vmap too. Parameter-space objectives (section 4) are scalar functions of
logits whose gradients the optax-driven algorithms follow.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from nash_jax.distributions import (  # noqa: F401 (re-exported)
  geometric_mixture,
  normalize,
)
from nash_jax.games.core import win_rates


def mirror_descent(log_policy, log_ref, g, eta, beta):
  """Online mirror descent / MWU on ``J_beta``.

  ``pi_{t+1} ∝ pi_t^{1 - eta beta} pi_ref^{eta beta} exp(eta g)``; a mirror
  step needs ``eta beta <= 1``.
  """
  chex.assert_equal_shape([log_policy, log_ref, g])
  c = eta * beta
  return normalize((1 - c) * log_policy + c * log_ref + eta * g)


def magnetic_mirror_descent(log_policy, log_ref, g, eta, beta):
  """Magnetic mirror descent (Sokota et al. 2023), magnet ``pi_ref``.

  ``pi_{t+1} ∝ (pi_t pi_ref^{eta beta} exp(eta g))^{1 / (1 + eta beta)}``.
  """
  chex.assert_equal_shape([log_policy, log_ref, g])
  return normalize((log_policy + eta * beta * log_ref + eta * g) /
                   (1 + eta * beta))


def prox_coefficients(eta, beta):
  """``kappa = eta / (1 + eta)`` and ``lambda = eta / (beta (1 + eta))``."""
  return eta / (1 + eta), eta / (beta * (1 + eta))


def prox_reference(log_anchor, log_ref, eta):
  """The prox game's reference ``pi~ ∝ pi_ref^kappa pi_k^{1 - kappa}``.

  The proximal-point subproblem at anchor ``pi_k`` is the regularized game with
  reference ``pi~`` and strength ``beta' = 1 / lambda = beta (1 + 1/eta)``.
  """
  kappa = eta / (1 + eta)
  return geometric_mixture(log_anchor, log_ref, kappa)


def prox_step(log_anchor, log_ref, g, eta, beta):
  """Nash-MP's (half) step ``pi ∝ pi_ref^kappa pi_k^{1 - kappa} exp(lambda g)``."""
  chex.assert_equal_shape([log_anchor, log_ref, g])
  kappa, lam = prox_coefficients(eta, beta)
  return normalize(kappa * log_ref + (1 - kappa) * log_anchor + lam * g)


def self_play_objective(logits, preferences, log_ref, context_weights, beta):
  """``S(theta) = P(pi_theta > sg[pi_theta]) - beta KL_rho(pi_theta || pi_ref)``.

  Exact over a tabular game: ``E_x [sum_y pi(y) g_{sg pi}(y) - beta KL]``.
  Its gradient is the self-play policy gradient of ALGORITHMS.md section 4.
  """
  chex.assert_rank([logits, preferences], [2, 3])
  log_policy = normalize(logits)
  policy = jnp.exp(log_policy)
  g = win_rates(preferences, jax.lax.stop_gradient(policy))
  per_context = (jnp.sum(policy * g, axis=-1) -
                 beta * jnp.sum(policy * (log_policy - log_ref), axis=-1))
  return jnp.sum(context_weights * per_context)


def online_ipo_loss(logits, preferences, log_ref, context_weights, beta):
  """Online IPO (Calandriello et al. 2024, arXiv 2403.08635), exact, up to a
  term without gradient.

  The online IPO loss is ``L(theta) = E_{x ~ rho, y, y' ~ sg pi}
  [(h(y, y') - t(y, y'))^2]`` with ``h = a(y) - a(y')``, ``a = log pi_theta -
  log pi_ref`` and ``t = (P(y > y') - 1/2) / beta`` (the preference
  probability standing for the Bernoulli outcome ``o`` changes it by a
  constant only). Expanding the square, with ``w = sg pi`` and the win rates
  ``g = P w``, per context:

  * ``E_{w w}[h^2] = 2 E_w[a^2] - 2 E_w[a]^2 = 2 Var_w(a)``;
  * ``E_{w w}[h t] = (1 / beta) sum_{y, y'} w(y) w(y') (a(y) - a(y'))
    (P(y > y') - 1/2) = (2 / beta) E_w[a (g - 1/2)]``, since
    ``sum_y' w(y') (P(y > y') - 1/2) = g(y) - 1/2`` and, by
    ``P(y > y') = 1 - P(y' > y)``, the ``a(y')`` half equals minus the
    ``a(y)`` half;
  * ``E_{w w}[t^2] = C(w)``, which depends on ``theta`` only through
    ``sg pi``: it has no gradient.

  So ``L = E_rho [2 Var_w(a) - (4 / beta) E_w[a (g - 1/2)] + C(w)]``, and
  this function returns ``L - E_rho C(w)``, the online IPO loss without its
  stop-gradient term ``C(w) = beta^-2 sum_{y, y'} w(y) w(y') (P(y > y') -
  1/2)^2``: the same gradient (tested against the pairwise form to 1e-12 in
  float64), and, at a fixed ``w``, the same value up to a constant (the
  value reported as ``loss`` is smaller than the pairwise form's by
  ``E_rho C(sg pi)``, and can be negative). It costs one win-rate product
  per context (``g``, without gradient) and ``O(n)`` further work, where the
  pairwise form builds ``[X, n, n]`` temporaries; vmapped over the seeds of
  a shared game, ``g`` of every seed is one matrix product.
  ``grad L = -(4 / beta) grad S`` (tested).

  Args:
    logits: ``[X, n]`` logits ``theta``.
    preferences: ``[X, n, n]``, ``P(y > y' | x)``.
    log_ref: ``[X, n]``, ``log pi_ref``.
    context_weights: ``[X]``, ``rho``.
    beta: regularization strength (``> 0``).

  Returns:
    The scalar loss.
  """
  chex.assert_rank([logits, preferences], [2, 3])
  log_policy = normalize(logits)
  weights = jax.lax.stop_gradient(jnp.exp(log_policy))
  g = win_rates(preferences, weights)
  log_ratio = log_policy - log_ref
  centered = log_ratio - jnp.sum(weights * log_ratio, axis=-1, keepdims=True)
  variance = jnp.sum(weights * centered ** 2, axis=-1)
  cross = jnp.sum(weights * log_ratio * (g - 0.5), axis=-1)
  per_context = 2 * variance - (4 / beta) * cross
  return jnp.sum(context_weights * per_context)


# Sampled estimators (ALGORITHMS.md section 4): per-sample losses on the
# log-probabilities of sampled responses, so any policy class (tabular,
# log-linear, a language model summing token log-probabilities) can use them;
# batching is left to vmap / a mean over the batch.


def online_ipo_sample_loss(log_prob_y, log_prob_y_prime, log_ref_y,
                           log_ref_y_prime, outcome, beta):
  """Online IPO on one comparison: ``(h - (o - 1/2) / beta)^2``.

  ``h = log pi(y)/pi(y') - log pi_ref(y)/pi_ref(y')`` with ``y, y' ~ sg pi``
  and ``o`` the preference outcome (Bernoulli or ``P(y > y')`` itself). Its
  expectation differs from :func:`online_ipo_loss` by terms without gradient
  (the outcome's variance and ``C(sg pi)``), so its gradient is an unbiased
  estimate of the exact one (tested).
  """
  chex.assert_equal_shape([log_prob_y, log_prob_y_prime, log_ref_y,
                           log_ref_y_prime, outcome])
  h = (log_prob_y - log_ref_y) - (log_prob_y_prime - log_ref_y_prime)
  return ipo_sample_loss(h, outcome, beta)


def ipo_sample_loss(h, outcome, beta):
  """IPO on one comparison with soft label ``o``: ``(h - (o - 1/2) /
  beta)^2`` (Azar et al. 2023, arXiv 2310.12036).

  ``h = log pi(y)/pi_ref(y) - log pi(y')/pi_ref(y')``. For a hard label it
  is the expectation over which response won of IPO's ``(h_{w,l} - 1/(2
  beta))^2`` up to a constant: ``o (h - c)^2 + (1 - o) (h + c)^2 = (h - (2o
  - 1) c)^2 + const`` with ``c = 1/(2 beta)``. Online IPO draws ``y, y'``
  from ``sg pi``; offline IPO from a fixed dataset.
  """
  chex.assert_equal_shape([h, outcome])
  return (h - (outcome - 0.5) / beta) ** 2


def dpo_sample_loss(h, outcome, beta):
  """DPO on one comparison with soft label ``o`` (Rafailov et al. 2023,
  arXiv 2305.18290): ``-o log sigmoid(beta h) - (1 - o) log sigmoid(-beta
  h)``.

  ``h = log pi(y)/pi_ref(y) - log pi(y')/pi_ref(y')``; a hard label
  ``o = 1`` (``y`` won) gives DPO's ``-log sigmoid(beta h_{w,l})``. With
  ``beta = 1`` and ``h = r(y) - r(y')`` it is the Bradley-Terry negative
  log-likelihood of a reward model (Bradley & Terry 1952).
  """
  chex.assert_equal_shape([h, outcome])
  z = beta * h
  return -(outcome * jax.nn.log_sigmoid(z) +
           (1 - outcome) * jax.nn.log_sigmoid(-z))


def self_play_pg_sample_loss(log_prob_y, log_ref_y, outcome, baseline, beta):
  """REINFORCE surrogate of self-play PG on one sample (to be minimized).

  ``-(sg[o - beta log(pi(y)/pi_ref(y))] - b) log pi(y)`` with ``y ~ sg pi``,
  ``o`` the outcome of ``y`` against ``y' ~ sg pi`` (``E[o | y] = g_pi(y)``)
  and ``b`` a baseline that does not depend on ``y``. Its gradient is an
  unbiased estimate of ``-grad S`` (tested).
  """
  chex.assert_equal_shape([log_prob_y, log_ref_y, outcome])
  advantage = jax.lax.stop_gradient(
      outcome - beta * (log_prob_y - log_ref_y)) - baseline
  return -advantage * log_prob_y


def leave_one_out_baseline(values: chex.Array) -> chex.Array:
  """Per sample, the mean of the *other* samples' values (``[B]``).

  A baseline that does not depend on its own sample keeps REINFORCE
  unbiased; with one sample it is 0.
  """
  chex.assert_rank(values, 1)
  values = jax.lax.stop_gradient(values)
  num = values.shape[0]
  if num == 1:
    return jnp.zeros_like(values)
  return (jnp.sum(values) - values) / (num - 1)


def nash_prox_sample_loss(log_prob_y, log_prob_y_prime, log_ref_y,
                          log_ref_y_prime, log_anchor_y, log_anchor_y_prime,
                          outcome, beta, eta):
  """Proximal-point self-play in IPO form on one comparison (Nash Prox).

  ``(h - lambda (o - 1/2))^2`` with ``y, y' ~ sg pi_theta`` and
  ``h = log pi(y)/pi(y') - kappa log pi_ref(y)/pi_ref(y')
  - (1 - kappa) log pi_k(y)/pi_k(y')``, ``kappa = eta / (1 + eta)``,
  ``lambda = eta / (beta (1 + eta))`` (ALGORITHMS.md section 4). It is the
  online IPO loss of the prox game (reference ``pi_ref^kappa pi_k^(1-kappa)``,
  strength ``1 / lambda``), whose stationary point is the proximal-point
  step. With the anchor ``pi_k = sg pi_theta`` its gradient is ``kappa``
  times that of :func:`online_ipo_sample_loss`.
  """
  chex.assert_equal_shape([log_prob_y, log_prob_y_prime, log_ref_y,
                           log_ref_y_prime, log_anchor_y, log_anchor_y_prime,
                           outcome])
  kappa, lam = prox_coefficients(eta, beta)
  h = ((log_prob_y - log_prob_y_prime) -
       kappa * (log_ref_y - log_ref_y_prime) -
       (1 - kappa) * (log_anchor_y - log_anchor_y_prime))
  return (h - lam * (outcome - 0.5)) ** 2


def prox_pg_sample_loss(log_prob_y, log_ref_y, log_anchor_y, outcome,
                        baseline, beta, eta):
  """REINFORCE surrogate of one approximate Nash-MP half step (minimized).

  The half step maximizes ``P(pi_theta > opponent) - beta KL(pi_theta ||
  pi_ref) - (beta / eta) KL(pi_theta || pi_k)``, whose maximizer is
  ``pi ∝ pi_ref^kappa pi_k^(1-kappa) exp(lambda g_opponent)``. With
  ``y ~ sg pi_theta`` and ``o`` its outcome against ``y' ~ opponent``, the
  gradient of ``-(sg[o - beta log pi/pi_ref - (beta/eta) log pi/pi_k] - b)
  log pi(y)`` is an unbiased estimate of minus that objective's gradient.
  """
  chex.assert_equal_shape([log_prob_y, log_ref_y, log_anchor_y, outcome])
  advantage = jax.lax.stop_gradient(
      outcome - beta * (log_prob_y - log_ref_y) -
      (beta / eta) * (log_prob_y - log_anchor_y)) - baseline
  return -advantage * log_prob_y
