"""A tabular game (``experiments.matrix_game``, ``experiments.compare``).

The game is generated per seed (or once, from ``--game_seed`` or a file),
its exact reference ``pi*_beta`` solved on the host, and the algorithm runs
exactly (``--mode=exact``, policy space) or with sampled comparisons and a
parametrized policy (``--mode=sampled``); every metric is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import evaluation, reference
from nash_jax import policies as policies_lib
from nash_jax import train as train_lib
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.algorithms.reward_based import table_reward_model
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.errors import ConfigError
from nash_jax.experiment import checks
from nash_jax.experiment import run as experiment_run
from nash_jax.experiment.results import Results, write_results
from nash_jax.experiment.run import seed_keys, static_settings, tile
from nash_jax.experiment.task import OutcomeConfig, RunConfig, RunPlan, Task
from nash_jax.games import (
  FEATURE_GAMES,
  GENERATORS,
  REF_POLICIES,
  Game,
  generate_game,
  load_game,
)
from nash_jax.policies import PolicyConfig
from nash_jax.settings import compose, group_of, setting

GAMES = tuple(GENERATORS) + FEATURE_GAMES + ('file',)
DTYPES = ('float64', 'float32')


@dataclasses.dataclass(frozen=True)
class GameConfig:
  """The tabular game (generated or read from a file)."""

  game: str = setting('random', 'Game family: ' + ', '.join(GAMES) + '.')
  game_file: str | None = setting(
      None, 'With --game=file: a .npy of preferences ([n, n] or [X, n, n]) '
      'or an .npz with "preferences" and optional "ref_policy", '
      '"context_weights", "features", "context_features".', str)
  game_seed: int | None = setting(
      None, 'Draw one game from this seed for all seeds (default: each seed '
      'draws its own game).', int)
  num_actions: int = setting(20, 'Responses per context, n.', minimum=2)
  num_contexts: int = setting(1, 'Contexts, X.', minimum=1)
  ref_policy: str = setting('uniform', 'Reference policy of generated '
                            'games: ' + ', '.join(REF_POLICIES) +
                            ' (Dirichlet(1)).')
  feature_dim: int = setting(16, "Dimension d of the generated games' "
                             'response and context features (used by '
                             'loglinear and mlp policies; the annotators '
                             'game draws preferences from them).', minimum=0)


TabularConfig = compose(
    'TabularConfig', (GameConfig, OutcomeConfig, AlgorithmConfig,
                      PolicyConfig, RunConfig),
    """Every setting of a tabular run: the flat composition of
    :class:`GameConfig`, :class:`~nash_jax.experiment.task.OutcomeConfig`,
    :class:`~nash_jax.algorithms.AlgorithmConfig`,
    :class:`~nash_jax.policies.PolicyConfig` and
    :class:`~nash_jax.experiment.task.RunConfig`; field names are the
    binaries' flags.""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     'policy_config': lambda self: group_of(self, PolicyConfig).replace(
         hidden_sizes=tuple(self.hidden_sizes)),
     'game_config': lambda self: group_of(self, GameConfig),
     '__module__': __name__})


@dataclasses.dataclass
class TabularInputs:
  """What validation read: the game of ``--game=file`` (or None) and,
  optionally, games and references prepared once for several runs
  (:func:`prepare`)."""

  file_game: Game | None = None
  prepared: tuple | None = None


def shares_game(config) -> bool:
  """All seeds play one game when it comes from a file or ``--game_seed``."""
  return config.game == 'file' or config.game_seed is not None


# --------------------------------------------------------------- validation

# Bytes of the temporaries of one sampled comparison per float of the run's
# dtype (responses, log-probabilities under the policy, reference and
# anchor, outcomes, gradients): about 25 floats.
FLOATS_PER_COMPARISON = 25


def memory_estimate(config, runs: int = 1) -> tuple[str, int, str]:
  """``(flag, bytes, what)``: about how much memory the largest part of a
  tabular run needs, the flag that sizes it, and a phrase saying what it
  is. ``runs``: cells of a sweep (each with all seeds).

  The exact games are ``[S, X, n, n]`` preferences (once when the seeds
  share a game; per-seed games padded to whole blocks of the trainer's
  layout, :func:`nash_jax.train.seed_layout`), built in float64 on the
  host and copied to the devices in the run's dtype, plus the reference
  solver's ``[n, n]`` temporaries; a sampled step holds
  :data:`FLOATS_PER_COMPARISON` floats per comparison of every seed
  vmapped together (``seed_block`` per device).
  """
  itemsize = np.dtype(config.dtype).itemsize
  shared = shares_game(config)
  games = 1 if shared else config.num_seeds * runs  # Sweeps keep it shared.
  if not shared:  # The trainer's layout pads blocks with copies of games.
    block = config.seed_block or checks.resolve_seed_block(
        config, False, config.num_actions).seed_block
    devices = config.num_devices or jax.device_count()
    games = max(games, len(train_lib.seed_layout(
        config.seed, config.num_seeds * runs, block, devices,
        config.num_seeds if runs > 1 else None)[0]))
  square = config.num_contexts * config.num_actions ** 2
  exact = games * square * (8 + itemsize) + 4 * square * 8
  game_what = (f'{games} game{"s" if games > 1 else ""} of '
               f'{config.num_contexts} x {config.num_actions}^2 preferences')
  if config.mode != 'sampled':
    return 'num_actions', exact, game_what
  block = config.seed_block
  if block is None:  # Not resolved yet: the default's rule.
    block = checks.resolve_seed_block(config, shared,
                                      config.num_actions).seed_block
  in_flight = min(block, config.num_seeds * runs)
  batch = (in_flight * config.batch_size * FLOATS_PER_COMPARISON *
           itemsize)
  if batch > exact:
    return 'batch_size', batch + exact, (
        f'{config.batch_size} comparisons per step for each of {in_flight} '
        'seeds in flight')
  return 'num_actions', batch + exact, game_what


def check_memory(config, runs: int = 1, limits=None) -> None:
  """Refuses a tabular run whose :func:`memory_estimate` exceeds the
  machine's memory (``limits``: :func:`~nash_jax.experiment.checks.
  memory_limits` by default).

  Raises:
    ConfigError: ``--batch_size: 1000000000 comparisons per step ... need
      about 200 GB of memory; this machine has 24 GB``.
  """
  flag, need, what = memory_estimate(config, runs)
  host, device = limits or checks.memory_limits()
  have = min(host, device) if device is not None else host
  if need > have:
    raise ConfigError(flag, f'{what} need about '
                      f'{checks.format_bytes(need)} of memory; this machine '
                      f'has {checks.format_bytes(have)} (use fewer seeds, '
                      'contexts, actions or comparisons, or --game_seed to '
                      'share one game)')


def setup_note(config, runs: int = 1) -> str | None:
  """The line printed before the reference solves when they may take more
  than a second or so (``n^3`` per context above 10^8 in all, e.g. one game
  of n = 500, or more than 1000 contexts): ``solving pi*_beta for 256
  games of n = 20000 ...``; None for small runs."""
  games = 1 if shares_game(config) else config.num_seeds
  contexts = games * config.num_contexts
  if contexts * config.num_actions ** 3 <= 10 ** 8 and contexts <= 1000:
    return None
  what = 'pi*_beta' if config.beta > 0 else 'the von Neumann winner'
  return (f'[{config.algorithm}] solving {what} for {games} '
          f'game{"s" if games > 1 else ""} of n = {config.num_actions} '
          f'({config.num_contexts} context'
          f'{"s" if config.num_contexts > 1 else ""} each) ...')


def validate(config) -> tuple:
  """The tabular checks (after the kit's shared ones): the game, its file,
  the policy, the algorithm's defaults and the memory of the run. Returns
  ``(config, TabularInputs)``.

  Raises:
    ConfigError: a flag that cannot be used, naming it.
    GameFileError: a game file that cannot be used, naming it.
  """
  checks.check_choice(config, 'game', GAMES, 'game')
  if config.ref_policy not in REF_POLICIES:
    raise ConfigError('ref_policy', f'must be one of {", ".join(REF_POLICIES)}'
                      f', got {config.ref_policy!r}')
  if config.game in FEATURE_GAMES and config.feature_dim < 1:
    raise ConfigError('feature_dim', f'--game={config.game} draws preferences '
                      f'from the features, so needs >= 1, got '
                      f'{config.feature_dim}')
  if (config.game_seed is not None and
      not 0 <= config.game_seed <= checks.MAX_SEED):
    raise ConfigError('game_seed', f'must be in [0, 2^31 - 1], got '
                      f'{config.game_seed}')
  checks.check_outputs(config)
  file_game = None
  if config.game == 'file':
    if not config.game_file:
      raise ConfigError('game_file', 'is required with --game=file')
    file_game = load_game(config.game_file, dtype=np.float64)
    config = config.replace(num_contexts=file_game.num_contexts,
                            num_actions=file_game.num_actions)
  elif config.game_file:
    raise ConfigError('game_file', f'is only used with --game=file (got '
                      f'--game={config.game})')
  if config.policy in policies_lib.FEATURE_POLICIES:
    if file_game is not None and file_game.features is None:
      raise ConfigError('policy', f'{config.policy} policies read response '
                        f'features, and {config.game_file} has none (add '
                        '"features" [X, n, d] to the .npz)')
    if file_game is None and config.feature_dim < 1:
      raise ConfigError('policy', f'{config.policy} policies read response '
                        'features; give --feature_dim >= 1')
  if config.schedule == 'cosine' and config.decay_steps is None:
    config = config.replace(decay_steps=config.num_steps)
  feature_dim = (file_game.feature_dim if file_game is not None else
                 config.feature_dim)
  policies_lib.validate_policy_config(config.policy_config())
  checks.check_outcome(config)
  alg_config = checks.resolve_algorithm(config, config.num_contexts,
                                        feature_dim, config.policy)
  config = checks.resolve_seed_block(config, shares_game(config),
                                     config.num_actions)
  check_memory(config)
  return checks.resolve_run(config, alg_config), TabularInputs(file_game)


# ------------------------------------------------------------------ inputs


@functools.lru_cache(maxsize=32)
def _game_generator(game, num_contexts, num_actions, ref_policy, dtype,
                    feature_dim):
  """The jitted, vmapped generator of a game family and size (cached, so
  that runs on games of one kind compile it once)."""
  return jax.jit(jax.vmap(lambda key: generate_game(
      key, game, num_contexts, num_actions, ref_policy, jnp.dtype(dtype),
      feature_dim)))


def build_games(config, file_game: Game | None):
  """The game(s): one shared :class:`Game`, or a batch ``[num_seeds, ...]``."""
  dtype = jnp.dtype(config.dtype)
  if file_game is not None:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), file_game)
  gen = _game_generator(config.game, config.num_contexts, config.num_actions,
                        config.ref_policy, config.dtype, config.feature_dim)
  if config.game_seed is not None:
    return jax.tree.map(lambda x: x[0],
                        gen(jax.random.PRNGKey(config.game_seed)[None]))
  game_keys, _ = seed_keys(config)
  return gen(game_keys)


def equilibria(config, games: Game, shared: bool):
  """The exact reference per game (float64 on the host): ``pi*_beta``, or a
  von Neumann winner when ``beta = 0``. Shape ``[X, n]`` or ``[S, X, n]``."""
  prefs = np.asarray(games.preferences, np.float64)
  refs = np.asarray(games.ref_policy, np.float64)
  solve = lambda p, r: reference.equilibrium(p, r, config.beta)
  if shared:
    return solve(prefs, refs)
  return np.stack([solve(p, r) for p, r in zip(prefs, refs)])


def prepare(config, file_game: Game | None = None,
            log: Callable[[str], None] = lambda line: None):
  """The games of a run and their exact references: ``(games, equilibrium)``
  (``log`` gets a line first when the solves are long, see
  :func:`setup_note`), to share between the runs of several algorithms
  (``TabularInputs(file_game, prepare(...))``)."""
  games = build_games(config, file_game)
  note = setup_note(config)
  if note:
    log(note)
  return games, equilibria(config, games, shares_game(config))


@functools.lru_cache(maxsize=64)
def _components(policy: PolicyConfig, outcome: str):
  """``hyper -> (policy, environment, reward model, values)`` of the policy
  class and the tabular environment with ``outcome`` (cached per
  structure)."""
  policy_fn = policies_lib.make_policy(policy)
  env = make_tabular_environment(outcome)
  return lambda hyper: (policy_fn, env, table_reward_model(), hyper)


def algorithm_maker(config):
  """The ``make`` function of ``config``'s algorithm (cached per structure,
  so that runs differing only in runtime values share compilations)."""
  return experiment_run.algorithm_maker(
      config.algorithm, static_settings(config.algorithm_config(),
                                        TASK.runtime_names(config)),
      _components(config.policy_config(), config.outcome))


@functools.lru_cache(maxsize=64)
def _final_log_policy(make, shared: bool):
  """Jitted ``log pi`` of every run's final state (compiled once per
  algorithm structure, not once per run)."""
  return jax.jit(jax.vmap(lambda h, state, game: evaluation.log_policy(
      evaluation.TABULAR, make(h), state, game),
      in_axes=(0, 0, None if shared else 0)))


# --------------------------------------------------------------------- run


def plan(configs, inputs: TabularInputs | None, log) -> RunPlan:
  """Every cell's seeds play the games a single run would; each run carries
  its cell's equilibrium, so that a single run and a sweep cell run the
  same program. One game for every seed stays one array (each block's win
  rates are then one matrix product)."""
  inputs = inputs or TabularInputs()
  config = configs[0]
  num_cells, num_seeds = len(configs), config.num_seeds
  shared_game = shares_game(config)
  prepared = inputs.prepared
  games = prepared[0] if prepared else build_games(config, inputs.file_game)
  solved = {}
  for c in configs:
    if c.beta not in solved:
      note = setup_note(c) if not (prepared and c is config) else None
      if note:
        log(note)
      solved[c.beta] = (prepared[1] if prepared and c is config else
                        equilibria(c, games, shared_game))
  if shared_game:
    solved = {b: np.broadcast_to(e, (num_seeds,) + e.shape)
              for b, e in solved.items()}
  dtype = jnp.dtype(config.dtype)
  equilibrium = np.concatenate([solved[c.beta] for c in configs])
  with np.errstate(divide='ignore'):
    log_eq = jnp.asarray(np.log(equilibrium), dtype)
  if not shared_game:
    games = tile(games, num_cells)
  make = algorithm_maker(config)
  hyper = {k: np.repeat(np.asarray([TASK.hyperparameters(c)[k]
                                    for c in configs], dtype), num_seeds)
           for k in TASK.hyperparameters(config)}
  _, run_keys = seed_keys(config)
  return RunPlan(make, evaluation.exact_evaluator(make),
                 tile(run_keys, num_cells), games, log_eq, hyper,
                 shared=(shared_game, False), group_size=num_seeds,
                 context=(games, equilibrium, shared_game))


def collect(configs, plan_: RunPlan, state, rows, start: float):
  """One :class:`~nash_jax.experiment.results.Results` per cell: the final
  policies ``[S, X, n]`` and the exact references."""
  games, equilibrium, shared_game = plan_.context
  final_policy = np.exp(np.asarray(_final_log_policy(
      plan_.make, shared_game)(plan_.hyper, state, games), np.float64))
  wall = time.time() - start
  num_seeds = configs[0].num_seeds
  results = []
  for i, c in enumerate(configs):
    cut = slice(i * num_seeds, (i + 1) * num_seeds)
    results.append(Results(
        c, [{k: v[cut] for k, v in row.items()} for row in rows],
        final_policy[cut], np.asarray(equilibrium[cut]), wall))
  return results


def structure(config):
  """What the cells of a sweep share: the algorithm's maker."""
  return algorithm_maker(config)


def check_sweep(cells) -> None:
  """The memory of all the cells together."""
  if len(cells) > 1:
    check_memory(cells[0][1], runs=len(cells))


TASK = Task(name='tabular', what='a tabular game', settings=TabularConfig, dtypes=DTYPES,
            validate=validate, plan=plan, collect=collect,
            write=write_results, structure=structure,
            check_sweep=check_sweep)
