"""Tests for the exact reference solvers (nash_jax.reference)."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special
from helpers import random_preferences

from nash_jax import reference

RPS = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
BETAS = (1.0, 0.1, 0.01, 0.001)


def bradley_terry_preferences(rewards):
  """``P(y > y' | x) = sigmoid(r(x, y) - r(x, y'))``; rewards ``[X, n]``."""
  rewards = np.atleast_2d(rewards)
  return scipy.special.expit(rewards[:, :, None] - rewards[:, None, :])


def random_policy(rng, num_contexts, num_actions, concentration=1.0):
  return rng.dirichlet(np.full(num_actions, concentration), size=num_contexts)


def win_rates(preferences, policy):
  return np.einsum('xyz,xz->xy', preferences, policy)


def span(residual):
  return np.max(residual, axis=-1) - np.min(residual, axis=-1)


def residual_span(policy, preferences, ref_policy, beta):
  """Independent ``span_y(log pi - log pi_ref - g_pi / beta)`` per context."""
  residual = (np.log(policy) - np.log(ref_policy) -
              win_rates(preferences, policy) / beta)
  return span(residual)


def assert_simplex(policy, atol=1e-12):
  assert np.all(policy >= 0)
  np.testing.assert_allclose(policy.sum(-1), 1.0, rtol=0, atol=atol)


# ----------------------------------------------------------------------------
# Regularized equilibrium: closed forms.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('beta', BETAS)
def test_rock_paper_scissors_uniform(beta):
  pi = reference.regularized_equilibrium(RPS, np.full(3, 1 / 3), beta)
  assert pi.shape == (1, 3)
  np.testing.assert_allclose(pi, 1 / 3, rtol=0, atol=1e-10)


@pytest.mark.parametrize('beta', BETAS)
def test_rock_paper_scissors_with_non_uniform_ref_is_not_uniform(beta):
  ref = np.array([0.6, 0.3, 0.1])
  pi = reference.regularized_equilibrium(RPS, ref, beta)
  assert_simplex(pi)
  assert np.all(residual_span(pi, RPS[None], ref[None], beta) < 1e-9)
  assert np.max(np.abs(pi - 1 / 3)) > 1e-3


@pytest.mark.parametrize('beta', BETAS)
def test_tie_game_gives_ref_policy(beta):
  rng = np.random.default_rng(0)
  ref = random_policy(rng, 3, 5)
  pi = reference.regularized_equilibrium(np.full((3, 5, 5), 0.5), ref, beta)
  np.testing.assert_allclose(pi, ref, rtol=1e-10, atol=1e-13)


def _two_by_two_by_hand(p, ref_a, beta):
  """Solves the 2x2 fixed point for ``q = pi(a)`` with brentq.

  ``log(pi_a / pi_b) = log(ref_a / ref_b) + (g_a - g_b) / beta`` with
  ``g_a = q/2 + p (1 - q)`` and ``g_b = (1 - p) q + (1 - q)/2``.
  """

  def equation(q):
    g_a = 0.5 * q + p * (1 - q)
    g_b = (1 - p) * q + 0.5 * (1 - q)
    return (np.log(q) - np.log1p(-q) - np.log(ref_a) + np.log1p(-ref_a) -
            (g_a - g_b) / beta)

  return scipy.optimize.brentq(equation, 1e-300, 1 - 1e-16, xtol=1e-15,
                               rtol=4 * np.finfo(float).eps, maxiter=500)


@pytest.mark.parametrize('p', [0.5, 0.55, 0.7, 0.9, 0.2, 1.0])
@pytest.mark.parametrize('beta', [1.0, 0.3, 0.1])
def test_two_by_two_against_brentq(p, beta):
  preferences = np.array([[0.5, p], [1 - p, 0.5]])
  q = _two_by_two_by_hand(p, 0.5, beta)
  pi = reference.regularized_equilibrium(preferences, np.full(2, 0.5), beta)
  np.testing.assert_allclose(pi[0], [q, 1 - q], rtol=0, atol=1e-10)
  # g_a - g_b = p - 1/2 whatever q, so the fixed point is a logistic.
  np.testing.assert_allclose(q, scipy.special.expit((p - 0.5) / beta),
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize('ref_a', [0.1, 0.8])
def test_two_by_two_against_brentq_with_non_uniform_ref(ref_a):
  p, beta = 0.65, 0.2
  preferences = np.array([[0.5, p], [1 - p, 0.5]])
  q = _two_by_two_by_hand(p, ref_a, beta)
  pi = reference.regularized_equilibrium(preferences, [ref_a, 1 - ref_a],
                                         beta)
  np.testing.assert_allclose(pi[0], [q, 1 - q], rtol=0, atol=1e-10)


def test_bradley_terry_concentrates_on_condorcet_winner():
  rewards = np.array([[0.0, 2.0, 1.0, -1.0, 0.5],
                      [3.0, 0.0, 1.0, 2.0, -2.0]])
  preferences = bradley_terry_preferences(rewards)
  ref = np.full((2, 5), 0.2)
  winners = np.argmax(rewards, axis=-1)
  mass = []
  for beta in BETAS:
    pi = reference.regularized_equilibrium(preferences, ref, beta)
    mass.append(pi[np.arange(2), winners])
  mass = np.array(mass)
  assert np.all(mass[-1] > 0.9)
  assert np.all(mass[-2] > 0.9)
  # The mass on the winner grows as beta shrinks.
  assert np.all(np.diff(mass, axis=0) > 0)
  # With large beta the policy stays close to pi_ref.
  assert np.all(mass[0] < 0.5)


# ----------------------------------------------------------------------------
# Regularized equilibrium: random games.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('beta', BETAS)
@pytest.mark.parametrize('num_contexts,num_actions', [(1, 20), (3, 20),
                                                      (1, 100)])
def test_residual_vanishes_on_random_games(num_contexts, num_actions, beta):
  rng = np.random.default_rng(num_actions + num_contexts)
  preferences = random_preferences(rng, num_contexts, num_actions)
  ref = random_policy(rng, num_contexts, num_actions, concentration=3.0)
  log_pi = reference.regularized_equilibrium(preferences, ref, beta,
                                             return_log=True)
  assert log_pi.shape == (num_contexts, num_actions)
  assert log_pi.dtype == np.float64
  pi = np.exp(log_pi)
  assert_simplex(pi)
  residual = reference.fixed_point_residual(log_pi, preferences, np.log(ref),
                                            beta)
  assert residual.shape == (num_contexts, num_actions)
  assert np.all(span(residual) < 1e-10)
  # The residual from the formula, written here.
  assert np.all(residual_span(pi, preferences, ref, beta) < 1e-10)
  # return_log is consistent with the probabilities.
  pi_direct = reference.regularized_equilibrium(preferences, ref, beta)
  np.testing.assert_allclose(pi_direct, pi, rtol=1e-12, atol=0)


def test_fixed_point_residual_formula():
  rng = np.random.default_rng(5)
  preferences = random_preferences(rng, 2, 4)
  policy = random_policy(rng, 2, 4)
  ref = random_policy(rng, 2, 4)
  got = reference.fixed_point_residual(np.log(policy), preferences,
                                       np.log(ref), 0.3)
  want = np.log(policy) - np.log(ref) - win_rates(preferences, policy) / 0.3
  np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
  # Away from the equilibrium the span is not small.
  assert np.all(span(got) > 1e-3)


def test_single_context_inputs_broadcast():
  rng = np.random.default_rng(6)
  preferences = random_preferences(rng, 1, 6)
  ref = random_policy(rng, 1, 6)
  batched = reference.regularized_equilibrium(preferences, ref, 0.1)
  single = reference.regularized_equilibrium(preferences[0], ref[0], 0.1)
  np.testing.assert_allclose(single, batched, rtol=1e-12, atol=0)
  # A shared [n] reference policy for several contexts.
  preferences = random_preferences(rng, 3, 6)
  shared = reference.regularized_equilibrium(preferences, ref[0], 0.1)
  tiled = reference.regularized_equilibrium(preferences, np.tile(ref, (3, 1)),
                                            0.1)
  np.testing.assert_allclose(shared, tiled, rtol=1e-12, atol=0)


def test_unnormalized_ref_policy_is_normalized():
  rng = np.random.default_rng(7)
  preferences = random_preferences(rng, 2, 5)
  ref = random_policy(rng, 2, 5)
  pi = reference.regularized_equilibrium(preferences, ref, 0.1)
  scaled = reference.regularized_equilibrium(preferences, 3 * ref, 0.1)
  np.testing.assert_allclose(scaled, pi, rtol=1e-10, atol=0)


def _damped_fixed_point(preferences, ref, beta, damping, steps):
  """``log pi <- (1 - a) log pi + a log normalize(pi_ref exp(g_pi / beta))``."""
  log_pi = np.log(ref)
  for _ in range(steps):
    target = np.log(ref) + win_rates(preferences, np.exp(log_pi)) / beta
    target -= scipy.special.logsumexp(target, axis=-1, keepdims=True)
    log_pi = (1 - damping) * log_pi + damping * target
    log_pi -= scipy.special.logsumexp(log_pi, axis=-1, keepdims=True)
  return np.exp(log_pi)


@pytest.mark.parametrize('beta,damping,steps', [(1.0, 0.5, 300),
                                                (0.3, 0.2, 2000)])
def test_agrees_with_plain_damped_iteration(beta, damping, steps):
  rng = np.random.default_rng(8)
  preferences = random_preferences(rng, 3, 20)
  ref = random_policy(rng, 3, 20, concentration=2.0)
  plain = _damped_fixed_point(preferences, ref, beta, damping, steps)
  # The plain iteration itself converged.
  assert np.all(residual_span(plain, preferences, ref, beta) < 1e-11)
  pi = reference.regularized_equilibrium(preferences, ref, beta)
  np.testing.assert_allclose(pi, plain, rtol=0, atol=1e-8)
  np.testing.assert_allclose(pi, plain, rtol=1e-9, atol=0)


@pytest.mark.parametrize('beta', [0.0, -0.1, -1.0, float('nan')])
def test_non_positive_beta_raises(beta):
  with pytest.raises(ValueError, match='beta'):
    reference.regularized_equilibrium(RPS, np.full(3, 1 / 3), beta)


def test_solver_error_when_out_of_iterations():
  rng = np.random.default_rng(9)
  preferences = random_preferences(rng, 1, 10)
  ref = random_policy(rng, 1, 10)
  with pytest.raises(reference.SolverError):
    reference.regularized_equilibrium(preferences, ref, 0.01, max_iter=1)


# ----------------------------------------------------------------------------
# Von Neumann winner (beta = 0).
# ----------------------------------------------------------------------------


def _worst_case_value(preferences, policy):
  """``min_{y'} sum_y pi(y) P(y > y')`` per context."""
  return np.min(np.einsum('xy,xyz->xz', policy, preferences), axis=-1)


def test_von_neumann_rock_paper_scissors_is_uniform():
  pi = reference.von_neumann_winner(RPS)
  assert pi.shape == (1, 3)
  np.testing.assert_allclose(pi, 1 / 3, rtol=0, atol=1e-8)


def test_von_neumann_weighted_rock_paper_scissors():
  # Scissors beats paper by a lot: P(r > s) = 1, P(p > r) = 0.6, P(s > p) =
  # 0.8. Writing a = P(y > y') - 1/2 as an antisymmetric matrix A, the
  # winner solves A^T pi = 0: pi ∝ (a_ps, a_sr, a_rp) = (.3, .5, .1).
  preferences = np.array([[0.5, 0.4, 1.0], [0.6, 0.5, 0.2], [0.0, 0.8, 0.5]])
  pi = reference.von_neumann_winner(preferences)
  np.testing.assert_allclose(pi[0], np.array([0.3, 0.5, 0.1]) / 0.9, rtol=0,
                             atol=1e-8)
  np.testing.assert_allclose(_worst_case_value(preferences[None], pi), 0.5,
                             atol=1e-9)


def test_von_neumann_bradley_terry_is_one_hot_condorcet_winner():
  rng = np.random.default_rng(10)
  rewards = rng.normal(size=(4, 6))
  pi = reference.von_neumann_winner(bradley_terry_preferences(rewards))
  np.testing.assert_allclose(pi, np.eye(6)[np.argmax(rewards, -1)], rtol=0,
                             atol=1e-9)


@pytest.mark.parametrize('num_contexts,num_actions', [(1, 2), (3, 7),
                                                      (2, 30)])
def test_von_neumann_random_games(num_contexts, num_actions):
  rng = np.random.default_rng(num_actions)
  preferences = random_preferences(rng, num_contexts, num_actions)
  pi = reference.von_neumann_winner(preferences)
  assert pi.shape == (num_contexts, num_actions)
  assert_simplex(pi)
  value = _worst_case_value(preferences, pi)
  assert np.all(value >= 0.5 - 1e-9)
  # The value of a symmetric game is 1/2: no policy guarantees more.
  assert np.all(value <= 0.5 + 1e-9)
  # Hence no response beats it: exploitability zero.
  assert np.all(np.max(win_rates(preferences, pi), axis=-1) <= 0.5 + 1e-9)


def test_equilibrium_dispatches_on_beta():
  rng = np.random.default_rng(11)
  preferences = random_preferences(rng, 2, 8)
  ref = random_policy(rng, 2, 8)
  np.testing.assert_array_equal(reference.equilibrium(preferences, ref, 0),
                                reference.von_neumann_winner(preferences))
  np.testing.assert_array_equal(
      reference.equilibrium(preferences, ref, 0.1),
      reference.regularized_equilibrium(preferences, ref, 0.1))
  log_pi = reference.equilibrium(preferences, ref, 0.1, return_log=True)
  assert np.all(log_pi < 0)
  with pytest.raises(ValueError):
    reference.equilibrium(preferences, ref, -1.0)


def test_exploitability_shrinks_with_beta():
  rng = np.random.default_rng(12)
  preferences = random_preferences(rng, 3, 15)
  ref = random_policy(rng, 3, 15)
  weights = np.array([0.2, 0.5, 0.3])

  def exploitability(pi):
    return weights @ np.max(win_rates(preferences, pi), axis=-1) - 0.5

  values = [exploitability(reference.regularized_equilibrium(preferences, ref,
                                                             beta))
            for beta in BETAS]
  assert np.all(np.diff(values) < 0), values
  assert values[0] > 0.01
  assert values[-1] < 1e-2
  assert exploitability(reference.von_neumann_winner(preferences)) < 1e-9
