"""Tests for the exact tabular metrics (nash_jax.metrics).

Every metric is checked against an independent NumPy computation written here
from the formulas of ALGORITHMS.md section 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_numpy_game

from nash_jax import metrics, reference
from nash_jax.games import core

NUM_CONTEXTS, NUM_ACTIONS = 4, 6
BETAS = (1.0, 0.1, 0.01, 0.001)

# One compilation per function: beta is a traced argument.
kl_to_equilibrium = jax.jit(metrics.kl_to_equilibrium)
kl_to_ref = jax.jit(metrics.kl_to_ref)
fixed_point_residual = jax.jit(metrics.fixed_point_residual)
best_response_value = jax.jit(metrics.best_response_value)
duality_gap = jax.jit(metrics.duality_gap)
exploitability = jax.jit(metrics.exploitability)
win_rate = jax.jit(metrics.win_rate)
evaluate = jax.jit(metrics.evaluate)


# ----------------------------------------------------------------------------
# An independent NumPy implementation of the game and the metrics.
# ----------------------------------------------------------------------------


class NumpyGame:
  """Preferences ``[X, n, n]``, ``rho [X]`` and ``pi_ref [X, n]`` in NumPy."""

  def __init__(self, preferences, context_weights, ref_policy):
    self.p = preferences
    self.rho = context_weights
    self.ref = ref_policy

  def jax(self):
    return core.make_game(self.p, ref_policy=self.ref,
                          context_weights=self.rho)

  def g(self, pi):
    """``g_pi(y|x) = sum_{y'} P(y > y'|x) pi(y'|x)``."""
    out = np.zeros_like(pi)
    for x in range(self.p.shape[0]):
      out[x] = self.p[x] @ pi[x]
    return out

  def expect(self, per_context):
    return float(np.dot(self.rho, per_context))

  def kl(self, p, q):
    """``KL_rho(p || q)``, with ``0 log 0 = 0``."""
    with np.errstate(divide='ignore', invalid='ignore'):
      terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return self.expect(terms.sum(-1))

  def preference(self, pi, mu):
    """``P(pi > mu) = E_x sum_{y,y'} pi(y) mu(y') P(y > y')``."""
    return self.expect(np.array([pi[x] @ self.p[x] @ mu[x]
                                 for x in range(self.p.shape[0])]))

  def j(self, pi, mu, beta):
    """``J_beta(pi, mu) = P(pi > mu) - beta KL(pi||ref) + beta KL(mu||ref)``."""
    return (self.preference(pi, mu) - beta * self.kl(pi, self.ref) +
            beta * self.kl(mu, self.ref))

  def best_response(self, pi, beta):
    """``pi' ∝ pi_ref exp(g_pi / beta)`` per context."""
    logits = np.log(self.ref) + self.g(pi) / beta
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)

  def residual(self, pi, beta):
    r = np.log(pi) - np.log(self.ref) - self.g(pi) / beta
    return self.expect(r.max(-1) - r.min(-1))

  def m(self, pi, beta):
    """``beta E_x log sum_y pi_ref exp(g / beta)``, shifted by ``max g``."""
    g = self.g(pi)
    top = g.max(-1)
    inner = np.sum(self.ref * np.exp((g - top[:, None]) / beta), axis=-1)
    return self.expect(top + beta * np.log(inner))

  def gap(self, pi, beta):
    return 2 * (self.m(pi, beta) + beta * self.kl(pi, self.ref)) - 1

  def exploitability(self, pi):
    return self.expect(self.g(pi).max(-1)) - 0.5


def random_game(seed, num_contexts=NUM_CONTEXTS, num_actions=NUM_ACTIONS):
  """A random :class:`NumpyGame`, ``pi_ref ~ Dirichlet(2)``."""
  return NumpyGame(*random_numpy_game(seed, num_contexts, num_actions,
                                      ref_concentration=2.0))


def random_policies(seed, count, num_contexts=NUM_CONTEXTS,
                    num_actions=NUM_ACTIONS, concentration=1.0):
  rng = np.random.default_rng(seed)
  return rng.dirichlet(np.full(num_actions, concentration),
                       size=(count, num_contexts))


@pytest.fixture(scope='module')
def game():
  return random_game(0)


@pytest.fixture(scope='module')
def policies():
  return random_policies(1, 4)


def close(got, want, tol=1e-12):
  np.testing.assert_allclose(float(got), want, rtol=tol, atol=tol)


def test_numpy_game_is_valid(game):
  np.testing.assert_allclose(game.p + np.swapaxes(game.p, -1, -2), 1.0,
                             atol=1e-15)
  assert np.max(np.abs(game.rho - 1 / NUM_CONTEXTS)) > 1e-2
  assert np.max(np.abs(game.ref - 1 / NUM_ACTIONS)) > 1e-2


# ----------------------------------------------------------------------------
# Each metric against NumPy.
# ----------------------------------------------------------------------------


def test_kl_to_equilibrium_and_to_ref(game, policies):
  jgame = game.jax()
  target = random_policies(2, 1)[0]
  for pi in policies:
    close(kl_to_equilibrium(jnp.log(pi), jnp.log(target), jgame),
          game.kl(target, pi))
    close(kl_to_ref(jnp.log(pi), jgame), game.kl(pi, game.ref))
  # KL(pi || pi) = 0 and KL(pi_ref || pi_ref) = 0.
  close(kl_to_equilibrium(jnp.log(target), jnp.log(target), jgame), 0.0)
  close(kl_to_ref(jnp.log(game.ref), jgame), 0.0)


def test_kl_ignores_zero_probabilities(game):
  jgame = game.jax()
  pure = np.eye(NUM_ACTIONS)[[0, 3, 5, 1]]
  with np.errstate(divide='ignore'):
    log_pure = np.log(pure)
  # KL(pure || ref) = -log ref(y*), per context.
  want = game.expect(-np.log(game.ref[np.arange(NUM_CONTEXTS), [0, 3, 5, 1]]))
  close(kl_to_ref(jnp.asarray(log_pure), jgame), want)
  close(game.kl(pure, game.ref), want)
  pi = random_policies(3, 1)[0]
  close(kl_to_equilibrium(jnp.log(pi), jnp.asarray(log_pure), jgame),
        game.kl(pure, pi))


@pytest.mark.parametrize('beta', BETAS)
def test_fixed_point_residual(game, policies, beta):
  jgame = game.jax()
  for pi in policies:
    want = game.residual(pi, beta)
    close(fixed_point_residual(jnp.log(pi), jgame, beta), want,
          tol=1e-12 * max(1.0, want))


@pytest.mark.parametrize('beta', BETAS)
def test_best_response_value_and_duality_gap(game, policies, beta):
  jgame = game.jax()
  for pi in policies:
    close(best_response_value(jnp.log(pi), jgame, beta), game.m(pi, beta))
    close(duality_gap(jnp.log(pi), jgame, beta), game.gap(pi, beta))


def test_best_response_value_at_beta_zero_is_max_win_rate(game, policies):
  jgame = game.jax()
  for pi in policies:
    close(best_response_value(jnp.log(pi), jgame, 0.0),
          game.expect(game.g(pi).max(-1)))


def test_exploitability_and_win_rate(game, policies):
  jgame = game.jax()
  for pi, mu in zip(policies, policies[::-1]):
    close(exploitability(jnp.log(pi), jgame), game.exploitability(pi))
    close(win_rate(jnp.log(pi), jnp.log(mu), jgame), game.preference(pi, mu))
    close(win_rate(jnp.log(pi), jnp.log(game.ref), jgame),
          game.preference(pi, game.ref))


@pytest.mark.parametrize('beta', [1.0, 0.01])
def test_evaluate(game, policies, beta):
  jgame = game.jax()
  target = random_policies(4, 1)[0]
  for pi in policies:
    got = evaluate(jnp.log(pi), jgame, beta, jnp.log(target))
    assert set(got) == set(metrics.METRICS)
    close(got['kl_to_equilibrium'], game.kl(target, pi))
    close(got['duality_gap'], game.gap(pi, beta))
    close(got['exploitability'], game.exploitability(pi))
    want = game.residual(pi, beta)
    close(got['fixed_point_residual'], want, tol=1e-12 * max(1.0, want))
    close(got['win_rate_vs_ref'], game.preference(pi, game.ref))


@pytest.mark.parametrize('beta', [1.0, 0.1, 0.01])
def test_duality_gap_by_brute_force(game, policies, beta):
  """``Gap = max_pi' J(pi', pi) - min_pi' J(pi, pi')`` from the J definition."""
  jgame = game.jax()
  others = random_policies(5, 20)
  for pi in policies:
    br = game.best_response(pi, beta)
    best = game.j(br, pi, beta)
    worst = game.j(pi, br, beta)
    # br is the maximizer of J(., pi) and the minimizer of J(pi, .).
    for other in others:
      assert game.j(other, pi, beta) <= best + 1e-12
      assert game.j(pi, other, beta) >= worst - 1e-12
    # Symmetry of the game: J(pi, pi') = 1 - J(pi', pi).
    np.testing.assert_allclose(best + worst, 1.0, atol=1e-12)
    # The closed form M + beta KL(pi||pi_ref) is the value of the best reply.
    np.testing.assert_allclose(best, game.m(pi, beta) +
                               beta * game.kl(pi, game.ref), atol=1e-12)
    close(duality_gap(jnp.log(pi), jgame, beta), best - worst)
    assert best - worst > 0


# ----------------------------------------------------------------------------
# At and away from the equilibrium.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('beta', BETAS)
def test_metrics_at_the_equilibrium(game, beta):
  jgame = game.jax()
  log_eq = reference.regularized_equilibrium(game.p, game.ref, beta,
                                             return_log=True)
  assert abs(float(kl_to_equilibrium(jnp.asarray(log_eq), jnp.asarray(log_eq),
                                     jgame))) < 1e-12
  assert abs(float(duality_gap(jnp.asarray(log_eq), jgame, beta))) < 1e-9
  assert float(fixed_point_residual(jnp.asarray(log_eq), jgame, beta)) < 1e-8
  # Away from it: pi_ref itself.
  log_ref = jnp.log(jnp.asarray(game.ref))
  assert float(kl_to_equilibrium(log_ref, jnp.asarray(log_eq), jgame)) > 1e-4
  assert float(duality_gap(log_ref, jgame, beta)) > 1e-4
  assert float(fixed_point_residual(log_ref, jgame, beta)) > 1e-2
  # The best response to pi* is pi* itself (it is a fixed point).
  eq = np.exp(log_eq)
  np.testing.assert_allclose(game.best_response(eq, beta), eq, rtol=1e-8,
                             atol=1e-12)


@pytest.mark.parametrize('beta', BETAS)
def test_duality_gap_is_positive_off_equilibrium(beta):
  game = random_game(6)
  jgame = game.jax()
  pis = random_policies(7, 20, concentration=0.3)
  gaps = np.array([float(duality_gap(jnp.log(pi), jgame, beta))
                   for pi in pis])
  assert np.all(gaps > 0), gaps


def test_exploitability_in_range():
  game = random_game(8)
  jgame = game.jax()
  pis = list(random_policies(9, 20, concentration=0.3))
  pis.append(reference.von_neumann_winner(game.p))
  pis.append(np.full((NUM_CONTEXTS, NUM_ACTIONS), 1 / NUM_ACTIONS))
  values = []
  for pi in pis:
    with np.errstate(divide='ignore'):
      log_pi = jnp.asarray(np.log(pi))
    values.append(float(exploitability(log_pi, jgame)))
  values = np.array(values)
  assert np.all(values >= -1e-12) and np.all(values <= 0.5)
  # The von Neumann winner is unexploitable, a random policy is not.
  assert abs(values[-2]) < 1e-9
  assert values[0] > 1e-3


def test_exploitability_of_a_dominated_pure_policy_is_one_half():
  # y = 1 loses every comparison outright against y = 0.
  p = np.array([[0.5, 1.0], [0.0, 0.5]])
  jgame = core.make_game(p)
  log_pi = jnp.log(jnp.asarray([[1e-300, 1.0]]))
  np.testing.assert_allclose(float(exploitability(log_pi, jgame)), 0.5,
                             atol=1e-12)


def test_beta_zero(game, policies):
  jgame = game.jax()
  log_eq = jnp.log(jnp.asarray(reference.von_neumann_winner(game.p)) + 1e-300)
  for pi in policies:
    log_pi = jnp.log(pi)
    gap = float(duality_gap(log_pi, jgame, 0.0))
    expl = float(exploitability(log_pi, jgame))
    close(gap, 2 * expl)
    close(gap, 2 * game.exploitability(pi))
    assert np.isnan(float(fixed_point_residual(log_pi, jgame, 0.0)))
    result = evaluate(log_pi, jgame, 0.0, log_eq)
    assert np.isnan(float(result['fixed_point_residual']))
    close(result['duality_gap'], 2 * game.exploitability(pi))
  # The same with a Python float 0 outside jit.
  assert np.isnan(float(metrics.fixed_point_residual(jnp.log(policies[0]),
                                                     jgame, 0.0)))


def test_win_rate_symmetry(game, policies):
  jgame = game.jax()
  for pi in policies:
    close(win_rate(jnp.log(pi), jnp.log(pi), jgame), 0.5)
    for mu in policies:
      total = (win_rate(jnp.log(pi), jnp.log(mu), jgame) +
               win_rate(jnp.log(mu), jnp.log(pi), jgame))
      close(total, 1.0)


# ----------------------------------------------------------------------------
# jit and vmap.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('beta', [0.1, 0.0])
def test_evaluate_is_jittable_and_vmappable(game, beta):
  jgame = game.jax()
  pis = random_policies(10, 5)
  log_pis = jnp.log(jnp.asarray(pis))
  log_eq = jnp.log(jnp.asarray(random_policies(11, 1)[0]))
  batched = jax.jit(jax.vmap(metrics.evaluate, in_axes=(0, None, None, None)))
  got = batched(log_pis, jgame, beta, log_eq)
  assert set(got) == set(metrics.METRICS)
  for name, values in got.items():
    assert values.shape == (5,), name
    assert values.dtype == jnp.float64, name
  for i in range(len(pis)):
    single = evaluate(log_pis[i], jgame, beta, log_eq)
    for name in metrics.METRICS:
      np.testing.assert_allclose(float(got[name][i]), float(single[name]),
                                 rtol=1e-12, atol=1e-14, err_msg=name)
    close(got['duality_gap'][i], game.gap(pis[i], beta) if beta > 0
          else 2 * game.exploitability(pis[i]))


def test_metrics_vmap_over_games_and_betas():
  games = [random_game(seed) for seed in (12, 13)]
  stacked = core.stack_games([g.jax() for g in games])
  pi = random_policies(14, 1)[0]
  betas = jnp.asarray([0.5, 0.05])
  gaps = jax.jit(jax.vmap(metrics.duality_gap, in_axes=(None, 0, 0)))(
      jnp.log(pi), stacked, betas)
  for i, g in enumerate(games):
    close(gaps[i], g.gap(pi, float(betas[i])))
