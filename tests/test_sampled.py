"""Tests of the sampled algorithms (nash_jax.algorithms.sampled).

* Unbiasedness: each algorithm's per-batch gradient (one sgd step with
  ``learning_rate = 1`` from a fixed state, differenced) averages to the
  exact gradient of the objective it estimates, within ``Z`` standard errors
  estimated from the batches themselves, with negative controls showing the
  check rejects the neighbouring objectives.
* Identities: online IPO is ``-(4/beta)`` times self-play PG in expectation;
  Nash Prox with the anchor refreshed every step is online IPO with step
  ``kappa * lr`` exactly; with many inner steps it is the proximal-point
  iteration of ALGORITHMS.md; approximate Nash-MP refreshes its half-step
  and anchor params at the documented steps.
* Convergence on small games, every algorithm with every policy class under
  jit and vmap, traced hyperparameters, and the registry's refusals.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  assert_unbiased,
  exact_nash_md,
  exact_nash_prox,
  exact_online_ipo,
  exact_prox_pg,
  exact_self_play,
  slow_except,
)

from nash_jax import algorithms as algorithms_lib
from nash_jax import policies, reference, rules
from nash_jax.algorithms import (
  SAMPLED_ALGORITHM_NAMES,
  AlgorithmConfig,
  ConfigError,
)
from nash_jax.distributions import OUTCOMES
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.evaluation import TABULAR
from nash_jax.games import generate_game, make_game


@dataclasses.dataclass(frozen=True)
class Setup(AlgorithmConfig):
  """An algorithm's config with the policy and oracle settings that an
  experiment keeps beside it (policy class, initialization, MLP widths; the
  tabular environment's outcome kind)."""

  policy: str = 'tabular'
  init: str = 'ref'
  init_scale: float = 1.0
  hidden_sizes: tuple = (64, 64)
  outcome: str = 'bernoulli'

  def policy_config(self):
    return policies.PolicyConfig(self.policy, self.init, self.init_scale,
                                 tuple(self.hidden_sizes))


def resolve_config(name, config, num_contexts=1, feature_dim=1):
  return algorithms_lib.resolve_config(name, config, num_contexts,
                                       feature_dim, config.policy)


def validate_config(name, config):
  policies.validate_policy_config(config.policy_config())
  if config.outcome not in OUTCOMES:
    raise ConfigError('outcome', f'unknown outcome {config.outcome!r}')
  algorithms_lib.validate_config(name, config, config.policy)


def make_algorithm(name, config):
  """The algorithm with its policy class on the tabular environment."""
  return algorithms_lib.make_algorithm(
      name, config, policies.make_policy(config.policy_config()),
      make_tabular_environment(config.outcome))


def log_policy(algorithm, state, game):
  """``log pi [X, n]`` of a state's policy on a tabular game."""
  return TABULAR.log_policy(algorithm.policy, state.params, game)

BETA, ETA = 0.3, 0.5
NUM_BATCHES = 4000
BATCH = 32
Z = 5.0  # tolerance in standard errors (deterministic seeds: no flakiness)


def _config(name, **kwargs):
  config = Setup(mode='sampled', **kwargs)
  config = resolve_config(name, config, num_contexts=2)
  validate_config(name, config)
  return config


def _algorithm(name, **kwargs):
  return make_algorithm(name, _config(name, **kwargs))


def _gradient_game():
  """Two contexts with unequal weights, a random pi_ref, n = 4."""
  game = generate_game(jax.random.PRNGKey(0), 'random', 2, 4, 'random',
                       jnp.float64)
  return make_game(game.preferences, game.ref_policy,
                   context_weights=jnp.array([0.3, 0.7]))


def _logits(seed, shape=(2, 4), scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape,
                                   jnp.float64)


def _state(algorithm, game, params, **extra):
  state = algorithm.init(jax.random.PRNGKey(0), game)
  return state.replace(params=params, **extra)


def _batch_gradients(algorithm, state, game):
  """Per-batch gradients ``[NUM_BATCHES, X n]``: with sgd and learning rate
  1 a step moves the params by minus the batch gradient."""

  def gradient(key):
    new, _ = algorithm.step(state.replace(key=key), game)
    return (state.params - new.params).reshape(-1)

  keys = jax.random.split(jax.random.PRNGKey(42), NUM_BATCHES)
  return np.asarray(jax.jit(jax.vmap(gradient))(keys))


def _gradient_config(**kwargs):
  return dict(dict(beta=BETA, learning_rate=1.0, optimizer='sgd',
                   batch_size=BATCH), **kwargs)


# --------------------------------------------------------------------------
# Unbiasedness.


@pytest.mark.parametrize('oracle', OUTCOMES)
def test_self_play_pg_batch_gradient_is_unbiased(oracle):
  game, logits = _gradient_game(), _logits(1)
  algorithm = _algorithm('self_play_pg', **_gradient_config(outcome=oracle))
  samples = _batch_gradients(algorithm, _state(algorithm, game, logits), game)
  assert_unbiased(samples, exact_self_play(logits, game, BETA))


@pytest.mark.parametrize('oracle', OUTCOMES)
def test_online_ipo_batch_gradient_is_unbiased(oracle):
  game, logits = _gradient_game(), _logits(2)
  algorithm = _algorithm('online_ipo', **_gradient_config(outcome=oracle))
  samples = _batch_gradients(algorithm, _state(algorithm, game, logits), game)
  assert_unbiased(samples, exact_online_ipo(logits, game, BETA))


@pytest.mark.slow
def test_online_ipo_is_minus_four_over_beta_times_self_play_pg():
  """The algorithms' batch gradients (not just the rules'): online IPO's
  mean is ``4/beta`` times self-play PG's, by a two-sample z-test, and each
  matches the exact gradient, which satisfy the identity exactly."""
  game, logits = _gradient_game(), _logits(3)
  grads = {}
  for name in ('online_ipo', 'self_play_pg'):
    algorithm = _algorithm(name, **_gradient_config())
    grads[name] = _batch_gradients(algorithm,
                                   _state(algorithm, game, logits), game)
  exact = np.asarray(exact_self_play(logits, game, BETA)).reshape(-1)
  np.testing.assert_allclose(
      np.asarray(exact_online_ipo(logits, game, BETA)).reshape(-1),
      4 / BETA * exact, rtol=1e-10, atol=1e-12)
  ipo = grads['online_ipo'] * BETA / 4
  pg = grads['self_play_pg']
  assert_unbiased(ipo, exact)
  assert_unbiased(pg, exact)
  stderr = np.sqrt(ipo.var(0, ddof=1) / len(ipo) + pg.var(0, ddof=1) /
                   len(pg))
  assert np.all(np.abs(ipo.mean(0) - pg.mean(0)) <= Z * stderr)
  # Different estimators of the same gradient, not the same numbers.
  assert not np.allclose(ipo, pg)


@pytest.mark.parametrize('oracle', OUTCOMES)
def test_nash_prox_batch_gradient_is_unbiased(oracle):
  game, logits, anchor = _gradient_game(), _logits(4), _logits(5)
  algorithm = _algorithm('nash_prox', **_gradient_config(eta=ETA,
                                                         outcome=oracle))
  state = _state(algorithm, game, logits, anchor=anchor)
  samples = _batch_gradients(algorithm, state, game)
  assert_unbiased(samples,
                  exact_nash_prox(logits, anchor, game, BETA, ETA))
  # Negative control: the anchor matters (against pi_k = pi_theta).
  with pytest.raises(AssertionError):
    assert_unbiased(samples,
                    exact_nash_prox(logits, logits, game, BETA, ETA))


@pytest.mark.parametrize('phase', ['first_half', 'second_half'])
def test_approx_nash_mp_batch_gradient_is_unbiased(phase):
  """Steps ``0..K-1`` of an outer iteration play against the anchor, steps
  ``K..2K-1`` against the half-step policy; the prox centre is the anchor in
  both."""
  inner = 3
  game = _gradient_game()
  logits, anchor, half = _logits(6), _logits(7), _logits(8, scale=2.0)
  algorithm = _algorithm('approx_nash_mp', **_gradient_config(
      eta=ETA, inner_steps=inner))
  step = {'first_half': 2 * inner + 1, 'second_half': 2 * inner + inner}[
      phase]
  state = _state(algorithm, game, logits, anchor=anchor, half=half)
  state = state.replace(step=jnp.asarray(step, state.step.dtype))
  samples = _batch_gradients(algorithm, state, game)
  opponent, other = (anchor, half) if phase == 'first_half' else (half,
                                                                  anchor)
  assert_unbiased(samples, exact_prox_pg(logits, opponent, anchor, game,
                                         BETA, ETA))
  # Negative controls: the other opponent, or the prox centre left out.
  with pytest.raises(AssertionError):
    assert_unbiased(samples, exact_prox_pg(logits, other, anchor, game,
                                           BETA, ETA))
  with pytest.raises(AssertionError):
    assert_unbiased(samples, exact_prox_pg(logits, opponent, logits, game,
                                           BETA, ETA))


@pytest.mark.parametrize('mixture', [0.0, 0.6])
def test_nash_md_pg_batch_gradient_is_unbiased(mixture):
  """With ``mixture = 0`` the gradient is self-play REINFORCE's on ``y``
  only, ``-grad S``; otherwise that of playing against the mixture."""
  game, logits = _gradient_game(), _logits(9, scale=1.5)
  algorithm = _algorithm('nash_md_pg', **_gradient_config(mixture=mixture))
  samples = _batch_gradients(algorithm, _state(algorithm, game, logits), game)
  exact = exact_nash_md(logits, game, mixture, BETA)
  assert_unbiased(samples, exact)
  if mixture == 0:
    np.testing.assert_allclose(exact, exact_self_play(logits, game, BETA),
                               rtol=1e-10, atol=1e-12)
  else:  # Negative control: the mixture is not ignored.
    with pytest.raises(AssertionError):
      assert_unbiased(samples, exact_self_play(logits, game, BETA))


# --------------------------------------------------------------------------
# Nash Prox: reductions to online IPO and to proximal point.


def _trajectory(algorithm, game, num_steps, key=jax.random.PRNGKey(7),
                jit=True):
  """The state after each of ``num_steps`` steps (stacked)."""

  def run(key):
    def body(state, _):
      state, _ = algorithm.step(state, game)
      return state, state
    return jax.lax.scan(body, algorithm.init(key, game), None,
                        length=num_steps)[1]

  return (jax.jit(run) if jit else run)(key)


def _feature_game(seed=0, num_contexts=2, num_actions=4, feature_dim=3):
  return generate_game(jax.random.PRNGKey(seed), 'annotators', num_contexts,
                       num_actions, 'random', jnp.float64, feature_dim)


@pytest.mark.parametrize('policy,anchor', slow_except([
    ('tabular', 'copy'), ('tabular', 'ema'), ('loglinear', 'ema'),
    ('mlp', 'copy')], {('tabular', 'copy')}))
def test_nash_prox_with_anchor_every_step_is_online_ipo(policy, anchor):
  """``anchor='copy', anchor_every=1`` or ``anchor='ema', anchor_tau=1``:
  the anchor is the current policy, the loss's gradient is ``kappa`` times
  online IPO's, and the same key draws the same samples. (With sgd: Adam
  is invariant to the gradient's scale.)"""
  game = _feature_game()
  lr = 0.05
  common = dict(beta=BETA, policy=policy, batch_size=8, hidden_sizes=(8,),
                init='random', optimizer='sgd')
  kappa = ETA / (1 + ETA)
  prox = _algorithm('nash_prox', eta=ETA, learning_rate=lr, anchor=anchor,
                    anchor_every=1, anchor_tau=1.0, **common)
  ipo = _algorithm('online_ipo', learning_rate=kappa * lr, **common)
  # With a lagging anchor it is another algorithm.
  lagging = _algorithm('nash_prox', eta=ETA, learning_rate=lr, anchor=anchor,
                       anchor_every=2, anchor_tau=0.5, **common)
  num_steps = 20
  key = jax.random.PRNGKey(7)
  runs = (prox, ipo, lagging) if policy == 'tabular' else (prox, ipo)
  a, b, *c = jax.jit(lambda: [_trajectory(alg, game, num_steps, key,
                                          jit=False) for alg in runs])()
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
  np.testing.assert_array_equal(a.key, b.key)
  np.testing.assert_array_equal(a.preference_queries, b.preference_queries)
  # The policy moved, and the anchor follows it.
  first = jax.tree.map(lambda v: v[0], a.params)
  last = jax.tree.map(lambda v: v[-1], a.params)
  assert max(np.max(np.abs(x - y)) for x, y in zip(
      jax.tree.leaves(first), jax.tree.leaves(last))) > 1e-3
  for x, y in zip(jax.tree.leaves(a.anchor),
                  jax.tree.leaves(a.params)):
    np.testing.assert_array_equal(x, y)
  if c:
    assert np.max(np.abs(c[0].params - b.params)) > 1e-6


def _kl(p, q):
  """``KL_rho(p || q)`` with uniform ``rho`` (NumPy)."""
  return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


@pytest.mark.slow
def test_nash_prox_with_many_inner_steps_is_proximal_point():
  """``M`` inner steps per anchor solve the prox game: after ``M`` steps the
  policy is the proximal-point iterate ``pi_1``, the regularized equilibrium
  of the game with reference ``pi_ref^kappa pi_0^(1-kappa)`` and strength
  ``beta (1 + 1/eta)`` (rules.prox_reference), after ``2M`` it is ``pi_2``.

  Measured (2 seeds, tabular, oracle='probability', batch 256, M = 1000,
  4x the default learning rate): KL(pi_k || policy) 1.4e-4 to 3.6e-4 for
  k = 1, 2; the nearest alternative, KL(pi_2 || pi*_beta), is 1.0e-2 to
  1.6e-2 on these games, KL(pi_2 || pi_1) >= 2.5e-2.
  """
  beta, eta, inner = 0.1, 1.0, 1000
  tolerance = 1.5e-3
  game = generate_game(jax.random.PRNGKey(0), 'random', 2, 4, 'random',
                       jnp.float64)
  config = _config('nash_prox', beta=beta, eta=eta, batch_size=256,
                   outcome='probability', anchor='copy', anchor_every=inner,
                   init='random')
  algorithm = make_algorithm('nash_prox', config.replace(
      learning_rate=4 * config.learning_rate))
  pi_star = reference.regularized_equilibrium(game.preferences,
                                              game.ref_policy, beta)

  def prox_point(pi):
    prox_ref = np.exp(rules.prox_reference(np.log(pi), game.log_ref_policy,
                                           eta))
    return reference.regularized_equilibrium(game.preferences, prox_ref,
                                             beta * (1 + 1 / eta))

  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(1, 3))
  policy = jax.vmap(lambda s, g: log_policy(algorithm, s, g), in_axes=(0, None))
  starts = jax.vmap(algorithm.init, in_axes=(0, None))(keys, game)
  states = jax.jit(jax.vmap(
      lambda key: _trajectory(algorithm, game, 2 * inner, key, jit=False)))(
          keys)
  at = lambda t: jax.tree.map(lambda v: v[:, t - 1], states)
  pi_0 = np.exp(policy(starts, game))
  for seed in range(2):
    pi_1 = prox_point(pi_0[seed])
    pi_2 = prox_point(pi_1)
    for k, target in ((1, pi_1), (2, pi_2)):
      state = jax.tree.map(lambda v: v[seed], at(k * inner))
      pi = np.exp(log_policy(algorithm, state, game))
      assert _kl(target, pi) < tolerance, (seed, k, _kl(target, pi))
      # Closer to the PP iterate than to its neighbours by a wide margin.
      previous = pi_0[seed] if k == 1 else pi_1
      for other in (previous, pi_star):
        assert _kl(target, other) > 5 * tolerance
        assert _kl(other, pi) > 5 * tolerance
      # The anchor was copied exactly at step k M, not before.
      np.testing.assert_array_equal(state.anchor, state.params)
      before = at(k * inner - 1).anchor[seed]
      if k == 1:  # The initial params all along (up to XLA's rounding).
        np.testing.assert_array_equal(before, at(1).anchor[seed])
        np.testing.assert_allclose(before, starts.params[seed], rtol=0,
                                   atol=1e-12)
      else:
        np.testing.assert_array_equal(before, at(inner).params[seed])
      assert np.max(np.abs(before - at(k * inner - 1).params[seed])) > 1e-3


@pytest.mark.slow
def test_nash_prox_loglinear_converges_when_realizable():
  """A log-linear policy with ``d = X n`` features can represent
  ``pi*_beta`` (checked); Nash Prox with its defaults (Adam, learning rate
  0.003, anchor copied every 100 steps) and Bernoulli labels reaches it.

  Measured (6 seeds, 3000 steps, batch 64): final KL(pi*_beta || pi) from
  2.3e-3 to 9.2e-3, at most 2.1% of its value at pi_ref (0.27 to 0.57);
  the bound is 5%. (sgd at its default rate: 9e-3 to 3.5e-2.)
  """
  beta, num_steps = 0.1, 3000
  num_contexts, num_actions = 3, 4
  dim = num_contexts * num_actions
  seeds = jnp.arange(3)
  games = jax.vmap(lambda s: generate_game(
      jax.random.PRNGKey(s), 'annotators', num_contexts, num_actions,
      'uniform', jnp.float64, dim))(seeds)
  config = Setup(mode='sampled', policy='loglinear', beta=beta,
                           batch_size=64)
  config = resolve_config('nash_prox', config, num_contexts, dim)
  validate_config('nash_prox', config)
  assert config.optimizer == 'adam'
  algorithm = make_algorithm('nash_prox', config)

  @jax.jit
  @jax.vmap
  def run(seed, game):
    state = algorithm.init(jax.random.PRNGKey(100 + seed), game)
    state, _ = jax.lax.scan(lambda s, _: (algorithm.step(s, game)[0], None),
                            state, None, length=num_steps)
    return log_policy(algorithm, state, game), state.preference_queries

  log_pi, queries = run(seeds, games)
  np.testing.assert_array_equal(queries, num_steps * 64)
  for i in range(len(seeds)):
    game = jax.tree.map(lambda v: v[i], games)
    pi_star = reference.regularized_equilibrium(game.preferences,
                                                game.ref_policy, beta)
    # Realizable: theta with phi theta = log pi* - log pi_ref (+ const).
    phi = np.asarray(game.features).reshape(-1, dim)
    rhs = (np.log(pi_star) - np.log(game.ref_policy)).reshape(-1)
    theta = np.linalg.lstsq(phi, rhs, rcond=None)[0]
    np.testing.assert_allclose(
        TABULAR.log_policy(policies.make_loglinear(), theta, game),
        np.log(pi_star), atol=1e-8)
    start = _kl(pi_star, np.asarray(game.ref_policy))
    final = _kl(pi_star, np.exp(np.asarray(log_pi[i])))
    assert final < 0.05 * start, (i, final, start)


# --------------------------------------------------------------------------
# Approximate Nash-MP.


def test_approx_nash_mp_refreshes_half_and_anchor_on_schedule():
  inner = 3
  game = _gradient_game()
  algorithm = _algorithm('approx_nash_mp', beta=BETA, eta=ETA,
                         inner_steps=inner, batch_size=16, learning_rate=0.5)
  num_steps = 4 * inner + 1
  states = _trajectory(algorithm, game, num_steps)
  init = algorithm.init(jax.random.PRNGKey(7), game).params
  params = np.concatenate([init[None], np.asarray(states.params)])
  # params[t]: after t steps. Every step moves the policy.
  assert np.all(np.max(np.abs(np.diff(params, axis=0)), axis=(1, 2)) > 0)
  half = anchor = init
  for t in range(1, num_steps + 1):
    if t % (2 * inner) == inner:
      half = params[t]
    if t % (2 * inner) == 0:
      anchor = params[t]
    np.testing.assert_array_equal(states.half[t - 1], half, str(t))
    np.testing.assert_array_equal(states.anchor[t - 1], anchor,
                                  str(t))
  assert int(states.step[-1]) == num_steps
  assert int(states.preference_queries[-1]) == 16 * num_steps


def test_approx_nash_mp_default_inner_steps():
  config = resolve_config('approx_nash_mp',
                          Setup(mode='sampled'))
  assert config.inner_steps == 10
  assert config.eta == pytest.approx(2 * config.beta)


@pytest.mark.slow
def test_approx_nash_mp_with_one_inner_step_converges():
  """Measured (3 games, X = 2, n = 5, 2000 steps, batch 64, Bernoulli,
  cosine): final KL(pi*_beta || pi) 8e-4 to 2.1e-3 from 0.36 to 0.45."""
  beta, num_steps = 0.1, 2000
  seeds = jnp.arange(3)
  games = jax.vmap(lambda s: generate_game(
      jax.random.PRNGKey(s), 'random', 2, 5, 'random', jnp.float64))(seeds)
  algorithm = _algorithm('approx_nash_mp', beta=beta, inner_steps=1,
                         batch_size=64, schedule='cosine',
                         decay_steps=num_steps)

  @jax.jit
  @jax.vmap
  def run(seed, game):
    state = algorithm.init(jax.random.PRNGKey(100 + seed), game)
    state, _ = jax.lax.scan(lambda s, _: (algorithm.step(s, game)[0], None),
                            state, None, length=num_steps)
    return log_policy(algorithm, state, game)

  log_pi = run(seeds, games)
  for i in range(len(seeds)):
    pi_star = reference.regularized_equilibrium(
        games.preferences[i], games.ref_policy[i], beta)
    start = _kl(pi_star, np.asarray(games.ref_policy[i]))
    final = _kl(pi_star, np.exp(np.asarray(log_pi[i])))
    assert final < 6e-3 and final < 0.02 * start, (i, final, start)


# --------------------------------------------------------------------------
# Every algorithm, every policy class.


def _run_steps(algorithm, game, num_steps):
  def run(key):
    state = algorithm.init(key, game)
    state, info = jax.lax.scan(lambda s, _: algorithm.step(s, game), state,
                               None, length=num_steps)
    return state, info, log_policy(algorithm, state, game)
  return run


# Hyperparameters per algorithm: fixed settings, and the numeric ones traced
# in the vmapped run, one value per lane.
TRACED = {
    'online_ipo': ({}, {'beta': [0.1, 0.5], 'learning_rate': [0.01, 0.03]}),
    'self_play_pg': ({}, {'beta': [0.1, 0.5], 'learning_rate': [0.3, 0.1]}),
    'nash_prox': ({'anchor_every': 3}, {
        'beta': [0.1, 0.5], 'eta': [1.0, 0.3], 'learning_rate': [0.01, 0.03],
        'anchor_tau': [0.1, 0.5]}),
    'approx_nash_mp': ({'inner_steps': 2}, {
        'beta': [0.1, 0.5], 'eta': [0.2, 1.0],
        'learning_rate': [0.3, 0.1]}),
    'nash_md_pg': ({}, {'beta': [0.1, 0.5], 'learning_rate': [0.3, 0.1],
                        'mixture': [0.125, 0.5]}),
}


@pytest.mark.parametrize('policy', slow_except(policies.POLICIES,
                                               {'tabular'}))
@pytest.mark.parametrize('name', slow_except(SAMPLED_ALGORITHM_NAMES,
                                             {'online_ipo', 'nash_prox'}))
def test_every_algorithm_with_every_policy_jits_vmaps_and_traces(name,
                                                                 policy):
  """20 steps under jit(vmap) over 2 seeds, each lane with its own
  hyperparameters (beta, eta, learning rate, ...) as tracers: the query
  count, finite params and normalized policies, and each lane equals its
  separate run with the hyperparameters as Python numbers (the algorithm is
  built inside the vmapped function with ``config.replace``)."""
  game = _feature_game()
  batch, num_steps = 8, 20
  fixed, traced = TRACED[name]
  if name == 'nash_prox':  # Both anchors, over the policy classes.
    fixed = dict(fixed, anchor='copy' if policy == 'loglinear' else 'ema')
  base = _config(name, policy=policy, batch_size=batch, hidden_sizes=(8,),
                 **fixed)

  def run(key, values):
    algorithm = make_algorithm(name, base.replace(**values))
    return _run_steps(algorithm, game, num_steps)(key)

  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  lanes = [{k: v[i] for k, v in traced.items()} for i in range(2)]
  for values in lanes:
    validate_config(name, base.replace(**values))
  vectors = {k: jnp.asarray(v) for k, v in traced.items()}
  state, info, log_pi = jax.jit(jax.vmap(run))(keys, vectors)
  np.testing.assert_array_equal(state.step, [num_steps] * 2)
  np.testing.assert_array_equal(state.preference_queries,
                                [num_steps * batch] * 2)
  for leaf in jax.tree.leaves(state.params):
    assert np.all(np.isfinite(leaf))
  assert info['loss'].shape == (2, num_steps)
  assert np.all(np.isfinite(info['loss']))
  assert log_pi.shape == (2,) + game.ref_policy.shape
  np.testing.assert_allclose(np.exp(log_pi).sum(-1), 1, atol=1e-12)
  # The policy left pi_ref, and the lanes differ.
  assert np.max(np.abs(log_pi - game.log_ref_policy[None])) > 1e-4
  assert not np.allclose(log_pi[0], log_pi[1], atol=1e-6)

  if policy != 'tabular':
    return  # The separate runs (two more compilations) on tabular only.
  singles = jax.jit(lambda: [run(keys[i], lanes[i]) for i in range(2)])()
  for i, (single_state, single_info, single_log_pi) in enumerate(singles):
    np.testing.assert_allclose(log_pi[i], single_log_pi, rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(info['loss'][i], single_info['loss'],
                               rtol=1e-9, atol=1e-12)
    assert int(single_state.preference_queries) == num_steps * batch


def test_gradient_clipping_and_cosine_schedule():
  game = _gradient_game()
  clip = 1e-3
  algorithm = _algorithm('self_play_pg', beta=BETA, learning_rate=1.0,
                         max_grad_norm=clip, batch_size=16, init='random')
  state = algorithm.init(jax.random.PRNGKey(0), game)
  new, _ = jax.jit(algorithm.step)(state, game)
  np.testing.assert_allclose(np.linalg.norm(new.params - state.params), clip,
                             rtol=1e-9)
  decay = 5
  algorithm = _algorithm('online_ipo', beta=BETA, learning_rate=0.1,
                         schedule='cosine', decay_steps=decay, batch_size=16)
  states = _trajectory(algorithm, game, decay + 3)
  moves = np.max(np.abs(np.diff(np.asarray(states.params), axis=0)),
                 axis=(1, 2))
  # Steps 2..decay move (the first step's rate is the full one), later
  # steps have rate 0.
  assert np.all(moves[:decay - 1] > 0)
  np.testing.assert_array_equal(moves[decay - 1:], 0)


# --------------------------------------------------------------------------
# Refusals.


def _refused(name, **kwargs):
  with pytest.raises(ConfigError) as error:
    config = resolve_config(name, Setup(**kwargs), 1)
    validate_config(name, config)
  return error.value


NAN = float('nan')
REFUSED = [
    ('self_play_pg', dict(batch_size=0), 'batch_size'),
    ('online_ipo', dict(batch_size=-3), 'batch_size'),
    ('nash_prox', dict(anchor_every=0), 'anchor_every'),
    ('nash_prox', dict(anchor_every=-1), 'anchor_every'),
    ('nash_prox', dict(anchor_tau=0.0), 'anchor_tau'),
    ('nash_prox', dict(anchor_tau=-0.1), 'anchor_tau'),
    ('nash_prox', dict(anchor_tau=1.5), 'anchor_tau'),
    ('nash_prox', dict(anchor_tau=NAN), 'anchor_tau'),
    ('nash_prox', dict(anchor='lazy'), 'anchor'),
    ('online_ipo', dict(outcome='human'), 'outcome'),
    ('self_play_pg', dict(policy='transformer'), 'policy'),
    ('self_play_pg', dict(schedule='linear'), 'schedule'),
    ('self_play_pg', dict(schedule='cosine'), 'decay_steps'),
    ('self_play_pg', dict(schedule='cosine', decay_steps=0), 'decay_steps'),
    ('nash_md_pg', dict(mixture=-0.1), 'mixture'),
    ('nash_md_pg', dict(mixture=1.5), 'mixture'),
    ('nash_md_pg', dict(mixture=NAN), 'mixture'),
    ('self_play_pg', dict(max_grad_norm=0.0), 'max_grad_norm'),
    ('self_play_pg', dict(max_grad_norm=-1.0), 'max_grad_norm'),
    ('self_play_pg', dict(max_grad_norm=NAN), 'max_grad_norm'),
    ('approx_nash_mp', dict(inner_steps=0), 'inner_steps'),
    ('approx_nash_mp', dict(inner_steps=-2), 'inner_steps'),
    ('self_play_pg', dict(policy='mlp', hidden_sizes=()), 'hidden_sizes'),
    ('self_play_pg', dict(policy='mlp', hidden_sizes=(8, 0)), 'hidden_sizes'),
    ('nash_prox', dict(eta=0.0), 'eta'),
    ('nash_prox', dict(beta=0.0), 'beta'),
    ('online_ipo', dict(beta=0.0), 'beta'),
    ('approx_nash_mp', dict(beta=0.0), 'beta'),
    ('nash_md_pg', dict(learning_rate=0.0), 'learning_rate'),
    ('nash_md_pg', dict(optimizer='rmsprop'), 'optimizer'),
]


@pytest.mark.parametrize('name,kwargs,flag', REFUSED,
                         ids=[f'{c[0]}-{c[2]}-{i}' for i, c in
                              enumerate(REFUSED)])
def test_sampled_config_is_refused(name, kwargs, flag):
  error = _refused(name, mode='sampled', **kwargs)
  assert error.flag == flag
  assert str(error).startswith(f'--{flag}: ')


@pytest.mark.parametrize('name,kwargs,flag', [
    ('nash_prox', dict(mode='exact'), 'mode'),
    ('approx_nash_mp', dict(mode='exact'), 'mode'),
    ('nash_md_pg', dict(mode='exact'), 'mode'),
    ('nash_mp', dict(mode='sampled'), 'mode'),
    ('omd', dict(mode='sampled'), 'mode'),
    ('proximal_point', dict(mode='sampled'), 'mode'),
    ('self_play_pg', dict(mode='exact', policy='loglinear'), 'policy'),
    ('online_ipo', dict(mode='exact', policy='mlp'), 'policy'),
    ('self_play_pg', dict(mode='batched'), 'mode'),
    ('no_such_algorithm', dict(mode='sampled'), 'algorithm'),
])
def test_mode_mismatch_is_refused(name, kwargs, flag):
  error = _refused(name, **kwargs)
  assert error.flag == flag, str(error)


def test_boundaries_are_accepted():
  for name, kwargs in [
      ('self_play_pg', dict(batch_size=1)),
      ('nash_prox', dict(anchor_every=1, anchor_tau=1.0)),
      ('nash_prox', dict(anchor='ema', anchor_tau=1e-6)),
      ('nash_md_pg', dict(mixture=0.0)),
      ('nash_md_pg', dict(mixture=1.0)),
      ('approx_nash_mp', dict(inner_steps=1)),
      ('self_play_pg', dict(beta=0.0)),
      ('nash_md_pg', dict(beta=0.0)),
      ('self_play_pg', dict(schedule='cosine', decay_steps=1,
                            max_grad_norm=1e-9)),
      ('online_ipo', dict(policy='mlp', hidden_sizes=(1,))),
      ('online_ipo', dict(optimizer='adam')),
  ]:
    config = resolve_config(name, Setup(mode='sampled', **kwargs))
    validate_config(name, config)
    assert config.learning_rate > 0, name


@pytest.mark.parametrize('policy', policies.POLICIES)
def test_default_sampled_optimizer_and_learning_rates(policy):
  """Adam (0.003) for log-linear and MLP policies, sgd for tabular; with
  sgd, the IPO forms get ``beta / 4`` times the policy-gradient forms' rate,
  which is ``X / (4 (beta + 1/4))`` for tabular and ``1 / (4 d (beta +
  1/4))`` for the shared-parameter classes."""
  beta, num_contexts, dim = 0.2, 3, 5
  resolve = lambda name, **kw: resolve_config(name, Setup(
      mode='sampled', beta=beta, policy=policy, **kw), num_contexts, dim)
  for name in SAMPLED_ALGORITHM_NAMES:
    config = resolve(name)
    validate_config(name, config)
    if policy == 'tabular':
      assert config.optimizer == 'sgd'
    else:
      assert (config.optimizer, config.learning_rate) == ('adam', 0.003)
  scale = num_contexts if policy == 'tabular' else 1 / dim
  pg = scale / (4 * (beta + 0.25))
  rates = {name: resolve(name, optimizer='sgd').learning_rate
           for name in SAMPLED_ALGORITHM_NAMES}
  for name in ('self_play_pg', 'nash_md_pg', 'approx_nash_mp'):
    assert rates[name] == pytest.approx(pg, rel=1e-12)
  for name in ('online_ipo', 'nash_prox'):
    assert rates[name] == pytest.approx(pg * beta / 4, rel=1e-12)
  # The exact mode keeps sgd.
  assert resolve_config('self_play_pg', Setup()).optimizer == 'sgd'
