"""Tests for the policy classes of the sampled mode (nash_jax.policies) and the
game features they read (generated and loaded from .npz files).

Every class is checked against its documented contract: normalized
log-probabilities, ``log_prob`` consistent with ``log_probs``, ``pi_ref`` as
the initial policy, and samples distributed as the policy (or its geometric
mixture with ``pi_ref``), by a chi-square bound on many draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from nash_jax import policies
from nash_jax.environments.tabular import all_contexts, context_data
from nash_jax.games import GameFileError, generate_game, load_game

NUM_CONTEXTS, NUM_ACTIONS, FEATURE_DIM = 3, 5, 4
POLICIES = policies.POLICIES
# Chi-square tail probability of the sampling checks: the seeds are fixed, so
# a test is deterministic; the bound is loose enough that a correct sampler
# never reaches it and tight enough that a wrong distribution always does
# (checked in each test).
TAIL = 1e-6
DRAWS_PER_CONTEXT = 20_000


def _game(seed=0, feature_dim=FEATURE_DIM, ref_policy='random'):
  return generate_game(jax.random.PRNGKey(seed), 'annotators', NUM_CONTEXTS,
                       NUM_ACTIONS, ref_policy, jnp.float64, feature_dim)


def _policy(name):
  config = policies.PolicyConfig(policy=name, init='ref', hidden_sizes=(8, 8))
  return policies.make_policy(config)


def _init(policy, key, game):
  return policy.init(key, all_contexts(game), None)


def _full(policy, params, game):
  """``log pi [X, n]`` over every context."""
  return policy.log_probs(params, all_contexts(game))


def _random_params(name, game, seed=1):
  """Params of a policy well away from ``pi_ref``."""
  key = jax.random.PRNGKey(seed)
  params = _init(_policy(name), key, game)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  scale = {'tabular': 1.0, 'loglinear': 0.7, 'mlp': 1.0}[name]
  noisy = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
           for leaf, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noisy)


def _np_log_softmax(logits):
  return logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize('name', POLICIES)
def test_log_probs_are_normalized_and_match_log_prob(name):
  game = _game()
  policy = _policy(name)
  assert policy.name == name
  params = _random_params(name, game)
  contexts = jnp.array([2, 0, 1, 1, 0, 2, 2])
  log_probs = np.asarray(jax.jit(policy.log_probs)(params, context_data(game, contexts)))
  assert log_probs.shape == (7, NUM_ACTIONS)
  np.testing.assert_allclose(scipy.special.logsumexp(log_probs, axis=-1), 0,
                             atol=1e-12)
  # Rows of the same context agree; different contexts differ.
  np.testing.assert_array_equal(log_probs[0], log_probs[5])
  assert not np.allclose(log_probs[0], log_probs[1])
  responses = jnp.array([4, 0, 3, 1, 2, 0, 4])
  log_prob = np.asarray(jax.jit(policy.log_prob)(
      params, context_data(game, contexts), responses))
  np.testing.assert_array_equal(
      log_prob, log_probs[np.arange(7), np.asarray(responses)])
  full = np.asarray(_full(policy, params, game))
  np.testing.assert_allclose(full[np.asarray(contexts)], log_probs,
                             rtol=1e-12, atol=1e-12)
  # The parameters matter: the policy is far from pi_ref.
  assert np.max(np.abs(full - np.log(np.asarray(game.ref_policy)))) > 0.3


@pytest.mark.parametrize('name', POLICIES)
@pytest.mark.parametrize('seed', [0, 1])
def test_initial_policy_is_the_reference(name, seed):
  game = _game(seed)
  policy = _policy(name)
  params = _init(policy, jax.random.PRNGKey(seed + 10), game)
  log_pi = np.asarray(_full(policy, params, game))
  np.testing.assert_allclose(log_pi, np.log(np.asarray(game.ref_policy)),
                             rtol=0, atol=1e-12)
  if name == 'mlp':
    # Whatever the hidden weights (they are random), the output layer is 0.
    leaves = jax.tree.leaves(params)
    assert any(np.any(np.asarray(leaf) != 0) for leaf in leaves)


def test_random_init_differs_from_the_reference():
  game = _game()
  for name in ('tabular', 'loglinear'):
    config = policies.PolicyConfig(policy=name, init='random',
                                   init_scale=1.0)
    policy = policies.make_policy(config)
    log_pi = [np.asarray(_full(
        policy, _init(policy, jax.random.PRNGKey(s), game), game))
              for s in (0, 1)]
    log_ref = np.log(np.asarray(game.ref_policy))
    assert np.max(np.abs(log_pi[0] - log_ref)) > 0.1, name
    assert not np.allclose(log_pi[0], log_pi[1]), name


def _chi_square(samples, contexts, probs):
  """Pearson's statistic of the draws against ``probs [X, n]``; ``df``."""
  num_contexts, n = probs.shape
  counts = np.bincount(contexts * n + samples,
                       minlength=num_contexts * n).reshape(num_contexts, n)
  expected = counts.sum(-1, keepdims=True) * probs
  return np.sum((counts - expected) ** 2 / expected), num_contexts * (n - 1)


def _draws(policy, params, game, mixture=0.0, seed=3):
  contexts = jnp.repeat(jnp.arange(NUM_CONTEXTS), DRAWS_PER_CONTEXT)
  sample = jax.jit(policy.sample)
  samples = np.asarray(sample(jax.random.PRNGKey(seed), params,
                              context_data(game, contexts), mixture))
  assert samples.shape == contexts.shape
  assert samples.min() >= 0 and samples.max() < NUM_ACTIONS
  return samples, np.asarray(contexts)


@pytest.mark.parametrize('name', POLICIES)
@pytest.mark.parametrize('mixture', [0.0, 0.3, 1.0])
def test_sample_frequencies_match_the_policy(name, mixture):
  game = _game()
  policy = _policy(name)
  params = _random_params(name, game)
  log_pi = np.asarray(_full(policy, params, game))
  log_ref = np.log(np.asarray(game.ref_policy))
  target = np.exp(_np_log_softmax((1 - mixture) * log_pi + mixture * log_ref))
  samples, contexts = _draws(policy, params, game, mixture)
  stat, df = _chi_square(samples, contexts, target)
  bound = scipy.stats.chi2.isf(TAIL, df)
  assert stat < bound, (stat, bound)
  # The check has teeth: the same draws reject the neighbouring candidates.
  for other_c in (0.0, 0.3, 1.0):
    if other_c != mixture:
      other = np.exp(_np_log_softmax((1 - other_c) * log_pi +
                                     other_c * log_ref))
      assert _chi_square(samples, contexts, other)[0] > 3 * bound, other_c


def test_mixture_can_be_traced():
  game = _game()
  policy = _policy('tabular')
  params = _random_params('tabular', game)
  contexts = jnp.arange(NUM_CONTEXTS)
  key = jax.random.PRNGKey(0)
  x = context_data(game, contexts)
  batched = jax.jit(jax.vmap(policy.sample, in_axes=(None, None, None, 0)))
  mixtures = jnp.array([0.0, 0.5])
  out = batched(key, params, x, mixtures)
  for i, c in enumerate([0.0, 0.5]):
    np.testing.assert_array_equal(out[i], policy.sample(key, params, x, c))


def test_loglinear_represents_any_policy_with_enough_features():
  """With ``d >= X n`` features in general position, ``theta`` solving
  ``phi theta = log target - log pi_ref`` (least squares) gives the target."""
  dim = NUM_CONTEXTS * NUM_ACTIONS + 1
  game = _game(feature_dim=dim)
  rng = np.random.default_rng(0)
  target = rng.dirichlet(np.ones(NUM_ACTIONS), size=NUM_CONTEXTS)
  log_target = np.log(target)
  phi = np.asarray(game.features).reshape(-1, dim)
  rhs = (log_target - np.log(np.asarray(game.ref_policy))).reshape(-1)
  theta, *_ = np.linalg.lstsq(phi, rhs, rcond=None)
  policy = _policy('loglinear')
  log_pi = np.asarray(_full(policy, jnp.asarray(theta),
                                               game))
  np.testing.assert_allclose(log_pi, log_target, rtol=0, atol=1e-9)

  # With fewer features than X (n - 1) the same target is out of reach.
  small = _game(feature_dim=FEATURE_DIM)
  phi = np.asarray(small.features).reshape(-1, FEATURE_DIM)
  rhs = (log_target - np.log(np.asarray(small.ref_policy))).reshape(-1)
  theta, *_ = np.linalg.lstsq(phi, rhs, rcond=None)
  log_pi = np.asarray(_full(policy, jnp.asarray(theta),
                                               small))
  assert np.max(np.abs(log_pi - log_target)) > 0.1


def test_loglinear_formula():
  game = _game()
  theta = jnp.array([0.3, -1.0, 0.5, 2.0])
  log_pi = np.asarray(_full(_policy('loglinear'), theta,
                                               game))
  expected = _np_log_softmax(np.log(np.asarray(game.ref_policy)) +
                             np.asarray(game.features) @ np.asarray(theta))
  np.testing.assert_allclose(log_pi, expected, rtol=1e-12, atol=1e-12)


def test_mlp_shares_weights_across_contexts_and_reads_context_features():
  game = _game()
  policy = _policy('mlp')
  params = _random_params('mlp', game)
  log_pi = np.asarray(_full(policy, params, game))
  # Moving one context's features moves only that context's policy.
  psi = game.context_features.at[1].add(1.0)
  moved = np.asarray(_full(
      policy, params, game.replace(context_features=psi)))
  np.testing.assert_array_equal(moved[[0, 2]], log_pi[[0, 2]])
  assert np.max(np.abs(moved[1] - log_pi[1])) > 1e-3
  # Identical inputs give identical scores: copy context 0 into context 2.
  copied = game.replace(
      features=game.features.at[2].set(game.features[0]),
      context_features=game.context_features.at[2].set(
          game.context_features[0]),
      ref_policy=game.ref_policy.at[2].set(game.ref_policy[0]))
  log_copied = np.asarray(_full(policy, params, copied))
  np.testing.assert_allclose(log_copied[2], log_copied[0], rtol=0,
                             atol=1e-12)


def test_features_are_drawn_from_their_own_key():
  """Adding features leaves the preferences of a non-feature family as they
  were, and the annotators game is intransitive-capable but valid."""
  key = jax.random.PRNGKey(0)
  plain = generate_game(key, 'random', 3, 5, 'random', jnp.float64)
  with_features = generate_game(key, 'random', 3, 5, 'random', jnp.float64,
                                feature_dim=4)
  np.testing.assert_array_equal(plain.preferences, with_features.preferences)
  np.testing.assert_array_equal(plain.ref_policy, with_features.ref_policy)
  assert plain.features is None and plain.feature_dim == 0
  assert with_features.features.shape == (3, 5, 4)
  assert with_features.context_features.shape == (3, 4)
  game = _game()
  prefs = np.asarray(game.preferences)
  np.testing.assert_allclose(prefs + np.swapaxes(prefs, -1, -2), 1,
                             atol=1e-15)
  with pytest.raises(ValueError, match='feature_dim'):
    generate_game(key, 'annotators', 3, 5, feature_dim=0)


# --------------------------------------------------------------------------
# Features from .npz files.


def _file_arrays(features_shape=(2, 3, 4), seed=0):
  rng = np.random.default_rng(seed)
  upper = rng.uniform(size=(2, 3, 3))
  prefs = 0.5 + (upper - np.swapaxes(upper, -1, -2)) / 2
  return {'preferences': prefs,
          'features': rng.normal(size=features_shape),
          'context_features': rng.normal(size=(2, features_shape[-1]))}


def test_features_are_loaded_from_npz(tmp_path):
  arrays = _file_arrays()
  path = tmp_path / 'game.npz'
  np.savez(path, **arrays)
  game = load_game(str(path), dtype=np.float64)
  np.testing.assert_array_equal(game.features, arrays['features'])
  np.testing.assert_array_equal(game.context_features,
                                arrays['context_features'])
  assert game.feature_dim == 4
  # Without context features they are zeros.
  del arrays['context_features']
  np.savez(path, **arrays)
  game = load_game(str(path), dtype=np.float64)
  np.testing.assert_array_equal(game.features, arrays['features'])
  np.testing.assert_array_equal(game.context_features, np.zeros((2, 4)))
  # A policy reads them.
  theta = jnp.array([1.0, 0.0, -1.0, 0.5])
  log_pi = np.asarray(_full(_policy('loglinear'), theta,
                                               game))
  np.testing.assert_allclose(
      log_pi, _np_log_softmax(np.log(np.full((2, 3), 1 / 3)) +
                              arrays['features'] @ np.asarray(theta)),
      rtol=1e-12, atol=1e-12)
  mlp = _policy('mlp')
  params = _init(mlp, jax.random.PRNGKey(0), game)
  np.testing.assert_allclose(
      _full(mlp, params, game), np.log(1 / 3), atol=1e-12)
  # A .npz without features has none.
  np.savez(path, preferences=arrays['preferences'])
  assert load_game(str(path)).features is None


def _bad(arrays, **changes):
  arrays = dict(arrays)
  for name, value in changes.items():
    if value is None:
      del arrays[name]
    else:
      arrays[name] = value
  return arrays


BAD_FEATURES = [
    ('features_wrong_actions', lambda a: _bad(
        a, features=np.zeros((2, 4, 4))), 'features'),
    ('features_wrong_contexts', lambda a: _bad(
        a, features=np.zeros((3, 3, 4))), 'features'),
    ('features_two_axes', lambda a: _bad(a, features=np.zeros((2, 3))),
     'features'),
    ('features_empty_dim', lambda a: _bad(
        a, features=np.zeros((2, 3, 0)), context_features=None), 'features'),
    ('features_nan', lambda a: _bad(
        a, features=np.where(np.arange(4) == 2, np.nan, a['features'])),
     'features'),
    ('features_inf', lambda a: _bad(
        a, features=np.where(np.arange(4) == 2, np.inf, a['features'])),
     'features'),
    ('features_complex', lambda a: _bad(
        a, features=a['features'].astype(np.complex128)), 'features'),
    ('features_strings', lambda a: _bad(
        a, features=np.full((2, 3, 4), 'x')), 'features'),
    ('context_features_without_features', lambda a: _bad(a, features=None),
     'context_features given without features'),
    ('context_features_nan', lambda a: _bad(
        a, context_features=np.full((2, 4), np.nan)), 'context_features'),
    ('context_features_wrong_contexts', lambda a: _bad(
        a, context_features=np.zeros((3, 4))), 'context_features'),
    ('context_features_three_axes', lambda a: _bad(
        a, context_features=np.zeros((2, 4, 1))), 'context_features'),
]


@pytest.mark.parametrize('name,make,fragment', BAD_FEATURES,
                         ids=[c[0] for c in BAD_FEATURES])
def test_bad_features_are_refused(tmp_path, name, make, fragment):
  path = tmp_path / f'{name}.npz'
  np.savez(path, **make(_file_arrays()))
  with pytest.raises(GameFileError) as error:
    load_game(str(path))
  message = str(error.value)
  assert message.startswith(f'game file {path}: '), message
  assert fragment in message, message
  assert '\n' not in message
