"""Sampled estimators are unbiased: their mean over many sampled batches
matches the exact gradient within a tolerance from the sample variance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nash_jax import rules
from nash_jax.games import generate_game

NUM_BATCHES = 4000
BATCH = 32
Z = 5.0  # tolerance in standard errors (deterministic seeds: no flakiness)


def _setup(seed=0, n=5, beta=0.3):
  game = generate_game(jax.random.PRNGKey(seed), 'random', 1, n, 'random',
                       jnp.float64)
  logits = jax.random.normal(jax.random.PRNGKey(seed + 1), (1, n),
                             jnp.float64)
  return game, logits, beta


def _sampled_gradients(game, logits, beta, kind, oracle='bernoulli'):
  """Per-batch gradients ``[NUM_BATCHES, n]`` of a sampled loss."""
  prefs = game.preferences[0]
  log_ref = game.log_ref_policy[0]

  def batch_grad(key):
    ky, kp, ko = jax.random.split(key, 3)
    log_pi = jax.nn.log_softmax(logits[0])
    y = jax.random.categorical(ky, log_pi, shape=(BATCH,))
    y_prime = jax.random.categorical(kp, log_pi, shape=(BATCH,))
    p = prefs[y, y_prime]
    outcome = (jax.random.bernoulli(ko, p).astype(p.dtype)
               if oracle == 'bernoulli' else p)

    def loss(theta):
      lp = jax.nn.log_softmax(theta)
      if kind == 'ipo':
        per = rules.online_ipo_sample_loss(lp[y], lp[y_prime], log_ref[y],
                                           log_ref[y_prime], outcome, beta)
      elif kind == 'pg_without_stop_gradient':  # A deliberately wrong one.
        per = -(outcome - beta * (lp[y] - log_ref[y]) - 0.5) * lp[y]
      else:
        per = rules.self_play_pg_sample_loss(lp[y], log_ref[y], outcome,
                                             0.5, beta)
      return jnp.mean(per)
    return jax.grad(loss)(logits[0])

  keys = jax.random.split(jax.random.PRNGKey(42), NUM_BATCHES)
  return np.asarray(jax.jit(jax.vmap(batch_grad))(keys))


def _exact(game, logits, beta, kind):
  args = (game.preferences, game.log_ref_policy, game.context_weights, beta)
  if kind == 'ipo':
    return np.asarray(jax.grad(rules.online_ipo_loss)(logits, *args))[0]
  return -np.asarray(jax.grad(rules.self_play_objective)(logits, *args))[0]


def _assert_unbiased(samples, exact):
  mean = samples.mean(axis=0)
  stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
  assert np.all(np.abs(mean - exact) <= Z * stderr + 1e-12), (
      mean, exact, stderr)
  # The check has teeth: the standard error is small against the gradient.
  assert np.max(stderr) < 0.1 * np.max(np.abs(exact))


@pytest.mark.parametrize('kind', ['ipo', 'pg'])
@pytest.mark.parametrize('oracle', ['bernoulli', 'probability'])
def test_sampled_gradient_is_unbiased(kind, oracle):
  game, logits, beta = _setup()
  samples = _sampled_gradients(game, logits, beta, kind, oracle)
  _assert_unbiased(samples, _exact(game, logits, beta, kind))


def test_sampled_ipo_is_minus_four_over_beta_times_sampled_pg():
  game, logits, beta = _setup(seed=3)
  ipo = _sampled_gradients(game, logits, beta, 'ipo')
  pg = _sampled_gradients(game, logits, beta, 'pg')
  # Both estimate the exact gradients, which satisfy the identity.
  exact_pg = _exact(game, logits, beta, 'pg')
  np.testing.assert_allclose(_exact(game, logits, beta, 'ipo'),
                             4 / beta * exact_pg, rtol=1e-10, atol=1e-12)
  _assert_unbiased(ipo, 4 / beta * exact_pg)
  _assert_unbiased(pg, exact_pg)


def test_a_biased_estimator_is_caught():
  # Without the stop-gradient on the advantage, the surrogate's gradient
  # gains beta E[log(pi/pi_ref) grad log pi] + ...: biased. The same check
  # must reject it.
  game, logits, beta = _setup()
  samples = _sampled_gradients(game, logits, beta, 'pg_without_stop_gradient')
  with pytest.raises(AssertionError):
    _assert_unbiased(samples, _exact(game, logits, beta, 'pg'))
