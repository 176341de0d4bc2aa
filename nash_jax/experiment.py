"""One tabular experiment: settings in, result files out.

The library side of ``experiments/matrix_game.py`` (the binary only parses
flags): :func:`validate` checks every setting (and reads the game file) before
any work, :func:`run` draws the games, solves the exact references, trains
all seeds in one compiled call per evaluation chunk, and :func:`write_results`
writes the documented layout into ``output_dir`` atomically (each file goes to
a temporary name first, ``summary.json`` last).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import evaluation
from nash_jax import metrics as metrics_lib
from nash_jax import policies as policies_lib
from nash_jax import reference
from nash_jax import train as train_lib
from nash_jax.algorithms import AlgorithmConfig, ConfigError
from nash_jax.environments.tabular import ORACLES, make_tabular_environment
from nash_jax.games import (
  FEATURE_GAMES,
  GENERATORS,
  REF_POLICIES,
  Game,
  generate_game,
  load_game,
)
from nash_jax.policies import PolicyConfig

GAMES = tuple(GENERATORS) + FEATURE_GAMES + ('file',)
DTYPES = ('float64', 'float32')


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every setting of a tabular run; field names are the binary's flags."""

  algorithm: str = 'nash_mp'
  game: str = 'random'
  game_file: str | None = None
  game_seed: int | None = None
  num_actions: int = 20
  num_contexts: int = 1
  ref_policy: str = 'uniform'
  beta: float = 0.1
  eta: float | None = None
  learning_rate: float | None = None
  optimizer: str | None = None
  inner_steps: int | None = None
  inner_tolerance: float = 1e-8
  max_inner_steps: int = 100_000
  inner_eta: float | None = None
  init: str = 'ref'
  init_scale: float = 1.0
  mode: str = 'exact'
  policy: str = 'tabular'
  batch_size: int = 64
  oracle: str = 'bernoulli'
  anchor: str = 'copy'
  anchor_every: int = 100
  anchor_tau: float = 0.01
  mixture: float = 0.125
  max_grad_norm: float | None = None
  schedule: str = 'constant'
  decay_steps: int | None = None
  hidden_sizes: tuple[int, ...] = (64, 64)
  feature_dim: int = 16
  num_steps: int = 1000
  eval_every: int = 10
  num_seeds: int = 1
  seed: int = 0
  seed_block: int = 1
  num_devices: int | None = None
  dtype: str = 'float64'
  output_dir: str = 'results/matrix_game'
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  overwrite: bool = False
  tensorboard: bool = False

  def replace(self, **kwargs) -> 'ExperimentConfig':
    return dataclasses.replace(self, **kwargs)

  def algorithm_config(self) -> AlgorithmConfig:
    fields = {f.name for f in dataclasses.fields(AlgorithmConfig)}
    values = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
    return AlgorithmConfig(**values)

  def policy_config(self) -> PolicyConfig:
    return PolicyConfig(policy=self.policy, init=self.init,
                        init_scale=self.init_scale,
                        hidden_sizes=tuple(self.hidden_sizes))


MAX_SEED = 2 ** 31 - 1


def check_output_dir(path: str, flag: str = 'output_dir') -> None:
  """Refuses an output directory that could not be created or written."""
  if not path:
    raise ConfigError(flag, 'must not be empty')
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(flag, f'{path} exists and is not a directory')
  ancestor = os.path.abspath(path)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise ConfigError(flag, f'{path} cannot be created: {ancestor} is not a '
                      'directory')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise ConfigError(flag, f'{path} cannot be written: no permission in '
                      f'{ancestor}')


def _positive_int(config, flag, minimum):
  value = getattr(config, flag)
  if value < minimum:
    raise ConfigError(flag, f'must be >= {minimum}, got {value}')


def validate(config: ExperimentConfig) -> tuple[ExperimentConfig, Game | None]:
  """Checks every setting; returns the resolved config and the file's game.

  Raises:
    ConfigError: a flag that cannot be used, naming it.
    GameFileError: a game file that cannot be used, naming it.
  """
  if config.algorithm not in algorithms_lib.ALL_ALGORITHM_NAMES:
    raise ConfigError('algorithm', f'unknown algorithm {config.algorithm!r}; '
                      'expected one of '
                      f'{", ".join(algorithms_lib.ALL_ALGORITHM_NAMES)}')
  if config.game not in GAMES:
    raise ConfigError('game', f'unknown game {config.game!r}; expected one of '
                      f'{", ".join(GAMES)}')
  if config.dtype not in DTYPES:
    raise ConfigError('dtype', f'must be one of {", ".join(DTYPES)}, got '
                      f'{config.dtype!r}')
  if config.ref_policy not in REF_POLICIES:
    raise ConfigError('ref_policy', f'must be one of {", ".join(REF_POLICIES)}'
                      f', got {config.ref_policy!r}')
  for flag, minimum in (('num_steps', 1), ('eval_every', 1), ('num_seeds', 1),
                        ('num_contexts', 1), ('num_actions', 2),
                        ('seed_block', 1), ('checkpoint_every', 0),
                        ('keep_checkpoints', 1), ('feature_dim', 0)):
    _positive_int(config, flag, minimum)
  if config.game in FEATURE_GAMES and config.feature_dim < 1:
    raise ConfigError('feature_dim', f'--game={config.game} draws preferences '
                      f'from the features, so needs >= 1, got '
                      f'{config.feature_dim}')
  if not 0 <= config.seed <= MAX_SEED - config.num_seeds + 1:
    raise ConfigError('seed', f'must be in [0, 2^31 - num_seeds], got '
                      f'{config.seed}')
  if config.game_seed is not None and not 0 <= config.game_seed <= MAX_SEED:
    raise ConfigError('game_seed', f'must be in [0, 2^31 - 1], got '
                      f'{config.game_seed}')
  check_output_dir(config.output_dir)
  if config.tensorboard:
    try:
      import tensorboardX  # noqa: F401
    except ImportError:
      raise ConfigError('tensorboard', 'needs the tensorboardX package: pip '
                        'install "nash_jax[tensorboard]"') from None
  if config.num_devices is not None and not (
      1 <= config.num_devices <= jax.device_count()):
    raise ConfigError('num_devices', f'must be in [1, {jax.device_count()}] '
                      f'(the devices JAX sees), got {config.num_devices}')
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
  if config.oracle not in ORACLES:
    raise ConfigError('oracle', f'unknown oracle {config.oracle!r}; expected '
                      f'one of {", ".join(ORACLES)}')
  alg_config = algorithms_lib.resolve_config(
      config.algorithm, config.algorithm_config(), config.num_contexts,
      feature_dim, config.policy)
  algorithms_lib.validate_config(config.algorithm, alg_config, config.policy)
  config = config.replace(**{
      k: getattr(alg_config, k) for k in ('eta', 'learning_rate', 'inner_eta',
                                          'inner_steps', 'optimizer')})
  try:
    checkpoint_lib.Checkpointer(config.output_dir, dataclasses.asdict(
        config)).check(config.overwrite)
  except checkpoint_lib.CheckpointMismatch as e:
    raise ConfigError('overwrite', str(e)) from None
  return config, file_game


def seed_keys(config: ExperimentConfig):
  """Per-seed ``(game_key, run_key)``: seed ``s`` uses ``PRNGKey(s)`` split."""
  seeds = np.arange(config.seed, config.seed + config.num_seeds)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds)
  return keys[:, 0], keys[:, 1]


def shares_game(config: ExperimentConfig) -> bool:
  """All seeds play one game when it comes from a file or ``--game_seed``."""
  return config.game == 'file' or config.game_seed is not None


@functools.lru_cache(maxsize=32)
def _game_generator(game, num_contexts, num_actions, ref_policy, dtype,
                    feature_dim):
  """The jitted, vmapped generator of a game family and size (cached, so
  that runs on games of one kind compile it once)."""
  return jax.jit(jax.vmap(lambda key: generate_game(
      key, game, num_contexts, num_actions, ref_policy, jnp.dtype(dtype),
      feature_dim)))


def build_games(config: ExperimentConfig, file_game: Game | None):
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


def equilibria(config: ExperimentConfig, games: Game, shared: bool):
  """The exact reference per game (float64 on the host): ``pi*_beta``, or a
  von Neumann winner when ``beta = 0``. Shape ``[X, n]`` or ``[S, X, n]``."""
  prefs = np.asarray(games.preferences, np.float64)
  refs = np.asarray(games.ref_policy, np.float64)
  solve = lambda p, r: reference.equilibrium(p, r, config.beta)
  if shared:
    return solve(prefs, refs)
  return np.stack([solve(p, r) for p, r in zip(prefs, refs)])


def prepare(config: ExperimentConfig, file_game: Game | None = None):
  """The games of a run and their exact references: ``(games, equilibrium)``."""
  games = build_games(config, file_game)
  return games, equilibria(config, games, shares_game(config))


@dataclasses.dataclass
class Results:
  config: ExperimentConfig
  rows: list          # evaluation rows, dicts of [S] arrays
  final_policy: np.ndarray   # [S, X, n]
  equilibrium: np.ndarray    # [S, X, n]
  wall_time: float


# Numeric hyperparameters passed to the compiled step as runtime values, so
# that a sweep over them is one compiled call (and a single run is the same
# program as the matching cell of a sweep).
SWEEPABLE = ('beta', 'eta', 'learning_rate', 'inner_eta', 'anchor_tau',
             'mixture')


def hyperparameters(config: ExperimentConfig) -> dict:
  """The run's values of :data:`SWEEPABLE` (those that are set)."""
  return {k: getattr(config, k) for k in SWEEPABLE
          if getattr(config, k) is not None}


@functools.lru_cache(maxsize=64)
def _maker(name: str, structure: AlgorithmConfig, policy: PolicyConfig,
           oracle: str):
  """``make(hyper) -> Algorithm`` for the config ``structure`` (whose swept
  fields are placeholders) with the swept values ``hyper`` (tracers), the
  policy class and the tabular environment with ``oracle``."""
  policy_fn = policies_lib.make_policy(policy)
  env = make_tabular_environment(oracle)
  return lambda hyper: algorithms_lib.make_algorithm(
      name, structure.replace(**hyper), policy_fn, env)


def algorithm_maker(config: ExperimentConfig):
  """The ``make`` function of ``config``'s algorithm (cached per structure,
  so that runs differing only in swept values share compilations)."""
  structure = config.algorithm_config().replace(
      **{k: 'swept' for k in hyperparameters(config)})
  return _maker(config.algorithm, structure, config.policy_config(),
                config.oracle)


@functools.lru_cache(maxsize=64)
def _final_log_policy(make, shared: bool):
  """Jitted ``log pi`` of every run's final state (compiled once per
  algorithm structure, not once per run)."""
  return jax.jit(jax.vmap(lambda h, state, game: evaluation.log_policy(
      evaluation.TABULAR, make(h), state, game),
      in_axes=(0, 0, None if shared else 0)))


def run(config: ExperimentConfig, file_game: Game | None = None,
        log: Callable[[str], None] = print,
        query_budget: int | None = None, prepared=None) -> Results:
  """Runs a validated, resolved config; see the module docstring.

  Args:
    config: a config returned by :func:`validate`.
    file_game: the game read by :func:`validate` for ``--game=file``.
    log: where progress lines go.
    query_budget: if set, stop at the first evaluation where every seed has
      used at least this many preference queries (``num_steps`` stays the
      cap).
    prepared: ``(games, equilibrium)`` from :func:`prepare`, to share the
      games and their exact solutions between several algorithms.
  """
  return run_sweep([config], config.output_dir, file_game, log, query_budget,
                   prepared)[0]


def parse_sweep(specs: list[str]) -> dict[str, list[float]]:
  """``['beta=0.1,0.01', 'learning_rate=0.1,1']`` -> ``{name: values}``.

  Raises:
    ConfigError: naming ``--sweep`` for a malformed entry, a name outside
      :data:`SWEEPABLE`, a repeated name or a value that is not a number.
  """
  grid = {}
  for spec in specs:
    name, sep, values = spec.partition('=')
    name = name.strip()
    if not sep or not values.strip():
      raise ConfigError('sweep', f'expected NAME=V1,V2,..., got {spec!r}')
    if name not in SWEEPABLE:
      raise ConfigError('sweep', f'cannot sweep {name!r}; sweepable: '
                        f'{", ".join(SWEEPABLE)}')
    if name in grid:
      raise ConfigError('sweep', f'{name} is swept twice')
    try:
      grid[name] = [float(v) for v in values.split(',')]
    except ValueError:
      raise ConfigError('sweep', f'{name} values must be numbers, got '
                        f'{values!r}') from None
  return grid


def cell_name(values: dict) -> str:
  """A sweep cell's directory name, e.g. ``beta=0.1_learning_rate=0.01``."""
  return '_'.join(f'{k}={v:g}' for k, v in values.items())


def sweep_cells(config: ExperimentConfig, grid: dict[str, list[float]]):
  """The cells of a grid (Cartesian product, in the order given):
  ``[(values, config)]`` with each cell's output in
  ``config.output_dir/<cell_name>``; configs not yet validated."""
  cells = [{}]
  for name, values in grid.items():
    cells = [dict(cell, **{name: v}) for cell in cells for v in values]
  return [(cell, config.replace(output_dir=os.path.join(
      config.output_dir, cell_name(cell)), checkpoint_every=0, **cell))
          for cell in cells]


def validate_sweep(config: ExperimentConfig, grid: dict[str, list[float]]):
  """Validates every cell of a sweep; returns ``(cells, file_game)`` with
  ``cells = [(values, resolved config)]``.

  Each cell is resolved on its own values (an unswept default such as the
  learning rate follows a swept ``beta``), and every cell must keep the
  same structure (the sweep is one compiled program).
  """
  file_game = None
  cells = []
  for values, cell in sweep_cells(config, grid):
    try:
      resolved, file_game = validate(cell)
    except ConfigError as e:
      raise ConfigError(e.flag, f'{str(e).partition(": ")[2]} (sweep cell '
                        f'{cell_name(values)})') from None
    for name in grid:
      if getattr(resolved, name) is None:
        raise ConfigError('sweep', f'{config.algorithm} has no {name}')
    cells.append((values, resolved))
  structures = {algorithm_maker(c) for _, c in cells}
  if len(structures) > 1:
    raise ConfigError('sweep', 'cells differ in more than swept values')
  try:
    checkpoint_lib.Checkpointer(config.output_dir, sweep_checkpoint_config(
        [c for _, c in cells])).check(config.overwrite)
  except checkpoint_lib.CheckpointMismatch as e:
    raise ConfigError('overwrite', str(e)) from None
  return cells, file_game


def sweep_checkpoint_config(configs: list[ExperimentConfig]) -> dict:
  """What a sweep's checkpoints are checked against: every cell's config
  (less the settings a resumed run may change, such as ``num_steps``)."""
  if len(configs) == 1:
    return dataclasses.asdict(configs[0])
  return {'cells': [{k: v for k, v in dataclasses.asdict(c).items()
                     if k not in checkpoint_lib.RESUMABLE_CHANGES}
                    for c in configs]}


def _tile(tree, times: int):
  """Repeats the leading (seed) axis: ``[S, ...] -> [times * S, ...]``."""
  return jax.tree.map(lambda x: np.concatenate([np.asarray(x)] * times),
                      tree)


def run_sweep(configs: list[ExperimentConfig], output_dir: str,
              file_game: Game | None = None,
              log: Callable[[str], None] = print,
              query_budget: int | None = None,
              prepared=None, checkpoint_every: int | None = None
              ) -> list[Results]:
  """Runs several validated configs that differ only in :data:`SWEEPABLE`
  values (the cells of a sweep), every cell and seed in one compiled call.

  Each cell's seeds play the same games as a single run would; a cell's
  result equals the single run of its config bit for bit with the default
  ``seed_block = 1``. Checkpoints of the whole sweep go to
  ``output_dir/checkpoints`` every ``checkpoint_every`` steps (default: the
  first config's); ``metrics.csv`` is streamed only for a single config.
  Returns one :class:`Results` per config.
  """
  start = time.time()
  if jax.process_index() != 0:
    log = lambda line: None
  config = configs[0]
  num_cells, num_seeds = len(configs), config.num_seeds
  shared = shares_game(config) and num_cells == 1
  games = prepared[0] if prepared else build_games(config, file_game)
  solved = {}
  for c in configs:
    if c.beta not in solved:
      solved[c.beta] = (prepared[1] if prepared and c is config else
                        equilibria(c, games, shares_game(config)))
  if shares_game(config) and not shared:
    games = jax.tree.map(lambda x: np.broadcast_to(
        np.asarray(x), (num_seeds,) + x.shape), games)
    solved = {b: np.broadcast_to(e, (num_seeds,) + e.shape)
              for b, e in solved.items()}
  dtype = jnp.dtype(config.dtype)
  equilibrium = np.concatenate([solved[c.beta] for c in configs]) \
      if not shared else solved[config.beta]
  with np.errstate(divide='ignore'):
    log_eq = jnp.asarray(np.log(equilibrium), dtype)
  if not shared:
    games = _tile(games, num_cells)
  make = algorithm_maker(config)
  hyper = {k: np.repeat(np.asarray([hyperparameters(c)[k] for c in configs],
                                   dtype), num_seeds)
           for k in hyperparameters(config)}
  _, run_keys = seed_keys(config)
  run_keys = _tile(run_keys, num_cells)
  single = num_cells == 1
  writer = (_MetricsStream(config)
            if jax.process_index() == 0 and single else None)
  checkpointer = None
  resume = None
  if checkpoint_every is None:
    checkpoint_every = config.checkpoint_every
  if checkpoint_every > 0:
    checkpointer = checkpoint_lib.Checkpointer(
        output_dir, sweep_checkpoint_config(configs), config.keep_checkpoints)
    template = jax.eval_shape(
        jax.vmap(lambda h, k, g: make(h).init(k, g),
                 in_axes=(0, 0, None if shared else 0)),
        hyper, run_keys, games)
    resume = checkpointer.restore(template)
    if resume is not None:
      log(f'[{config.algorithm}] resuming from step {resume[2]} '
          f'({checkpointer.path})')
  first_step = 0 if resume is None else resume[2]
  clock = {'t': time.time(), 'step': first_step}

  boards = _TensorBoard(config) if (
      config.tensorboard and jax.process_index() == 0 and single) else None

  def on_eval(row):
    step = int(row['step'][0])
    if boards:
      boards.add(row)
    now = time.time()
    rate = (step - clock['step']) / max(now - clock['t'], 1e-9)
    left = (config.num_steps - step) / rate if rate > 0 else float('nan')
    log(f'[{config.algorithm}] step {step:>7d}/{config.num_steps}  '
        f'queries {int(np.mean(row["preference_queries"])):>9d}  '
        f'kl_to_equilibrium {np.mean(row["kl_to_equilibrium"]):.3e}  '
        f'duality_gap {np.mean(row["duality_gap"]):.3e}  '
        f'exploitability {np.mean(row["exploitability"]):.3e}  '
        f'{rate:8.0f} steps/s  ~{left:.0f}s left  ({now - start:.1f}s)')
    if writer:
      writer.append(row)

  saved = {'done': first_step}

  def on_chunk(get_state, rows, done):
    period = checkpoint_every
    if checkpointer and done // period > saved['done'] // period:
      checkpointer.save(done, get_state(), rows)
      saved['done'] = done

  if writer:
    writer.start(resume[1] if resume else [])
  state, rows = train_lib.train(
      make, evaluation.exact_evaluator(make), run_keys, games, log_eq,
      hyper=hyper, num_steps=config.num_steps, eval_every=config.eval_every,
      shared=shared, first_seed=config.seed,
      seed_block=config.seed_block, on_eval=on_eval, on_chunk=on_chunk,
      mesh=train_lib.seed_mesh(config.num_devices),
      resume=resume,
      until=None if query_budget is None else
      lambda row: np.min(row['preference_queries']) >= query_budget)
  if writer:
    writer.close()
  if boards:
    boards.close()
  if checkpointer:
    # The end of a run is always saved, so that rerunning it is instant.
    done = int(rows[-1]['step'][0])
    if done != saved['done']:
      checkpointer.save(done, state, rows)
    checkpointer.close()
  final_policy = np.exp(np.asarray(
      _final_log_policy(make, shared)(hyper, state, games), np.float64))
  if shared:
    equilibrium = np.broadcast_to(equilibrium, (num_seeds,) + equilibrium.shape)
  wall = time.time() - start
  results = []
  for i, c in enumerate(configs):
    cut = slice(i * num_seeds, (i + 1) * num_seeds)
    results.append(Results(
        c, [{k: v[cut] for k, v in row.items()} for row in rows],
        final_policy[cut], np.asarray(equilibrium[cut]), wall))
  return results


def write_sweep_table(cells, results: list[Results], output_dir: str) -> str:
  """Writes ``output_dir/sweep.csv``: one row per cell with its swept
  values, the mean over seeds of each final metric and the median final
  ``kl_to_equilibrium``; returns the path."""
  path = os.path.join(output_dir, 'sweep.csv')
  if jax.process_index() != 0:
    return path
  records = []
  for (values, _), res in zip(cells, results):
    s = summary(res)
    kl = [r['kl_to_equilibrium'] for r in s['final']]
    records.append({'cell': cell_name(values), **values,
                    'num_seeds': res.config.num_seeds, **s['mean'],
                    'median_kl_to_equilibrium': float(np.median(kl))})

  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(records[0]))
      writer.writeheader()
      writer.writerows(records)
  os.makedirs(output_dir, exist_ok=True)
  _atomic_write(path, write)
  return path


def metric_columns(rows) -> list[str]:
  """Column order of ``metrics.csv`` after ``seed``."""
  first = ['step', 'preference_queries'] + list(metrics_lib.METRICS)
  return first + sorted(k for k in rows[0] if k not in first)


def _csv_records(rows, config: ExperimentConfig, columns):
  """``metrics.csv`` records of evaluation rows, one per seed and row."""
  for row in rows:
    for i in range(config.num_seeds):
      values = [np.asarray(row[c][i]).item() for c in columns]
      yield [config.seed + i] + [repr(v) if isinstance(v, float) else v
                                 for v in values]


class _MetricsStream:
  """Grows ``metrics.csv`` by one evaluation at a time during a run.

  On a resume the file is rewritten from the checkpoint's rows, so rows of
  the killed run after its last checkpoint are dropped, not duplicated. An
  older ``summary.json`` is removed first: a directory without it is not a
  finished result.
  """

  def __init__(self, config: ExperimentConfig):
    self.config = config
    self.path = os.path.join(config.output_dir, 'metrics.csv')
    self.file = None
    self.columns = None

  def start(self, rows):
    os.makedirs(self.config.output_dir, exist_ok=True)
    stale = os.path.join(self.config.output_dir, 'summary.json')
    if os.path.exists(stale):
      os.remove(stale)
    self.file = open(self.path, 'w', newline='')
    self.writer = csv.writer(self.file)
    for row in rows:
      self.append(row)

  def append(self, row):
    if self.file is None:
      return
    if self.columns is None:
      self.columns = metric_columns([row])
      self.writer.writerow(['seed'] + self.columns)
    self.writer.writerows(_csv_records([row], self.config, self.columns))
    self.file.flush()

  def close(self):
    if self.file is not None:
      self.file.close()
      self.file = None


class _TensorBoard:
  """One TensorBoard run per seed, ``output_dir/tensorboard/seed_<s>``, so
  that seeds are separate curves; every metric column is a scalar against
  the step."""

  def __init__(self, config: ExperimentConfig):
    from tensorboardX import SummaryWriter
    root = os.path.join(config.output_dir, 'tensorboard')
    self.seeds = range(config.seed, config.seed + config.num_seeds)
    self.writers = [SummaryWriter(os.path.join(root, f'seed_{s}'))
                    for s in self.seeds]

  def add(self, row):
    step = int(row['step'][0])
    for name in metric_columns([row])[1:]:
      for i, writer in enumerate(self.writers):
        writer.add_scalar(name, float(row[name][i]), step)

  def close(self):
    for writer in self.writers:
      writer.close()


def summary(results: Results) -> dict:
  """Final metrics per seed and their mean over seeds."""
  last = results.rows[-1]
  columns = metric_columns(results.rows)
  seeds = range(results.config.seed,
                results.config.seed + results.config.num_seeds)
  per_seed = [{'seed': s, **{c: float(last[c][i]) for c in columns}}
              for i, s in enumerate(seeds)]
  mean = {c: float(np.mean(last[c])) for c in columns}
  return {'algorithm': results.config.algorithm, 'final': per_seed,
          'mean': mean, 'wall_time_s': results.wall_time}


def _json_safe(obj):
  """NaN and infinities become ``null`` so that the JSON is standard."""
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  return obj


def _atomic_write(path, write: Callable):
  tmp = path + '.tmp'
  write(tmp)
  os.replace(tmp, path)


def write_results(results: Results, output_dir: str | None = None) -> None:
  """Writes config.json, metrics.csv, final_policy.npy, equilibrium.npy,
  manifest.json and summary.json (last) into ``output_dir``; only process 0
  writes."""
  if jax.process_index() != 0:
    return
  output_dir = output_dir or results.config.output_dir
  os.makedirs(output_dir, exist_ok=True)
  join = lambda name: os.path.join(output_dir, name)
  # An older summary.json would mark half-rewritten files as a result.
  if os.path.exists(join('summary.json')):
    os.remove(join('summary.json'))

  def write_json(obj):
    def write(tmp):
      with open(tmp, 'w') as f:
        json.dump(_json_safe(obj), f, indent=2, sort_keys=True,
                  allow_nan=False)
        f.write('\n')
    return write

  _atomic_write(join('config.json'),
                write_json(dataclasses.asdict(results.config)))
  columns = metric_columns(results.rows)

  def write_csv(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['seed'] + columns)
      writer.writerows(_csv_records(results.rows, results.config, columns))

  _atomic_write(join('metrics.csv'), write_csv)
  for name, array in (('final_policy.npy', results.final_policy),
                      ('equilibrium.npy', results.equilibrium)):
    def write_npy(tmp, array=array):
      with open(tmp, 'wb') as f:
        np.save(f, array)
    _atomic_write(join(name), write_npy)
  _atomic_write(join('manifest.json'), write_json(manifest(results)))
  _atomic_write(join('summary.json'), write_json(summary(results)))


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, timeout=10,
                         capture_output=True, text=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(results: Results) -> dict:
  """Where and with what a run ran: code version, library versions, devices,
  wall time and peak memory."""
  from importlib import metadata
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'chex', 'orbax-checkpoint',
               'numpy', 'scipy'):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  device_peak = None
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') \
      else None
  if stats and 'peak_bytes_in_use' in stats:
    device_peak = int(stats['peak_bytes_in_use'])
  return {
      'git_commit': _git_commit(),
      'versions': versions,
      'python': sys.version.split()[0],
      'device_kind': devices[0].device_kind,
      'platform': devices[0].platform,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'wall_time_s': results.wall_time,
      'peak_host_rss_bytes': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss * 1024,
      'peak_device_bytes': device_peak,
  }


def format_table(results: Results) -> str:
  """The final table printed by the binary: one line per seed, then the mean."""
  s = summary(results)
  cols = ['preference_queries'] + list(metrics_lib.METRICS)
  header = f'{"seed":>6} ' + ' '.join(f'{c:>20}' for c in cols)
  lines = [header]
  for row in s['final'] + [{'seed': 'mean', **s['mean']}]:
    cells = []
    for c in cols:
      v = row[c]
      cells.append(f'{v:>20.0f}' if c == 'preference_queries' else
                   f'{v:>20.4e}')
    lines.append(f'{row["seed"]!s:>6} ' + ' '.join(cells))
  return '\n'.join(lines)
