"""The default seed block: its rule, where it is resolved, the bit-identity
promise under it, and the per-step cost of the exact algorithms in a block.

* The rule (nash_jax.seed_blocks) depends on the backend, the game kind and
  the mode, never on the number of seeds.
* ``validate`` (and ``validate_lm``) resolve ``seed_block=None`` to the rule's
  block, the same for a single run and for the cells of a sweep, and
  config.json records that integer.
* With the default block on CPU, seed ``i`` of a multi-seed run equals its
  single run bit for bit, for a shared game (where the default block makes
  the win rates one matrix product) and for small per-seed games (a block
  of 16 there too).
* The trainer's grouped layout (the cells of a hyperparameter sweep, each
  from a block of its own, a shared game kept shared) gives every cell's
  seed the lane and program of its single run.
* Vmapped over a block of seeds of a shared game, every exact algorithm's
  step computes the win rates of all seeds as one matrix product per context
  (a ``dot_general`` with the seed axis as a free dimension) and builds no
  ``[X, n, n]``-sized temporary; with per-seed games, none beyond the
  preference tensors themselves.
"""

import json

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

from nash_jax import (
  algorithms,
  evaluation,
  experiment,
  policies,
  seed_blocks,
  train,
)
from nash_jax.algorithms import AlgorithmConfig, ConfigError
from nash_jax.games import generate_game
from nash_jax.tasks import tabular, token_game

NUM_SEEDS = 20  # Seeds 3..22: two blocks of 16, or twenty blocks of 1.
FIRST_SEED = 3
POLICY = policies.make_tabular('random')
N_BITS = 12  # n of the bit-identity runs.


def test_rule_values():
  rule = seed_blocks.default_seed_block
  for n in (2, 10, 64, 65, 999, 1000, 100_000, None):
    assert rule('cpu', True, n) == seed_blocks.CPU_SHARED_BLOCK == 16
    # Per-seed games: 16 at small n (per-step overhead shared by a block),
    # 1 above (a matrix-vector product per seed, bound by bandwidth).
    small = n is not None and n <= 64
    assert rule('cpu', False, n) == (16 if small else 1)
    assert rule('cpu', True, n, mode='sampled') == 1
    assert rule('cpu', False, n, mode='sampled') == 1
    for platform in ('gpu', 'tpu', 'cuda', 'rocm'):
      for shared in (True, False):
        for mode in ('exact', 'sampled'):
          assert rule(platform, shared, n, mode=mode) == 256
  # ... bounded by the cells X n^2 of a game (a lone run pads 32 copies).
  assert rule('cpu', False, 32, num_contexts=4) == 16   # 4096 cells
  assert rule('cpu', False, 32, num_contexts=5) == 1
  assert rule('cpu', True, 32, num_contexts=5) == 16    # Shared: one game.
  # A transformer policy: one seed per block on every backend (a block of
  # 256 of a 0.6B model asked XLA for 125 GiB on an H200).
  for platform in ('cpu', 'gpu', 'tpu', 'cuda'):
    assert rule(platform, True, None, mode='sampled',
                language_model=True) == 1


@pytest.mark.parametrize('args,match', [
    (('metal', True, 10), 'platform'), (('cpu', True, 10, 'mixed'), 'mode'),
    (('cpu', True, 0), 'num_actions'),
    (('cpu', False, 10, 'exact', False, 0), 'num_contexts')])
def test_rule_refuses_unknown_values(args, match):
  with pytest.raises(ValueError, match=match):
    seed_blocks.default_seed_block(*args)


def _setup(name, n, shared, num_contexts=2):
  keys, games, log_eq = seed_games(NUM_SEEDS, num_contexts, n)
  if shared:
    games, log_eq = jax.tree.map(lambda x: x[0], (games, log_eq))
  config = algorithms.resolve_config(name, AlgorithmConfig(beta=0.1),
                                     num_contexts)
  alg = algorithms.make_algorithm(name, config, POLICY)
  return alg, keys, games, log_eq


def _run(alg, keys, games, log_eq, first_seed, shared):
  block = seed_blocks.default_seed_block('cpu', shared, log_eq.shape[-1])
  return evaluation.train_on_game(alg, 0.1, keys, games, log_eq,
                                  num_steps=6, eval_every=3,
                                  shared_game=shared, first_seed=first_seed,
                                  seed_block=block)


@pytest.mark.parametrize('name', slow_except(
    ['nash_mp', 'online_ipo', 'self_play_pg', 'proximal_point'], {'nash_mp'}))
def test_default_block_shared_game_seed_equals_single_run(name):
  assert seed_blocks.default_seed_block('cpu', True, N_BITS) > 1
  alg, keys, game, log_eq = _setup(name, N_BITS, shared=True)
  sweep = _run(alg, keys, game, log_eq, FIRST_SEED, True)
  for i in (0, NUM_SEEDS - 1):
    single = _run(alg, keys[i:i + 1], game, log_eq, FIRST_SEED + i, True)
    assert_seed_equal(sweep, single, i)
  # The seeds differ (random initial policies), so the check has teeth.
  assert not np.array_equal(sweep[0].params[0], sweep[0].params[1])


@pytest.mark.parametrize('name', slow_except(['nash_mp', 'online_ipo'],
                                             {'nash_mp'}))
def test_default_block_per_seed_games_seed_equals_single_run(name):
  assert seed_blocks.default_seed_block('cpu', False, N_BITS) > 1
  alg, keys, games, log_eq = _setup(name, N_BITS, shared=False)
  sweep = _run(alg, keys, games, log_eq, FIRST_SEED, False)
  single = lambda k, g, e, i: _run(alg, k, g, e, FIRST_SEED + i, False)
  assert_seeds_equal_single_runs(sweep, single, keys, games, log_eq,
                                 (0, NUM_SEEDS - 1))


def test_validate_resolves_the_default_block(tmp_path):
  platform = jax.devices()[0].platform
  rule = seed_blocks.default_seed_block
  np.save(tmp_path / 'game.npy', np.full((5, 5), 0.5))
  cases = [  # (settings, block): one game for all seeds, a game per seed...
      ({'game_seed': 7}, rule(platform, True, 6)),
      ({'game': 'file', 'game_file': str(tmp_path / 'game.npy')},
       rule(platform, True, 5)),
      ({}, rule(platform, False, 6)),
      ({'mode': 'sampled', 'algorithm': 'nash_prox', 'game_seed': 7},
       rule(platform, True, 6, 'sampled')),
      ({'game_seed': 7, 'seed_block': 3}, 3)]  # ... and a block given.
  if platform == 'cpu':
    assert [block for _, block in cases] == [16, 16, 16, 1, 3]
  for i, (settings, block) in enumerate(cases):
    base = tabular.TabularConfig(
        num_actions=6, num_seeds=3, checkpoint_every=0,
        output_dir=str(tmp_path / f'run{i}'), **settings)
    config, _ = experiment.validate(tabular.TASK, base)
    assert config.seed_block == block, settings
    # A sweep's cells resolve the block of their single runs.
    cells, _ = experiment.validate_sweep(tabular.TASK, base, {'beta': [0.1, 0.2]})
    assert [c.seed_block for _, c in cells] == [block, block], settings
  lm, _ = experiment.validate(token_game.TASK, token_game.TokenGameConfig(
      output_dir=str(tmp_path / 'lm'), checkpoint_every=0))
  assert lm.seed_block == rule(platform, True, None, 'sampled')
  with pytest.raises(ConfigError, match='^--seed_block: must be '
                     '>= 1, got 0$'):
    experiment.validate(tabular.TASK, tabular.TabularConfig(
        seed_block=0, output_dir=str(tmp_path / 'zero')))


def test_config_json_records_the_chosen_block(tmp_path):
  config, file_game = experiment.validate(tabular.TASK, tabular.TabularConfig(
      game_seed=7, num_actions=4, num_seeds=2, num_steps=2, eval_every=1,
      checkpoint_every=0, output_dir=str(tmp_path)))
  experiment.write_results(experiment.run_one(tabular.TASK, config, file_game,
                                          log=lambda line: None))
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert recorded['seed_block'] == seed_blocks.default_seed_block(
      jax.devices()[0].platform, True, 4)


@pytest.mark.slow
def test_grouped_cells_on_a_shared_game_equal_their_single_runs():
  # A hyperparameter sweep as run_sweep lays it out: two cells (beta) of
  # seeds 5, 6, 7 on one shared game, each cell's reference per run, blocks
  # of 4: seed 7 of the second cell (lane 3) equals its single run.
  def make(hyper):
    beta = hyper['beta']
    return algorithms.make_algorithm('nash_mp', AlgorithmConfig(
        beta=beta, eta=2 * beta), POLICY)

  evaluate = evaluation.exact_evaluator(make)
  num_contexts, n, seeds = 2, 7, 3
  game = generate_game(jax.random.PRNGKey(0), 'random', num_contexts, n,
                       'random', jnp.float64)
  keys = jax.random.split(jax.random.PRNGKey(1), seeds)
  betas = np.repeat([0.1, 0.2], seeds)
  log_eq = np.log(np.random.default_rng(0).dirichlet(
      np.ones(n), (2 * seeds, num_contexts)))
  run = lambda keys, log_eq, betas, first_seed, group_size: train.train(
      make, evaluate, keys, game, log_eq, hyper={'beta': betas},
      num_steps=6, eval_every=3, shared=(True, False), first_seed=first_seed,
      seed_block=4, group_size=group_size)
  sweep = run(jnp.concatenate([keys, keys]), log_eq, betas, 5, seeds)
  single = run(keys[2:], log_eq[5:], betas[5:], 7, None)
  assert_seed_equal(sweep, single, 5)
  # The cells differ (beta), so the check has teeth.
  assert not np.array_equal(sweep[0].params[2], sweep[0].params[5])


def test_sweep_cell_on_a_shared_game_equals_its_single_run(tmp_path):
  base = tabular.TabularConfig(
      algorithm='nash_mp', game_seed=7, num_seeds=3, seed=5, num_actions=6,
      num_steps=20, eval_every=10, checkpoint_every=0, init='random',
      output_dir=str(tmp_path / 'sweep'))
  cells, file_game = experiment.validate_sweep(tabular.TASK, base, {'beta': [0.1, 0.2]})
  assert cells[0][1].seed_block > 1
  sweep = experiment.run_task(tabular.TASK, [c for _, c in cells],
                              file_game, base.output_dir,
                              log=lambda line: None)[1]
  config, file_game = experiment.validate(tabular.TASK, base.replace(
      beta=0.2, seed=7, num_seeds=1, output_dir=str(tmp_path / 'single')))
  single = experiment.run_one(tabular.TASK, config, file_game, log=lambda line: None)
  np.testing.assert_array_equal(sweep.final_policy[2], single.final_policy[0])
  for a, b in zip(sweep.rows, single.rows):
    for k in a:
      np.testing.assert_array_equal(a[k][2], b[k][0], err_msg=k)


# ----------------------------------------------------------------------------
# Per-step cost of the exact algorithms in a block of seeds.
# ----------------------------------------------------------------------------

BLOCK, CONTEXTS, N = 5, 2, 24  # Distinct sizes, so that axes can be told.


def _equations(jaxpr):
  """Every equation of a jaxpr, those of nested jaxprs (loops) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else [param]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def _step_jaxpr(name, shared):
  config = algorithms.resolve_config(name, AlgorithmConfig(beta=0.1),
                                     CONTEXTS)
  alg = algorithms.make_algorithm(name, config, POLICY)
  keys = jax.random.split(jax.random.PRNGKey(0), BLOCK)
  make = lambda k: generate_game(k, 'random', CONTEXTS, N, 'random',
                                 jnp.float64)
  if shared:
    game = make(keys[0])
    states = jax.vmap(alg.init, in_axes=(0, None))(keys, game)
    step = jax.vmap(alg.step, in_axes=(0, None))
  else:
    game = jax.vmap(make)(keys)
    states = jax.vmap(alg.init)(keys, game)
    step = jax.vmap(alg.step)
  one = jax.tree.map(lambda x: x[0], states)
  one_game = game if shared else jax.tree.map(lambda x: x[0], game)
  new, _ = jax.jit(alg.step)(one, one_game)
  products = int(new.preference_queries - one.preference_queries)
  return jax.make_jaxpr(step)(states, game).jaxpr, products


def _largest_temporary(jaxpr):
  return max(int(np.prod(v.aval.shape)) for eqn in _equations(jaxpr)
             for v in eqn.outvars if hasattr(v.aval, 'shape'))


@pytest.mark.parametrize('name', slow_except(algorithms.ALGORITHM_NAMES,
                                             {'nash_mp', 'online_ipo'}))
def test_shared_game_win_rates_are_one_matrix_product_per_context(name):
  jaxpr, products = _step_jaxpr(name, shared=True)
  dots = [e for e in _equations(jaxpr) if e.primitive.name == 'dot_general']
  assert dots
  if name != 'proximal_point':  # Its inner loop is a nested jaxpr.
    assert len(dots) == products
  for eqn in dots:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params[
        'dimension_numbers']
    # The game's [X, n, n] against all seeds at once: the seed axis is a
    # free (non-contracted, non-batch) dimension of the other operand.
    shapes = {lhs: (rhs, rhs_contract, rhs_batch),
              rhs: (lhs, lhs_contract, lhs_batch)}
    assert (CONTEXTS, N, N) in shapes, (lhs, rhs)
    other, contract, batch = shapes[(CONTEXTS, N, N)]
    free = [d for d in range(len(other)) if d not in contract + batch]
    assert BLOCK in [other[d] for d in free], (lhs, rhs, eqn.params)
  # Nothing of the game's size is built per step (it is an input).
  assert _largest_temporary(jaxpr) < CONTEXTS * N * N


@pytest.mark.parametrize('name', slow_except(algorithms.ALGORITHM_NAMES,
                                             {'nash_mp', 'online_ipo'}))
def test_per_seed_games_build_nothing_of_the_games_size(name):
  jaxpr, _ = _step_jaxpr(name, shared=False)
  assert _largest_temporary(jaxpr) < CONTEXTS * N * N
