"""The reward-based and offline baselines (nash_jax/algorithms/reward_based.py):
their per-comparison losses against closed forms, the Bradley-Terry reward
fit against the rewards that generated a BT game, RLHF's limit against
``pi ∝ pi_ref exp(r/beta)`` of its own fitted reward (and not pi*_beta on an
intransitive game), offline IPO against its least-squares solution, and the
query accounting (all queries at init)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nash_jax import algorithms as algorithms_lib
from nash_jax import bradley_terry, policies, reference, rules
from nash_jax.algorithms import AlgorithmConfig, reward_based
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.evaluation import TABULAR
from nash_jax.games import generate_game, make_game


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _algorithm(name, oracle='probability', **kwargs):
  config = AlgorithmConfig(mode='sampled', **kwargs)
  config = algorithms_lib.resolve_config(name, config, 2)
  algorithms_lib.validate_config(name, config)
  return algorithms_lib.make_algorithm(
      name, config, policies.make_tabular(), make_tabular_environment(oracle))


def _run(algorithm, game, num_steps, key=0):
  def body(state, _):
    return algorithm.step(state, game)[0], None
  state = algorithm.init(jax.random.PRNGKey(key), game)
  return jax.jit(lambda s: jax.lax.scan(body, s, None, num_steps)[0])(state)


def test_sample_losses_closed_forms():
  h = jnp.array([-1.0, 0.0, 0.5, 2.0])
  beta = 0.3
  hard = jnp.ones(4)
  np.testing.assert_allclose(rules.dpo_sample_loss(h, hard, beta),
                             np.log1p(np.exp(-beta * np.asarray(h))),
                             rtol=1e-12)
  # Soft labels: the expectation over which response won.
  o = jnp.array([0.2, 0.5, 0.7, 1.0])
  swapped = rules.dpo_sample_loss(-h, hard, beta)
  np.testing.assert_allclose(
      rules.dpo_sample_loss(h, o, beta),
      o * rules.dpo_sample_loss(h, hard, beta) + (1 - o) * swapped,
      rtol=1e-12)
  # IPO with soft labels has the gradient of the expected hard-label loss.
  c = 1 / (2 * beta)
  expected = jax.vmap(jax.grad(
      lambda h, o: o * (h - c) ** 2 + (1 - o) * (h + c) ** 2))(h, o)
  got = jax.vmap(jax.grad(lambda h, o: rules.ipo_sample_loss(h, o, beta)))(
      h, o)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_queries_are_all_asked_at_init():
  game = generate_game(jax.random.PRNGKey(0), 'random', 2, 4, 'random',
                       jnp.float64)
  for name in ('dpo', 'offline_ipo', 'bt_rlhf'):
    algorithm = _algorithm(name, offline_pairs=300, batch_size=16,
                           reward_steps=10)
    state = algorithm.init(jax.random.PRNGKey(0), game)
    assert int(state.preference_queries) == 300
    state = _run(algorithm, game, 5)
    assert int(state.preference_queries) == 300
    assert int(state.step) == 5


def test_reward_fit_recovers_the_rewards_of_a_bradley_terry_game():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(2, 4))
  ref = np.full((2, 4), 0.25)
  game = make_game(jnp.asarray(bradley_terry.bradley_terry_preferences(
      rewards)), jnp.asarray(ref))
  algorithm = _algorithm('bt_rlhf', offline_pairs=2000, batch_size=256,
                         reward_steps=3000)
  fitted = np.asarray(algorithm.init(jax.random.PRNGKey(1), game).data)
  centred = lambda r: r - r.mean(-1, keepdims=True)
  # P is BT, so the likelihood's maximizer on any connected data is r*.
  np.testing.assert_allclose(centred(fitted), centred(rewards), atol=0.02)


def test_bt_rlhf_converges_to_the_regularized_policy_of_its_reward():
  beta = 0.5
  game = generate_game(jax.random.PRNGKey(3), 'random', 2, 4, 'random',
                       jnp.float64)
  algorithm = _algorithm('bt_rlhf', beta=beta, offline_pairs=2000,
                         batch_size=64, reward_steps=2000,
                         learning_rate=0.5, schedule='cosine',
                         decay_steps=4000)
  state = _run(algorithm, game, 4000)
  log_pi = np.asarray(TABULAR.log_policy(algorithm.policy, state.params,
                                         game))
  ref = np.asarray(game.ref_policy)
  target = bradley_terry.regularized_policy(np.asarray(state.data), ref, beta)
  kl = lambda p, log_q: float(np.sum(
      game.context_weights * np.sum(p * (np.log(p) - log_q), -1)))
  to_target = kl(target, log_pi)
  # Negative control: the Nash equilibrium of the same (random,
  # intransitive) game is farther.
  to_nash = kl(reference.equilibrium(np.asarray(game.preferences), ref,
                                     beta), log_pi)
  assert to_target < 2e-3, to_target
  assert to_nash > 5 * to_target, (to_target, to_nash)


def test_offline_ipo_reaches_its_least_squares_solution():
  beta = 0.5
  game = generate_game(jax.random.PRNGKey(4), 'random', 1, 3, 'random',
                       jnp.float64)
  algorithm = _algorithm('offline_ipo', beta=beta, offline_pairs=64,
                         batch_size=64, learning_rate=0.05,
                         schedule='cosine', decay_steps=6000)
  state = _run(algorithm, game, 6000)
  data = state.data
  y, y_prime = np.asarray(data.responses), np.asarray(data.opponents)
  target = (np.asarray(data.outcomes) - 0.5) / beta
  offset = np.asarray(data.log_ref) - np.asarray(data.log_ref_opponent)
  # h_i = theta_{y_i} - theta_{y'_i} - offset_i is linear in the logits:
  # the minimizer of sum_i (h_i - target_i)^2 by least squares.
  design = np.zeros((len(y), 3))
  design[np.arange(len(y)), y] += 1
  design[np.arange(len(y)), y_prime] -= 1
  theta = np.linalg.lstsq(design, target + offset, rcond=None)[0]
  log_pi = np.asarray(TABULAR.log_policy(algorithm.policy, state.params,
                                         game))[0]
  h_fit = design @ log_pi - offset
  h_best = design @ theta - offset
  np.testing.assert_allclose(h_fit, h_best, atol=0.05)


def test_reward_optimizer_state_is_float32_for_bfloat16_params():
  # Without in_float32, adam's moments would take the params' dtype.
  params = {'w': jnp.ones((3, 2), jnp.bfloat16)}
  optimizer = reward_based.reward_optimizer(0.05)
  state = optimizer.init(params)
  floats = {x.dtype for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert floats == {jnp.dtype('float32')}
  updates, _ = optimizer.update({'w': jnp.full((3, 2), 0.5, jnp.bfloat16)},
                                state, params)
  assert jax.tree.leaves(updates)[0].dtype == jnp.float32
