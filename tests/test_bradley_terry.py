"""Tests of nash_jax/bradley_terry.py against closed forms."""

import numpy as np
import pytest
import scipy.special
from helpers import random_preferences

from nash_jax import bradley_terry as bt


@pytest.mark.parametrize('weights', ['uniform', 'dirichlet'])
def test_fit_recovers_bradley_terry_rewards_up_to_a_constant(weights):
  rng = np.random.default_rng(0)
  rewards = 2.0 * rng.normal(size=(5, 8)) + 3.0   # an offset the fit drops
  ref = None if weights == 'uniform' else rng.dirichlet(np.ones(8), size=5)
  fitted = bt.fit_rewards(bt.bradley_terry_preferences(rewards), ref)
  centred = rewards - rewards.mean(axis=-1, keepdims=True)
  np.testing.assert_allclose(fitted, centred, atol=1e-9)
  np.testing.assert_allclose(fitted.mean(axis=-1), 0, atol=1e-12)
  assert np.max(bt.misfit(fitted, bt.bradley_terry_preferences(rewards))) \
      < 1e-9


def test_two_responses_closed_form():
  # r_1 - r_2 = logit P(1 > 2), the only free quantity.
  p = 0.8
  fitted = bt.fit_rewards(np.array([[0.5, p], [1 - p, 0.5]]))
  np.testing.assert_allclose(fitted[0, 0] - fitted[0, 1],
                             scipy.special.logit(p), atol=1e-12)


def test_score_equations_hold_on_an_intransitive_game():
  # dL/dr_a = sum_b W_ab (P_ab - sigmoid(r_a - r_b)) = 0 at the MLE.
  rng = np.random.default_rng(1)
  prefs = random_preferences(rng, 3, 7)
  np.testing.assert_allclose(prefs + np.swapaxes(prefs, 1, 2), 1)
  ref = rng.dirichlet(np.ones(7), size=3)
  fitted = bt.fit_rewards(prefs, ref)
  weights = bt.pair_weights(ref, 3, 7)
  score = np.sum(weights * (prefs - bt.bradley_terry_preferences(fitted)),
                 axis=-1)
  np.testing.assert_allclose(score, 0, atol=1e-12)
  # A concave maximum: any perturbation lowers the likelihood.
  best = bt.log_likelihood(fitted, prefs, weights)
  for _ in range(5):
    other = fitted + 1e-3 * rng.normal(size=fitted.shape)
    assert np.all(bt.log_likelihood(other, prefs, weights) < best)


def test_circulant_game_with_uniform_pairs_has_a_flat_reward():
  # Rock-paper-scissors: every row of P has the same sum, so r = const.
  prefs = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
  fitted = bt.fit_rewards(prefs)
  np.testing.assert_allclose(fitted, 0, atol=1e-12)
  np.testing.assert_allclose(bt.greedy_policy(fitted), 1 / 3)


def test_no_finite_fit_raises():
  with pytest.raises(bt.FitError, match='does not exist'):
    bt.fit_rewards(np.array([[0.5, 1.0], [0.0, 0.5]]))


def test_policies():
  rewards = np.array([[1.0, 3.0, 3.0, -2.0]])
  ref = np.array([0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(bt.greedy_policy(rewards), [[0, 0.5, 0.5, 0]])
  beta = 0.7
  expected = ref * np.exp(rewards[0] / beta)
  np.testing.assert_allclose(bt.regularized_policy(rewards, ref, beta),
                             [expected / expected.sum()], rtol=1e-12)
  np.testing.assert_allclose(bt.regularized_policy(rewards, ref, 0),
                             bt.greedy_policy(rewards))
  target = 0.25
  policy, beta_matched = bt.matched_kl_policy(rewards, ref, target)
  np.testing.assert_allclose(bt.kl_to_ref(policy, ref), target, atol=1e-8)
  np.testing.assert_allclose(
      policy, bt.regularized_policy(rewards, ref, beta_matched[0]),
      atol=1e-12)
