"""Tests for the preference games: generators, core helpers and file loading."""

import functools
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_preferences

from nash_jax.games import (
  GENERATORS,
  REF_POLICIES,
  GameFileError,
  core,
  generate_game,
  load_game,
)

SIZES = [(1, 2), (3, 3)]
NAMES = sorted(GENERATORS)
SEEDS = (0, 0, 1)  # Two draws with the same key, one with another key.


@functools.cache
def _make_all_games(num_contexts, num_actions):
  """Every generator with both reference policies, vmapped over keys.

  One compilation per size (compiles dominate the run time on CPU).
  """

  def make(keys):
    return {
        (name, ref): jax.vmap(lambda key, name=name, ref=ref: generate_game(
            key, name, num_contexts, num_actions, ref, jnp.float64))(keys)
        for name in NAMES for ref in REF_POLICIES
    }

  return jax.jit(make)


def _keys(seeds):
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


@functools.cache
def _all_games(num_contexts, num_actions):
  games = _make_all_games(num_contexts, num_actions)(_keys(SEEDS))
  return jax.tree.map(np.asarray, games)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _preferences_for_seeds(keys, name, num_contexts, num_actions):
  return jax.vmap(lambda key: GENERATORS[name](
      key, num_contexts, num_actions, jnp.float64))(keys)


# ----------------------------------------------------------------------------
# Generators.
# ----------------------------------------------------------------------------


def test_generator_names():
  assert set(GENERATORS) == {'random', 'bradley_terry', 'cyclic',
                             'population', 'tie', 'deterministic'}
  assert set(REF_POLICIES) == {'uniform', 'random'}


@pytest.mark.parametrize('ref_policy', REF_POLICIES)
@pytest.mark.parametrize('num_contexts,num_actions', SIZES)
@pytest.mark.parametrize('name', NAMES)
def test_generator_is_a_valid_game(name, num_contexts, num_actions,
                                   ref_policy):
  games = _all_games(num_contexts, num_actions)[name, ref_policy]
  p = games.preferences
  assert p.dtype == np.float64
  assert p.shape == (len(SEEDS), num_contexts, num_actions, num_actions)
  assert games.num_contexts == num_contexts
  assert games.num_actions == num_actions
  # Exactly: the upper triangle is built as 1 - lower, and x + fl(1 - x)
  # rounds to 1 for every x in [0, 1].
  np.testing.assert_array_equal(p + np.swapaxes(p, -1, -2), 1.0)
  np.testing.assert_array_equal(np.diagonal(p, axis1=-2, axis2=-1), 0.5)
  assert np.all(p >= 0) and np.all(p <= 1)
  weights = games.context_weights
  assert weights.shape == (len(SEEDS), num_contexts)
  np.testing.assert_allclose(weights, 1.0 / num_contexts, rtol=0, atol=1e-15)
  ref = games.ref_policy
  assert ref.shape == (len(SEEDS), num_contexts, num_actions)
  assert np.all(ref > 0)
  np.testing.assert_allclose(ref.sum(-1), 1.0, rtol=0, atol=1e-12)
  if ref_policy == 'uniform':
    np.testing.assert_allclose(ref, 1.0 / num_actions, rtol=0, atol=1e-15)
  else:
    # Dirichlet draws: not uniform, and different across contexts and keys.
    assert np.max(np.abs(ref - 1.0 / num_actions)) > 1e-3
    assert not np.allclose(ref[0], ref[2])
    if num_contexts > 1:
      assert not np.allclose(ref[0, 0], ref[0, 1])


@pytest.mark.parametrize('num_contexts,num_actions', SIZES)
def test_generation_is_deterministic_given_the_key(num_contexts, num_actions):
  first = _all_games(num_contexts, num_actions)
  second = _make_all_games(num_contexts, num_actions)(_keys(SEEDS))
  for name in NAMES:
    for ref in REF_POLICIES:
      for a, b in zip(jax.tree.leaves(first[name, ref]),
                      jax.tree.leaves(second[name, ref])):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[0], a[1])  # SEEDS[0] == SEEDS[1].


@pytest.mark.parametrize(
    'name', ['random', 'bradley_terry', 'cyclic', 'population',
             'deterministic'])
def test_generation_differs_across_keys(name):
  games = _all_games(3, 3)[name, 'random']
  assert not np.array_equal(games.preferences[0], games.preferences[2])
  assert not np.array_equal(games.ref_policy[0], games.ref_policy[2])


def test_unbatched_generation_matches_batched():
  games = _all_games(3, 3)['random', 'uniform']
  game = jax.jit(lambda key: generate_game(key, 'random', 3, 3, 'uniform',
                                           jnp.float64))(
                                               jax.random.PRNGKey(SEEDS[2]))
  np.testing.assert_array_equal(game.preferences, games.preferences[2])
  np.testing.assert_array_equal(game.ref_policy, games.ref_policy[2])
  np.testing.assert_array_equal(game.context_weights,
                                games.context_weights[2])


def test_unknown_names_raise():
  with pytest.raises(ValueError, match='unknown game'):
    generate_game(jax.random.PRNGKey(0), 'nope', 1, 3)
  with pytest.raises(ValueError, match='unknown reference policy'):
    generate_game(jax.random.PRNGKey(0), 'tie', 1, 3, ref_policy='nope')


def test_bradley_terry_is_transitive_with_condorcet_winner():
  num_actions = 6
  p = np.asarray(_preferences_for_seeds(_keys(range(5)), 'bradley_terry', 3,
                                        num_actions))
  off_diagonal = ~np.eye(num_actions, dtype=bool)
  for px in p.reshape(-1, num_actions, num_actions):
    # Recover the rewards r(y) - r(0) = logit P(y > 0) and check that P is
    # exactly the Bradley-Terry model of these rewards.
    rewards = np.log(px[:, 0]) - np.log1p(-px[:, 0])
    bt = 1 / (1 + np.exp(-(rewards[:, None] - rewards[None, :])))
    np.testing.assert_allclose(px, bt, rtol=0, atol=1e-12)
    winner = np.argmax(rewards)
    assert np.all(px[winner][off_diagonal[winner]] > 0.5)
    # Transitivity: the reward order is a strict total order of P.
    order = np.argsort(-rewards)
    for i in range(num_actions):
      for j in range(i + 1, num_actions):
        assert px[order[i], order[j]] > 0.5


def test_deterministic_preferences_are_zero_one():
  for num_contexts, num_actions in SIZES:
    p = _all_games(num_contexts, num_actions)['deterministic', 'uniform']
    off = p.preferences[..., ~np.eye(num_actions, dtype=bool)]
    assert np.all((off == 0) | (off == 1))
  big = np.asarray(_preferences_for_seeds(_keys(range(1)), 'deterministic', 1,
                                          8))
  big_off = big[..., ~np.eye(8, dtype=bool)]
  assert np.all((big_off == 0) | (big_off == 1))
  # Both outcomes occur for a game of this size.
  assert np.any(big_off == 0) and np.any(big_off == 1)


def test_tie_preferences_are_one_half():
  for size in SIZES:
    np.testing.assert_array_equal(
        _all_games(*size)['tie', 'random'].preferences, 0.5)


@pytest.mark.parametrize('num_actions', [2, 3, 4, 5, 8])
def test_cyclic_every_response_wins_half_against_uniform(num_actions):
  p = np.asarray(_preferences_for_seeds(_keys(range(2)), 'cyclic', 3,
                                        num_actions))
  uniform = np.full((2, 3, num_actions), 1.0 / num_actions)
  g = np.einsum('kxyz,kxz->kxy', p, uniform)
  np.testing.assert_allclose(g, 0.5, rtol=0, atol=1e-12)
  # Circulant: shifting every response by one leaves P unchanged.
  np.testing.assert_array_equal(np.roll(p, (1, 1), axis=(-2, -1)), p)
  if num_actions > 2:
    assert np.any(np.abs(p - 0.5) > 1e-3)


def test_cyclic_three_is_rock_paper_scissors():
  p = np.asarray(_preferences_for_seeds(_keys(range(4)), 'cyclic', 2, 3))
  for px in p.reshape(-1, 3, 3):
    for y in range(3):
      others = [px[y, z] for z in range(3) if z != y]
      # Beats exactly one response and loses to the other.
      assert sum(v > 0.5 for v in others) == 1
      assert sum(v < 0.5 for v in others) == 1
      # A cycle: y beats y - 1 (mod 3) for every y.
      assert px[y, (y - 1) % 3] > 0.5


def test_population_can_be_intransitive():
  # Condorcet's paradox: some context among these has no Condorcet winner.
  p = np.asarray(_preferences_for_seeds(_keys(range(10)), 'population', 4, 5))
  found = False
  for px in p.reshape(-1, 5, 5):
    beats_all = [np.all(np.delete(px[y], y) > 0.5) for y in range(5)]
    found |= not any(beats_all)
  assert found


# ----------------------------------------------------------------------------
# Core helpers.
# ----------------------------------------------------------------------------


def _game(name, ref='random', size=(3, 3), seed_index=2):
  games = _all_games(*size)[name, ref]
  return jax.tree.map(lambda a: jnp.asarray(a[seed_index]), games)


def test_win_rates_matches_numpy():
  rng = np.random.default_rng(0)
  game = _game('random')
  p = np.asarray(game.preferences)
  policy = rng.dirichlet(np.ones(3), size=3)
  got = np.asarray(core.win_rates(game.preferences, jnp.asarray(policy)))
  want = np.einsum('xyz,xz->xy', p, policy)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
  assert np.all((got >= 0) & (got <= 1))
  opponent = rng.dirichlet(np.ones(3), size=3)
  got = np.asarray(core.preference_of(game.preferences, jnp.asarray(policy),
                                      jnp.asarray(opponent)))
  want = np.einsum('xy,xyz,xz->x', policy, p, opponent)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
  # The complement: P(pi' > pi) = 1 - P(pi > pi').
  swapped = np.asarray(core.preference_of(
      game.preferences, jnp.asarray(opponent), jnp.asarray(policy)))
  np.testing.assert_allclose(got + swapped, 1.0, rtol=0, atol=1e-12)


def test_win_rates_of_a_pure_policy_is_a_column():
  game = _game('random')
  pure = jnp.asarray(np.eye(3)[[0, 2, 1]])
  got = np.asarray(core.win_rates(game.preferences, pure))
  p = np.asarray(game.preferences)
  np.testing.assert_array_equal(got, p[np.arange(3), :, [0, 2, 1]])


@pytest.mark.parametrize('name', NAMES)
def test_preference_of_self_is_one_half(name):
  rng = np.random.default_rng(1)
  game = _game(name)
  for _ in range(3):
    policy = jnp.asarray(rng.dirichlet(np.ones(3), size=3))
    got = np.asarray(core.preference_of(game.preferences, policy, policy))
    np.testing.assert_allclose(got, 0.5, rtol=0, atol=1e-12)


def test_expectation_uses_context_weights():
  game = core.make_game(np.full((3, 2, 2), 0.5),
                        context_weights=[0.2, 0.3, 0.5])
  value = core.expectation(game, jnp.asarray([1.0, 10.0, 100.0]))
  np.testing.assert_allclose(float(value), 0.2 + 3.0 + 50.0, rtol=1e-14)


def test_make_game_fills_defaults():
  p = np.array([[0.5, 0.25], [0.75, 0.5]])
  game = core.make_game(p, ref_policy=[0.25, 0.75])
  assert game.preferences.shape == (1, 2, 2)
  np.testing.assert_allclose(game.ref_policy, [[0.25, 0.75]])
  np.testing.assert_allclose(game.context_weights, [1.0])
  game = core.make_game(np.stack([p, p.T]))
  np.testing.assert_allclose(game.ref_policy, 0.5)
  np.testing.assert_allclose(game.context_weights, [0.5, 0.5])


def test_stack_games():
  games = [_game('random', seed_index=i) for i in range(3)]
  stacked = core.stack_games(games)
  assert stacked.preferences.shape == (3, 3, 3, 3)
  np.testing.assert_array_equal(stacked.preferences[2],
                                games[2].preferences)


# ----------------------------------------------------------------------------
# Loading a game from a file.
# ----------------------------------------------------------------------------


def _preferences(num_contexts, num_actions, seed=0):
  return random_preferences(np.random.default_rng(seed), num_contexts,
                            num_actions)


def _check_game(game, preferences, ref_policy, context_weights):
  np.testing.assert_allclose(np.asarray(game.preferences), preferences,
                             rtol=0, atol=0)
  np.testing.assert_allclose(np.asarray(game.ref_policy), ref_policy,
                             rtol=0, atol=1e-15)
  np.testing.assert_allclose(np.asarray(game.context_weights),
                             context_weights, rtol=0, atol=1e-15)
  assert isinstance(game, core.Game)


def test_helper_builds_valid_preferences():
  p = _preferences(2, 4)
  np.testing.assert_allclose(p + np.swapaxes(p, -1, -2), 1.0, atol=1e-15)


def test_load_npy_one_context(tmp_path):
  p = _preferences(1, 4)[0]
  path = tmp_path / 'game.npy'
  np.save(path, p)
  game = load_game(str(path))
  assert game.preferences.shape == (1, 4, 4)
  _check_game(game, p[None], np.full((1, 4), 0.25), [1.0])


def test_load_npy_several_contexts(tmp_path):
  p = _preferences(3, 5)
  path = tmp_path / 'game.npy'
  np.save(path, p)
  game = load_game(str(path))
  _check_game(game, p, np.full((3, 5), 0.2), np.full(3, 1 / 3))
  assert game.preferences.dtype == jnp.float64


def test_load_npy_float32(tmp_path):
  p = np.array([[0.5, 0.25], [0.75, 0.5]], np.float32)
  path = tmp_path / 'game.npy'
  np.save(path, p)
  game = load_game(str(path))
  _check_game(game, p[None].astype(np.float64), np.full((1, 2), 0.5), [1.0])


@pytest.mark.parametrize('ref_ndim', [1, 2])
def test_load_npz_round_trip(tmp_path, ref_ndim):
  rng = np.random.default_rng(3)
  p = _preferences(3, 4, seed=1)
  ref = rng.dirichlet(np.ones(4), size=3)
  if ref_ndim == 1:
    ref = ref[0]
  weights = np.array([0.5, 0.2, 0.3])
  path = tmp_path / 'game.npz'
  np.savez(path, preferences=p, ref_policy=ref, context_weights=weights)
  game = load_game(str(path))
  _check_game(game, p, np.broadcast_to(ref, (3, 4)), weights)


def test_load_npz_preferences_only_and_compressed(tmp_path):
  p = _preferences(2, 3, seed=2)
  path = tmp_path / 'game.npz'
  np.savez_compressed(path, preferences=p)
  game = load_game(str(path))
  _check_game(game, p, np.full((2, 3), 1 / 3), [0.5, 0.5])


def test_load_npz_one_context_with_ref(tmp_path):
  p = _preferences(1, 3, seed=4)[0]
  path = tmp_path / 'game.npz'
  np.savez(path, preferences=p, ref_policy=np.array([0.2, 0.3, 0.5]),
           context_weights=np.array([1.0]))
  game = load_game(str(path))
  _check_game(game, p[None], [[0.2, 0.3, 0.5]], [1.0])


def test_load_accepts_path_objects(tmp_path):
  p = _preferences(1, 3)[0]
  path = tmp_path / 'game.npy'
  np.save(path, p)
  game = load_game(path)
  _check_game(game, p[None], np.full((1, 3), 1 / 3), [1.0])


def test_small_antisymmetry_violation_is_accepted(tmp_path):
  p = _preferences(1, 3)[0]
  p[0, 1] += 1e-8
  path = tmp_path / 'game.npy'
  np.save(path, p)
  game = load_game(str(path))
  np.testing.assert_array_equal(np.asarray(game.preferences)[0], p)


def _expect_error(path, match=None):
  with pytest.raises(GameFileError) as info:
    load_game(str(path))
  message = str(info.value)
  assert str(path) in message
  assert '\n' not in message and '\r' not in message
  if match is not None:
    assert match in message, message
  return message


def _save_npy(tmp_path, array, name='game.npy'):
  path = tmp_path / name
  np.save(path, array)
  return path


def _save_npz(tmp_path, name='game.npz', **arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return path


def test_game_file_error_is_value_error():
  assert issubclass(GameFileError, ValueError)


def test_missing_file(tmp_path):
  _expect_error(tmp_path / 'missing.npy', 'does not exist')


@pytest.mark.skipif(os.geteuid() == 0, reason='root can read any file')
def test_unreadable_file(tmp_path):
  path = _save_npy(tmp_path, _preferences(1, 3)[0])
  path.chmod(0)
  _expect_error(path, 'cannot be read')


def test_directory(tmp_path):
  directory = tmp_path / 'adir.npy'
  directory.mkdir()
  _expect_error(directory, 'directory')


@pytest.mark.parametrize('content', [
    b'',
    b'this is not a numpy file at all\n',
    bytes(range(256)) * 4,
    b'\x93NUMPY\x01\x00garbage\n\nfoo',
    b'PK\x03\x04 a truncated zip file',
])
def test_garbage_bytes(tmp_path, content):
  path = tmp_path / 'garbage.npy'
  path.write_bytes(content)
  _expect_error(path, 'cannot be read')


def test_truncated_npy(tmp_path):
  path = _save_npy(tmp_path, _preferences(1, 30)[0])
  path.write_bytes(path.read_bytes()[:300])
  _expect_error(path, 'cannot be read')


def test_truncated_npz(tmp_path):
  path = _save_npz(tmp_path, preferences=_preferences(1, 30)[0])
  path.write_bytes(path.read_bytes()[:300])
  _expect_error(path, 'cannot be read')


def test_pickled_object_array(tmp_path):
  array = np.empty(2, dtype=object)
  array[0], array[1] = 'a', np.zeros(2)
  path = tmp_path / 'game.npy'
  np.save(path, array, allow_pickle=True)
  _expect_error(path, 'cannot be read')


@pytest.mark.parametrize('array,match', [
    (np.full((2, 3), 0.5), 'square'),
    (np.full((2, 3, 4), 0.5), 'square'),
    (np.full((3,), 0.5), 'shape'),
    (np.array(0.5), 'shape'),
    (np.full((2, 2, 2, 2), 0.5), 'shape'),
    (np.full((1, 1), 0.5), 'at least 2'),
    (np.zeros((0, 2, 2)), 'no contexts'),
    (np.array([[0.5, 'a'], ['b', 0.5]]), 'real numbers'),
    (np.array([[0.5, 0.5j], [0.5, 0.5]]), 'real numbers'),
])
def test_bad_preference_shapes_and_types(tmp_path, array, match):
  _expect_error(_save_npy(tmp_path, array), match)


def test_nan_preferences(tmp_path):
  p = _preferences(2, 3)
  p[1, 0, 2] = np.nan
  _expect_error(_save_npy(tmp_path, p), 'NaN')


def test_infinite_preferences(tmp_path):
  p = _preferences(1, 3)[0]
  p[0, 1] = np.inf
  _expect_error(_save_npy(tmp_path, p), 'infinite')


@pytest.mark.parametrize('value', [1.5, -0.25])
def test_preferences_outside_unit_interval(tmp_path, value):
  # P + P^T = 1 still holds, so only the range check can catch it.
  p = np.array([[0.5, value], [1 - value, 0.5]])
  _expect_error(_save_npy(tmp_path, p), 'outside [0, 1]')


@pytest.mark.parametrize('violation', [2e-6, 1e-5, 1e-3, 0.5])
def test_antisymmetry_violation(tmp_path, violation):
  p = _preferences(2, 3)
  value = p[1, 2, 0]
  p[1, 2, 0] = value + violation if value + violation <= 1 else (
      value - violation)
  message = _expect_error(_save_npy(tmp_path, p), 'P + P^T = 1')
  assert f'{violation:.3g}' in message


def test_diagonal_not_one_half(tmp_path):
  p = _preferences(1, 3)[0]
  p[1, 1] = 0.6
  _expect_error(_save_npy(tmp_path, p), 'P + P^T = 1')


def test_antisymmetry_violation_in_npz(tmp_path):
  p = np.array([[0.5, 0.3], [0.6, 0.5]])
  _expect_error(_save_npz(tmp_path, preferences=p), 'P + P^T = 1')


def test_npz_without_preferences(tmp_path):
  path = _save_npz(tmp_path, ref_policy=np.array([0.5, 0.5]))
  _expect_error(path, 'no "preferences"')


def test_empty_npz(tmp_path):
  _expect_error(_save_npz(tmp_path), 'no "preferences"')


def test_npz_with_unknown_array(tmp_path):
  path = _save_npz(tmp_path, preferences=_preferences(1, 3)[0],
                   reference=np.full(3, 1 / 3))
  message = _expect_error(path, 'unknown arrays')
  assert 'reference' in message


@pytest.mark.parametrize('ref', [
    np.full(4, 0.25),
    np.full((2, 4), 0.25),
    np.full((3, 3), 1 / 3),
    np.full((1, 2, 3), 1 / 3),
    np.array(1.0),
])
def test_ref_policy_wrong_shape(tmp_path, ref):
  path = _save_npz(tmp_path, preferences=_preferences(2, 3), ref_policy=ref)
  _expect_error(path, 'ref_policy must have shape')


@pytest.mark.parametrize('ref', [
    np.array([0.2, 0.3, 0.4]),
    np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.6]]),
    np.array([0.5, 0.5, 0.5]),
])
def test_ref_policy_not_summing_to_one(tmp_path, ref):
  path = _save_npz(tmp_path, preferences=_preferences(2, 3), ref_policy=ref)
  _expect_error(path, 'ref_policy must sum to 1')


@pytest.mark.parametrize('ref', [
    np.array([0.0, 0.5, 0.5]),
    np.array([-0.5, 0.5, 1.0]),
    np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]),
])
def test_ref_policy_not_strictly_positive(tmp_path, ref):
  path = _save_npz(tmp_path, preferences=_preferences(2, 3), ref_policy=ref)
  _expect_error(path, 'ref_policy must be strictly positive')


@pytest.mark.parametrize('ref', [
    np.array([np.nan, 0.5, 0.5]),
    np.array([np.inf, 0.5, 0.5]),
    np.array(['a', 'b', 'c']),
])
def test_ref_policy_not_finite_numbers(tmp_path, ref):
  path = _save_npz(tmp_path, preferences=_preferences(2, 3), ref_policy=ref)
  _expect_error(path, 'ref_policy must hold finite real numbers')


def test_ref_policy_within_sum_tolerance_is_accepted(tmp_path):
  ref = np.array([0.2, 0.3, 0.5 + 1e-8])
  path = _save_npz(tmp_path, preferences=_preferences(2, 3), ref_policy=ref)
  game = load_game(str(path))
  assert np.all(np.isfinite(np.asarray(game.log_ref_policy)))


@pytest.mark.parametrize('weights,match', [
    (np.array([1.0]), 'context_weights must have shape [2]'),
    (np.array([0.3, 0.3, 0.4]), 'context_weights must have shape [2]'),
    (np.array([[0.5, 0.5]]), 'context_weights must have shape [2]'),
    (np.array([0.5, 0.6]), 'context_weights must sum to 1'),
    (np.array([0.2, 0.2]), 'context_weights must sum to 1'),
    (np.array([0.0, 1.0]), 'context_weights must be strictly positive'),
    (np.array([-0.5, 1.5]), 'context_weights must be strictly positive'),
    (np.array([np.nan, 1.0]), 'context_weights must hold finite real numbers'),
])
def test_bad_context_weights(tmp_path, weights, match):
  path = _save_npz(tmp_path, preferences=_preferences(2, 3),
                   context_weights=weights)
  _expect_error(path, match)


def test_first_error_wins_for_bad_preferences_in_npz(tmp_path):
  path = _save_npz(tmp_path, preferences=np.full((2, 3), 0.5),
                   ref_policy=np.array([0.5, 0.5]))
  _expect_error(path, 'square')


# ----------------------------------------------------------------------------
# Damaged files that numpy's reader fails on in unusual ways.
# ----------------------------------------------------------------------------


def _npy_with_header(header: bytes, version=1, payload=b''):
  header = header + b' ' * (-(len(header) + 11) % 64) + b'\n'
  size = struct.pack('<H' if version == 1 else '<I', len(header))
  return b'\x93NUMPY' + bytes([version, 0]) + size + header + payload


def test_rejects_npy_with_unterminated_header(tmp_path):
  path = tmp_path / 'game.npy'
  path.write_bytes(_npy_with_header(b"{'descr': '<f8',"))
  _expect_error(path, 'cannot be read')


def test_rejects_npy_header_with_huge_shape(tmp_path):
  path = tmp_path / 'game.npy'
  header = (b"{'descr': '<f8', 'fortran_order': False, "
            b"'shape': (1000000000, 1000000000), }")
  path.write_bytes(_npy_with_header(header, payload=b'\0' * 64))
  _expect_error(path, 'cannot be read')


def test_rejects_npy_with_oversized_header_message_is_one_line(tmp_path):
  path = tmp_path / 'game.npy'
  path.write_bytes(_npy_with_header(b' ' * 20000, version=2))
  _expect_error(path, 'cannot be read')


@pytest.mark.filterwarnings('ignore::numpy.exceptions.ComplexWarning')
def test_rejects_complex_ref_policy_is_rejected(tmp_path):
  ref = np.array([0.5 + 0.5j, 0.5 - 0.5j])
  path = _save_npz(tmp_path, preferences=np.full((2, 2), 0.5), ref_policy=ref)
  _expect_error(path)
