"""The trainer's promises: seed sweeps equal single runs, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  assert_seed_equal,
  assert_seeds_equal_single_runs,
  seed_games,
  slow_except,
)

from nash_jax import algorithms, evaluation, policies, train
from nash_jax.algorithms import AlgorithmConfig

NUM_SEEDS = 5
POLICY = policies.make_tabular('random')
FIRST_SEED = 3


def _setup(name, num_contexts=2, n=9, beta=0.1):
  keys, games, log_eq = seed_games(NUM_SEEDS, num_contexts, n)
  config = algorithms.resolve_config(
      name, AlgorithmConfig(beta=beta), num_contexts)
  if name == 'proximal_point':
    config = config.replace(inner_steps=3)
  return algorithms.make_algorithm(name, config, POLICY), keys, games, log_eq


def _run(alg, keys, games, log_eq, first_seed, seed_block, shared=False,
         num_steps=10):
  return evaluation.train_on_game(alg, 0.1, keys, games, log_eq, num_steps=num_steps,
                     eval_every=5, shared_game=shared, first_seed=first_seed,
                     seed_block=seed_block)


CASES = [(name, 1) for name in algorithms.ALGORITHM_NAMES] + [
    ('omwu', 4), ('nash_md', 4), ('online_ipo', 4)]


@pytest.mark.parametrize('name,seed_block', slow_except(
    CASES, {('nash_mp', 1), ('online_ipo', 4)}))
def test_sweep_seed_is_bit_identical_to_single_run(name, seed_block):
  alg, keys, games, log_eq = _setup(name)
  sweep = _run(alg, keys, games, log_eq, FIRST_SEED, seed_block)
  single = lambda k, g, e, i: _run(alg, k, g, e, FIRST_SEED + i, seed_block)
  assert_seeds_equal_single_runs(sweep, single, keys, games, log_eq,
                                 (0, NUM_SEEDS - 1))


@pytest.mark.slow
def test_shared_game_sweep_is_bit_identical_to_single_run():
  alg, keys, games, log_eq = _setup('nash_mp')
  game = jax.tree.map(lambda x: x[0], games)
  sweep = _run(alg, keys, game, log_eq[0], FIRST_SEED, 1, shared=True)
  single = _run(alg, keys[2:3], game, log_eq[0], FIRST_SEED + 2, 1,
                shared=True)
  assert_seed_equal(sweep, single, 2)
  # Seeds differ through their random initial policy.
  assert not np.array_equal(sweep[0].params[0], sweep[0].params[1])


@pytest.mark.parametrize('first_seed,num_seeds,block',
                         [(0, 1, 1), (3, 5, 4), (7, 2, 8), (8, 8, 4)])
def test_seed_layout_puts_seed_s_in_lane_s_mod_block(first_seed, num_seeds,
                                                     block):
  gather, positions = train.seed_layout(first_seed, num_seeds, block)
  assert len(gather) % block == 0
  assert len(gather) // block >= 2
  for i, p in enumerate(positions):
    assert p % block == (first_seed + i) % block
    assert gather[p] == i
  assert set(gather) <= set(range(num_seeds))


def test_results_do_not_depend_on_the_block_contents():
  # The same seed computed next to different neighbours.
  alg, keys, games, log_eq = _setup('omwu')
  a = _run(alg, keys, games, log_eq, 0, 4)
  perm = np.array([4, 1, 2, 3, 0])
  b = _run(alg, keys[perm], jax.tree.map(lambda x: x[perm], games),
           log_eq[perm], 0, 4)
  # Seeds 1-3 keep their lanes and data; their neighbours changed.
  for i in (1, 2, 3):
    np.testing.assert_array_equal(a[0].params[i], b[0].params[i])


def test_rows_are_evaluation_points_and_until_stops_early():
  alg, keys, games, log_eq = _setup('nash_mp')
  _, rows = _run(alg, keys, games, log_eq, 0, 1, num_steps=12)
  assert [int(r['step'][0]) for r in rows] == [0, 5, 10, 12]
  # The last, shorter chunk is still exactly 2 steps.
  np.testing.assert_array_equal(rows[-1]['preference_queries'], 24)
  assert all(r['kl_to_equilibrium'].shape == (NUM_SEEDS,) for r in rows)
  _, rows = evaluation.train_on_game(alg, 0.1, keys, games, log_eq, num_steps=100,
                        eval_every=5, shared_game=False,
                        until=lambda r: np.min(r['preference_queries']) >= 20)
  assert [int(r['step'][0]) for r in rows] == [0, 5, 10]
  np.testing.assert_array_equal(rows[-1]['preference_queries'], 20)


def test_sweep_over_traced_beta_and_eta_matches_separate_runs():
  # No Python control flow depends on hyperparameter values, so a config
  # whose numbers are tracers vmaps (the hyperparameter-sweep pattern).
  _, keys, games, _ = _setup('nash_mp')
  game = jax.tree.map(lambda x: x[0], games)
  betas = jnp.array([0.1, 0.2, 0.5])

  def final_policy(beta):
    config = AlgorithmConfig(beta=beta, eta=2 * beta)
    alg = algorithms.make_algorithm('nash_mp', config, POLICY)
    state = alg.init(keys[0], game)
    state, _ = jax.lax.scan(lambda s, _: (alg.step(s, game)[0], None), state,
                            None, length=10)
    return state.params  # nash_mp's params are log pi

  swept = jax.jit(jax.vmap(final_policy))(betas)
  for i, beta in enumerate(betas):
    np.testing.assert_allclose(swept[i], final_policy(float(beta)),
                               rtol=0, atol=1e-12)


def test_resume_continues_bit_identically_and_respects_until():
  alg, keys, games, log_eq = _setup('omwu')
  saved = {}

  def keep(get_state, rows, done):
    if done == 10:
      saved['resume'] = (get_state(), list(rows), done)

  full_state, full_rows = _run(alg, keys, games, log_eq, 0, 1, num_steps=20)
  evaluation.train_on_game(alg, 0.1, keys, games, log_eq, num_steps=20, eval_every=5,
              shared_game=False, on_chunk=keep)
  state, rows = evaluation.train_on_game(alg, 0.1, keys, games, log_eq, num_steps=20,
                            eval_every=5, shared_game=False,
                            resume=saved['resume'])
  jax.tree.map(np.testing.assert_array_equal, state, full_state)
  assert len(rows) == len(full_rows)
  # A run that had stopped on its rule does not take another chunk.
  stop = lambda r: np.min(r['preference_queries']) >= 10
  _, rows = evaluation.train_on_game(alg, 0.1, keys, games, log_eq, num_steps=20,
                        eval_every=5, shared_game=False,
                        resume=saved['resume'], until=stop)
  assert [int(r['step'][0]) for r in rows] == [0, 5, 10]
