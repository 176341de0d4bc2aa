"""Settings of a tabular experiment and their validation (the first stage
of :mod:`nash_jax.experiment`).

The settings are declared once, in groups (DESIGN.md: a composed schema):
:class:`GameConfig` (the game and its oracle),
:class:`~nash_jax.algorithms.AlgorithmConfig`,
:class:`~nash_jax.policies.PolicyConfig` and :class:`RunConfig` (seeds,
steps, devices, outputs). :class:`ExperimentConfig` is their composition
with flat field names, which are the binaries' flags
(``experiments/common.py`` generates the flags from these fields).
:func:`validate` checks every setting, and reads the game file, before any
work.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import policies as policies_lib
from nash_jax import reference
from nash_jax import seed_blocks as seed_blocks_lib
from nash_jax import sft as sft_lib
from nash_jax import sharding as sharding_lib
from nash_jax import train as train_lib
from nash_jax.algorithms import AlgorithmConfig, ConfigError
from nash_jax.environments.tabular import ORACLES
from nash_jax.environments.tokens import (
  ANNOTATORS,
  TokenEnvSpec,
  check_spec,
  model_vocab_size,
)
from nash_jax.games import (
  FEATURE_GAMES,
  GENERATORS,
  REF_POLICIES,
  Game,
  load_game,
)
from nash_jax.policies import PolicyConfig
from nash_jax.policies.transformer import (
  TransformerConfig,
  init_params,
  logical_axes,
  validate_transformer_config,
)
from nash_jax.settings import compose, group_of, setting, settings_of

GAMES = tuple(GENERATORS) + FEATURE_GAMES + ('file',)
DTYPES = ('float64', 'float32')


@dataclasses.dataclass(frozen=True)
class GameConfig:
  """The tabular game (generated or read from a file) and its oracle."""

  game: str = setting('random', 'Game family: ' + ', '.join(GAMES) + '.')
  game_file: str | None = setting(
      None, 'With --game=file: a .npy of preferences ([n, n] or [X, n, n]) '
      'or an .npz with "preferences" and optional "ref_policy", '
      '"context_weights", "features", "context_features".', str)
  game_seed: int | None = setting(
      None, 'Draw one game from this seed for all seeds (default: each seed '
      'draws its own game).', int)
  num_actions: int = setting(20, 'Responses per context, n.')
  num_contexts: int = setting(1, 'Contexts, X.')
  ref_policy: str = setting('uniform', 'Reference policy of generated '
                            'games: ' + ', '.join(REF_POLICIES) +
                            ' (Dirichlet(1)).')
  feature_dim: int = setting(16, "Dimension d of the generated games' "
                             'response and context features (used by '
                             'loglinear and mlp policies; the annotators '
                             'game draws preferences from them).')


@dataclasses.dataclass(frozen=True)
class OracleConfig:
  """How preference queries are answered."""

  oracle: str = setting('bernoulli', "Sampled mode: bernoulli (o ~ "
                        "Bernoulli(P(y > y'))) or probability (o = P(y > "
                        "y')).")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Seeds, steps, devices, precision and outputs of a run."""

  algorithm: str = setting('nash_mp', 'The algorithm.', flag=False)
  num_steps: int = setting(1000, 'Steps (outer steps for proximal_point) '
                           'per seed.')
  eval_every: int = setting(10, 'Steps between evaluations.')
  num_seeds: int = setting(1, 'Seeds run in one vmapped call: --seed, '
                           '--seed+1, ...')
  seed: int = setting(0, 'First seed.')
  seed_block: int | None = setting(
      None, 'Seeds vmapped together (blocks are mapped over in one compiled '
      'call); seed i is bit-identical across --num_seeds for a fixed block. '
      'Default: chosen by nash_jax.seed_blocks from the backend, the game '
      'kind (one game shared by all seeds with --game_seed or --game=file), '
      '--mode and --num_actions, never from --num_seeds; config.json '
      'records the block used.', int)
  num_devices: int | None = setting(None, 'Devices the seed axis is sharded '
                                    'over (default: all, on every host).',
                                    int)
  dtype: str = setting('float64', 'Floating point type: ' +
                       ', '.join(DTYPES) + ' (experiments.lm: also bfloat16, '
                       'for the transformer only).')
  output_dir: str = setting('results/matrix_game', 'Where results are '
                            'written.')
  checkpoint_every: int = setting(1000, 'Steps between checkpoints in '
                                  'OUTPUT_DIR/checkpoints (0: none). '
                                  'Rerunning the same command resumes.')
  keep_checkpoints: int = setting(3, 'Checkpoints kept (the newest).')
  overwrite: bool = setting(False, 'Delete checkpoints of a run with other '
                            'settings (or any checkpoints) and start over.')
  tensorboard: bool = setting(False, 'Also write TensorBoard event files, '
                              'one run per seed, in '
                              'OUTPUT_DIR/tensorboard/seed_<s> (needs '
                              'tensorboardX).')
  stop_on_divergence: bool = setting(
      False, 'Stop at the first evaluation where some seed has diverged '
      '(kl_to_equilibrium inf or NaN); the results end there.')


ExperimentConfig = compose(
    'ExperimentConfig', (GameConfig, OracleConfig, AlgorithmConfig,
                         PolicyConfig, RunConfig),
    """Every setting of a tabular run: the flat composition of
    :class:`GameConfig`, :class:`OracleConfig`,
    :class:`~nash_jax.algorithms.AlgorithmConfig`,
    :class:`~nash_jax.policies.PolicyConfig` and :class:`RunConfig`; field
    names are the binaries' flags.""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     'policy_config': lambda self: group_of(self, PolicyConfig).replace(
         hidden_sizes=tuple(self.hidden_sizes)),
     'game_config': lambda self: group_of(self, GameConfig),
     '__module__': __name__})


MAX_SEED = 2 ** 31 - 1


def check_output_dir(path: str, flag: str = 'output_dir') -> None:
  """Refuses an output directory that could not be created or written,
  by creating it and writing a probe file there (both removed again, so
  that a refusal leaves nothing behind)."""
  if not path:
    raise ConfigError(flag, 'must not be empty')
  if os.path.islink(path) and not os.path.exists(path):
    raise ConfigError(flag, f'{path} is a symbolic link to '
                      f'{os.readlink(path)}, which does not exist')
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(flag, f'{path} exists and is not a directory')
  ancestor = os.path.abspath(path)
  while not os.path.lexists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise ConfigError(flag, f'{path} cannot be created: {ancestor} is not a '
                      'directory')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise ConfigError(flag, f'{path} cannot be written: no permission in '
                      f'{ancestor}')
  try:
    probe_writable(path)
  except OSError as e:
    raise ConfigError(flag, f'{path} cannot be written: '
                      f'{e.strerror or e}') from None


def probe_writable(path: str) -> None:
  """Creates ``path`` (and missing parents), writes and removes a probe
  file in it, then removes the directories it created.

  Raises:
    OSError: what the file system said.
  """
  missing, head = [], os.path.abspath(path)
  while not os.path.lexists(head):
    missing.append(head)
    head = os.path.dirname(head)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write_probe_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('probe\n')
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  finally:
    for directory in missing:  # Deepest first.
      try:
        os.rmdir(directory)
      except OSError:
        pass


def check_x64(dtype: str) -> None:
  """Refuses float64 when JAX computes in float32 (x64 mode off), which
  would record ``"dtype": "float64"`` for float32 results.

  Raises:
    ConfigError: naming ``--dtype`` and the two ways out.
  """
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ConfigError('dtype', "float64 needs JAX's x64 mode: call "
                      "jax.config.update('jax_enable_x64', True) before any "
                      'array is made (the binaries do), or use float32')


def _positive_int(config, flag, minimum):
  value = getattr(config, flag)
  if value is not None and value < minimum:  # None: a default to resolve.
    raise ConfigError(flag, f'must be >= {minimum}, got {value}')


def resolve_seed_block(config, shared_game: bool, num_actions: int | None,
                       language_model: bool = False):
  """``config`` with ``seed_block`` set: as given, or (None) the block of
  :func:`nash_jax.seed_blocks.default_seed_block` for the backend the seeds
  run on, the game kind (``shared_game``: one game for every seed), the
  mode, ``num_actions`` (n; None where the rule does not read it) and the
  contexts ``config.num_contexts``. A single run and a sweep of the same
  settings resolve the same block, so seed ``i`` of the sweep stays
  bit-identical to its single run."""
  if config.seed_block is not None:
    return config
  return config.replace(seed_block=seed_blocks_lib.default_seed_block(
      jax.devices()[0].platform, shared_game, num_actions,
      getattr(config, 'mode', 'sampled'), language_model,
      num_contexts=getattr(config, 'num_contexts', None) or 1))


def _check_dtype(config, dtypes) -> None:
  if config.dtype not in dtypes:
    raise ConfigError('dtype', f'must be one of {", ".join(dtypes)}, got '
                      f'{config.dtype!r}')
  check_x64(config.dtype)


def _check_seed(config) -> None:
  if not 0 <= config.seed <= MAX_SEED - config.num_seeds + 1:
    raise ConfigError('seed', f'must be in [0, 2^31 - num_seeds], got '
                      f'{config.seed}')


def _check_outputs(config) -> None:
  """The run's outputs: a writable directory, TensorBoard if asked for, and
  devices that exist."""
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


def _resolved(config, alg_config, fields):
  """``config`` with the algorithm's resolved defaults (``fields`` of
  ``alg_config``), after the last checks: ``beta`` within the reference
  solver's reach, and checkpoints in the output directory that this run
  may resume."""
  if reference.check_beta(config.beta):
    raise ConfigError('beta', reference.check_beta(config.beta))
  config = config.replace(**{k: getattr(alg_config, k) for k in fields})
  try:
    checkpoint_lib.Checkpointer(config.output_dir, dataclasses.asdict(
        config)).check(config.overwrite, config.num_steps)
  except checkpoint_lib.CheckpointMismatch as e:
    raise ConfigError(e.flag, str(e)) from None
  return config


# Bytes of the temporaries of one sampled comparison per float of the run's
# dtype (responses, log-probabilities under the policy, reference and
# anchor, outcomes, gradients): about 25 floats.
FLOATS_PER_COMPARISON = 25
# Integer settings above this are refused before any work (sizes, seeds and
# step counts far beyond any machine).
MAX_INT = 2 ** 31 - 1


def _check_int_sizes(config) -> None:
  """Refuses integer settings beyond :data:`MAX_INT` (``--seed_block=10**20``
  would fail deep inside NumPy after work has started)."""
  for field in settings_of(type(config)):
    value = getattr(config, field.name)
    if (field.metadata['kind'] is int and isinstance(value, int) and
        abs(value) > MAX_INT):
      raise ConfigError(field.name, f'{value} is too large (at most '
                        f'2^31 - 1)')


def memory_limits() -> tuple[int, int | None]:
  """``(host bytes, device bytes or None)``: the machine's physical memory
  and, on an accelerator, the memory of the devices JAX sees."""
  host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    return host, None
  stats = devices[0].memory_stats() or {}
  limit = stats.get('bytes_limit')
  return host, None if limit is None else int(limit) * len(devices)


def memory_estimate(config, runs: int = 1) -> tuple[str, int, str]:
  """``(flag, bytes, what)``: about how much memory the largest part of a
  tabular run needs, the flag that sizes it, and a phrase saying what it
  is. ``runs``: cells of a sweep (each with all seeds).

  The exact games are ``[S, X, n, n]`` preferences (once when the seeds
  share a game; per-seed games padded to whole blocks of the trainer's
  layout, :func:`nash_jax.train.seed_layout`), built in float64 on the host
  and copied to the devices in the run's dtype, plus the reference solver's ``[n, n]`` temporaries; a
  sampled step holds :data:`FLOATS_PER_COMPARISON` floats per comparison
  of every seed vmapped together (``seed_block`` per device).
  """
  itemsize = np.dtype(config.dtype).itemsize
  shared = config.game == 'file' or config.game_seed is not None
  games = 1 if shared else config.num_seeds * runs  # Sweeps keep it shared.
  if not shared:  # The trainer's layout pads blocks with copies of games.
    block = config.seed_block or resolve_seed_block(
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
    block = resolve_seed_block(config, shared, config.num_actions).seed_block
  in_flight = min(block, config.num_seeds * runs)
  batch = (in_flight * config.batch_size * FLOATS_PER_COMPARISON *
           itemsize)
  if batch > exact:
    return 'batch_size', batch + exact, (
        f'{config.batch_size} comparisons per step for each of {in_flight} '
        'seeds in flight')
  return 'num_actions', batch + exact, game_what


def format_bytes(n: float) -> str:
  """``2.04e11 -> '204 GB'`` (decimal units, 3 significant digits)."""
  for unit in ('bytes', 'kB', 'MB', 'GB', 'TB', 'PB'):
    if n < 1000 or unit == 'PB':
      return f'{n:.3g} {unit}'
    n /= 1000
  return f'{n:.3g} PB'


def check_memory(config, runs: int = 1, limits=None) -> None:
  """Refuses a tabular run whose :func:`memory_estimate` exceeds the
  machine's memory (``limits``: :func:`memory_limits` by default).

  Raises:
    ConfigError: ``--batch_size: 1000000000 comparisons per step ... need
      about 200 GB of memory; this machine has 24 GB``.
  """
  flag, need, what = memory_estimate(config, runs)
  host, device = limits or memory_limits()
  have = min(host, device) if device is not None else host
  if need > have:
    raise ConfigError(flag, f'{what} need about {format_bytes(need)} of '
                      f'memory; this machine has {format_bytes(have)} '
                      '(use fewer seeds, contexts, actions or comparisons, '
                      'or --game_seed to share one game)')


def setup_note(config, runs: int = 1) -> str | None:
  """The line printed before the reference solves when they may take more
  than a second or so (``n^3`` per context above 10^8 in all, e.g. one game
  of n = 500, or more than 1000 contexts): ``solving pi*_beta for 256
  games of n = 20000 ...``; None for small runs."""
  shared = config.game == 'file' or config.game_seed is not None
  games = 1 if shared else config.num_seeds
  contexts = games * config.num_contexts
  if contexts * config.num_actions ** 3 <= 10 ** 8 and contexts <= 1000:
    return None
  what = 'pi*_beta' if config.beta > 0 else 'the von Neumann winner'
  return (f'[{config.algorithm}] solving {what} for {games} '
          f'game{"s" if games > 1 else ""} of n = {config.num_actions} '
          f'({config.num_contexts} context'
          f'{"s" if config.num_contexts > 1 else ""} each) ...')


# Settings whose default the algorithm derives (mostly from beta).
DERIVED = ('eta', 'learning_rate', 'inner_eta', 'inner_steps', 'optimizer')


def resolve_algorithm(config, num_contexts: int, feature_dim: int,
                      policy: str):
  """The algorithm's config with its defaults filled in, validated. A
  default that cannot be used because of ``beta`` (``--beta=1e308`` gives
  nash_mp ``eta = 2 beta = inf``) is reported as ``--beta``, the flag the
  user gave, not as the flag the user left alone.

  Raises:
    ConfigError: naming the flag.
  """
  try:
    alg_config = algorithms_lib.resolve_config(
        config.algorithm, config.algorithm_config(), num_contexts,
        feature_dim, policy)
    algorithms_lib.validate_config(config.algorithm, alg_config, policy)
  except OverflowError:
    raise ConfigError('beta', f'{config.beta:g} is too large for '
                      f"{config.algorithm}'s default step sizes; give a "
                      'smaller --beta') from None
  except ConfigError as e:
    if e.flag in DERIVED and getattr(config, e.flag) is None:
      raise ConfigError('beta', f'{config.beta:g} makes the default '
                        f'--{e.flag} unusable ({str(e).partition(": ")[2]}); '
                        f'give --{e.flag} or a smaller --beta') from None
    raise
  return alg_config


def validate(config: ExperimentConfig) -> tuple[ExperimentConfig, Game | None]:
  """Checks every setting; returns the resolved config and the file's game.

  Raises:
    ConfigError: a flag that cannot be used, naming it.
    GameFileError: a game file that cannot be used, naming it.
  """
  _check_int_sizes(config)
  if config.algorithm not in algorithms_lib.ALL_ALGORITHM_NAMES:
    raise ConfigError('algorithm', f'unknown algorithm {config.algorithm!r}; '
                      'expected one of '
                      f'{", ".join(algorithms_lib.ALL_ALGORITHM_NAMES)}')
  if config.game not in GAMES:
    raise ConfigError('game', f'unknown game {config.game!r}; expected one of '
                      f'{", ".join(GAMES)}')
  _check_dtype(config, DTYPES)
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
  _check_seed(config)
  if config.game_seed is not None and not 0 <= config.game_seed <= MAX_SEED:
    raise ConfigError('game_seed', f'must be in [0, 2^31 - 1], got '
                      f'{config.game_seed}')
  _check_outputs(config)
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
  alg_config = resolve_algorithm(config, config.num_contexts, feature_dim,
                                 config.policy)
  config = resolve_seed_block(
      config, config.game == 'file' or config.game_seed is not None,
      config.num_actions)
  check_memory(config)
  return _resolved(config, alg_config, ('eta', 'learning_rate', 'inner_eta',
                                         'inner_steps', 'optimizer')), \
      file_game


_OPTIMIZER_SETTINGS = ('learning_rate', 'optimizer', 'max_grad_norm',
                       'schedule', 'decay_steps')


def unused_by(config, name: str) -> str | None:
  """Who ignores setting ``name`` in ``config``: the algorithm
  (``'nash_mp'``), the mode (``'--mode=exact'``) or a combination
  (``'nash_prox with --anchor=copy'``); None when the run reads it (or
  ``name`` is not an algorithm or policy setting, or the algorithm is
  unknown, which :func:`validate` refuses)."""
  mode = getattr(config, 'mode', 'sampled')
  registry = (algorithms_lib.ALGORITHMS if mode == 'exact' else
              algorithms_lib.SAMPLED_ALGORITHMS)
  spec, name_of = registry.get(config.algorithm), config.algorithm
  if spec is None:
    return None
  sampled_only = {'batch_size', 'oracle', 'anchor', 'anchor_every',
                  'anchor_tau', 'mixture', 'offline_pairs', 'reward_steps',
                  'reward_learning_rate'}
  if mode == 'exact' and name in sampled_only:
    return '--mode=exact'
  needs = {
      'eta': spec.default_eta is not None,
      'inner_steps': name_of in ('proximal_point', 'approx_nash_mp'),
      'inner_tolerance': name_of == 'proximal_point',
      'max_inner_steps': name_of == 'proximal_point',
      'inner_eta': name_of == 'proximal_point',
      'anchor': name_of == 'nash_prox',
      'anchor_every': name_of == 'nash_prox',
      'anchor_tau': name_of == 'nash_prox',
      'mixture': name_of == 'nash_md_pg',
      'offline_pairs': name_of in algorithms_lib.REWARD_BASED_NAMES,
      'reward_steps': name_of == 'bt_rlhf',
      'reward_learning_rate': name_of == 'bt_rlhf',
      **{k: spec.parameter_space for k in _OPTIMIZER_SETTINGS},
  }
  if not needs.get(name, True):
    return name_of
  given = {'anchor_every': ('anchor', 'copy'), 'anchor_tau': ('anchor', 'ema'),
           'decay_steps': ('schedule', 'cosine'),
           'hidden_sizes': ('policy', 'mlp'),
           'init_scale': ('init', 'random')}
  if name in given and hasattr(config, given[name][0]):
    flag, value = given[name]
    if getattr(config, flag) != value:
      given = f'--{flag}={getattr(config, flag)}'
      return given if flag in ('policy', 'init') else f'{name_of} with {given}'
  return None


def check_used(configs, names) -> None:
  """Refuses settings (``names``, e.g. the flags given on the command line)
  that no config of ``configs`` reads: a value that changes nothing.

  Raises:
    ConfigError: ``--learning_rate: nash_mp does not use it``.
  """
  for name in names:
    who = [unused_by(c, name) for c in configs]
    if who and all(who):
      who = list(dict.fromkeys(who))
      verb = 'does' if len(who) == 1 else 'do'
      raise ConfigError(name, f'{", ".join(who)} {verb} not use it')


# Numeric hyperparameters passed to the compiled step as runtime values, so
# that a sweep over them is one compiled call (and a single run is the same
# program as the matching cell of a sweep).
SWEEPABLE = ('beta', 'eta', 'learning_rate', 'inner_eta', 'anchor_tau',
             'mixture')


def hyperparameters(config: ExperimentConfig) -> dict:
  """The run's values of :data:`SWEEPABLE` (those that are set)."""
  return {k: getattr(config, k) for k in SWEEPABLE
          if getattr(config, k) is not None}


# --------------------------------------------------------------------------
# Language-model experiments (experiments/lm.py): a token game whose
# responses can all be listed, and a transformer policy.

_SPEC = TokenEnvSpec()
_MODEL = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
_WRITER = sft_lib.Writer()


@dataclasses.dataclass(frozen=True)
class TokenGameConfig:
  """The listable token game (:mod:`nash_jax.environments.tokens`)."""

  vocab_size: int = setting(_SPEC.vocab_size, 'Content tokens V of the '
                            'token game (the model vocabulary adds PAD, BOS '
                            'and EOS).')
  max_length: int = setting(_SPEC.max_length, 'Maximum response length L; '
                            'every response of at most L tokens is listed '
                            '(sum_{k<=L} V^k of them) for the exact metrics.')
  num_prompts: int = setting(_SPEC.num_prompts, 'Prompts X.')
  prompt_length: int = setting(_SPEC.prompt_length, 'Tokens per prompt: BOS,'
                               ' the topic token, then seeded fillers.')
  prompt_seed: int = setting(_SPEC.seed, 'Seed of the prompts\' filler '
                             'tokens.')
  sharpness: tuple[float, ...] = setting(
      _SPEC.sharpness, 'Bradley-Terry sharpness tau_k of the annotators '
      + ', '.join(ANNOTATORS) + ' (comma-separated).', item=float)
  annotator_weights: tuple[float, ...] = setting(
      _SPEC.annotator_weights, 'Weights w_k of the annotators in the '
      'population preference (normalized to sum 1).', item=float)
  max_responses: int = setting(_SPEC.max_responses, 'Refuse token games '
                               'with more listed responses than this.')

  def spec(self) -> TokenEnvSpec:
    return TokenEnvSpec(
        vocab_size=self.vocab_size, max_length=self.max_length,
        num_prompts=self.num_prompts, prompt_length=self.prompt_length,
        seed=self.prompt_seed, sharpness=tuple(self.sharpness),
        annotator_weights=tuple(self.annotator_weights),
        max_responses=self.max_responses)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The transformer policy (:mod:`nash_jax.policies.transformer`); its
  reference pi_ref is the initial model, drawn from ``model_seed`` and
  shared by every seed."""

  d_model: int = setting(64, 'Transformer width D.')
  num_layers: int = setting(_MODEL['num_layers'], 'Transformer blocks.')
  num_heads: int = setting(_MODEL['num_heads'], 'Query heads.')
  num_kv_heads: int = setting(_MODEL['num_kv_heads'], 'Key-value heads '
                              '(grouped-query attention; divides '
                              '--num_heads).')
  mlp_dim: int = setting(128, 'SwiGLU hidden width.')
  rope_theta: float = setting(_MODEL['rope_theta'], 'RoPE base theta.')
  tie_embeddings: bool = setting(_MODEL['tie_embeddings'], 'Tie the output '
                                 'head to the input embedding.')
  model_seed: int = setting(0, 'Seed of the reference model\'s random '
                            'initialization (the policy starts there).')

  def transformer_config(self, vocab_size: int,
                         dtype: str) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=vocab_size, d_model=self.d_model,
        num_layers=self.num_layers, num_heads=self.num_heads,
        num_kv_heads=self.num_kv_heads, mlp_dim=self.mlp_dim,
        rope_theta=float(self.rope_theta),
        tie_embeddings=self.tie_embeddings, param_dtype=dtype)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How a language-model policy samples (and scores) responses."""

  temperature: float = setting(1.0, 'Sampling temperature T; the policy is '
                               'softmax(logits / T) in sampling and in '
                               'log-probabilities alike (> 0).')


@dataclasses.dataclass(frozen=True)
class SampleLogConfig:
  """What each evaluation records besides the metrics."""

  num_samples: int = setting(2, 'Responses per prompt generated (and '
                             'decoded into samples.jsonl) at every '
                             'evaluation, per seed.')


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised fine-tuning of the reference on the writer's corpus
  (:mod:`nash_jax.sft`) before post-training; 0 steps keeps the randomly
  initialized model as pi_ref."""

  sft_steps: int = setting(0, 'Adam steps of supervised fine-tuning of the '
                           'reference model on the synthetic corpus before '
                           'post-training (0: pi_ref is the random '
                           'initial model).')
  sft_batch_size: int = setting(64, 'Corpus responses per SFT step.')
  sft_learning_rate: float = setting(3e-3, 'Adam step size of SFT.')
  corpus_stop: float = setting(_WRITER.stop, 'The corpus writer\'s '
                               'probability of ending (EOS) before each '
                               'token.')
  corpus_topic: float = setting(_WRITER.topic, 'The corpus writer\'s '
                                'probability that a token is the prompt\'s '
                                'topic (else another content token, '
                                'uniformly).')

  def writer(self) -> sft_lib.Writer:
    return sft_lib.Writer(stop=self.corpus_stop, topic=self.corpus_topic)


TRAIN_ORACLES = ('annotators', 'learned', 'judge')


@dataclasses.dataclass(frozen=True)
class TrainOracleConfig:
  """Which oracle answers training queries (:mod:`nash_jax.
  preference_models`); evaluation always uses the ground-truth annotators."""

  train_oracle: str = setting('annotators', 'Oracle of the training '
                              'queries: annotators (the ground truth), '
                              'learned (a pairwise preference model fitted '
                              'to --oracle_pairs ground-truth comparisons of '
                              'pi_ref samples) or judge (a language model '
                              'asked which response is better; here a '
                              'random transformer from --oracle_seed, which '
                              'exercises the mechanics only). Evaluation '
                              'always uses the ground truth.')
  oracle_pairs: int = setting(2048, 'learned: ground-truth comparisons it '
                              'is fitted to (one preference query each).')
  oracle_held_out: int = setting(512, 'learned: held-out ground-truth '
                                 'comparisons its accuracy is measured on.')
  oracle_steps: int = setting(1000, 'learned: adam steps of its fit.')
  oracle_batch_size: int = setting(64, 'learned: comparisons per fit step.')
  oracle_learning_rate: float = setting(3e-3, 'learned: adam step size.')
  oracle_d_model: int = setting(32, 'learned, judge: transformer width.')
  oracle_num_layers: int = setting(1, 'learned, judge: transformer blocks.')
  oracle_seed: int = setting(0, 'learned, judge: seed of the model\'s '
                             'initialization and of its data.')


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
  """How a language-model run spreads over devices besides its seeds
  (:func:`nash_jax.train.seed_mesh`)."""

  data_parallel: int | None = setting(
      None, 'Devices each run\'s per-step batch is split over (data parallel: '
      'generation, scoring and the gradient split over them, parameters '
      'replicated, gradients all-reduced). The devices used (--num_devices, '
      'default all, on every host) form a [devices / N, N] mesh: seeds '
      'over the first axis, the batch over the second. Must divide the '
      'devices used and --batch_size. Default (or 1): off, results '
      'bit-identical to a run without it; N > 1 changes the last bits '
      '(another compiled program, the gradient summed in another order).',
      int)
  model_parallel: int | None = setting(
      None, 'Devices each run\'s transformer parameters are split over '
      '(model parallel, Megatron style: attention heads, key-value heads, '
      'the MLP width and the vocabulary split, everything else replicated; '
      'the optimizer state and anchors split alike; XLA inserts the '
      'collectives). The devices used form a [devices / (D M), D, M] mesh '
      'with D = --data_parallel. Must divide the devices used / D, and '
      '--num_heads, --num_kv_heads, --mlp_dim and the model\'s vocabulary '
      '(--vocab_size + 3). Default (or 1): off, results bit-identical to a '
      'run without it; M > 1 changes the last bits.', int)


LM_DTYPES = ('float32', 'float64', 'bfloat16')
# Settings of the exact mode that a language model does not have.
_EXACT_ONLY = ('mode', 'inner_tolerance', 'max_inner_steps', 'inner_eta')

LMConfig = compose(
    'LMConfig', (TokenGameConfig, OracleConfig,
                 (AlgorithmConfig, _EXACT_ONLY), ModelConfig, SamplingConfig,
                 SFTConfig,
                 TrainOracleConfig, SampleLogConfig, RunConfig,
                 ParallelConfig),
    """Every setting of a language-model run (``experiments.lm``): the flat
    composition of :class:`TokenGameConfig`, :class:`OracleConfig`,
    :class:`~nash_jax.algorithms.AlgorithmConfig` (sampled mode),
    :class:`ModelConfig`, :class:`SamplingConfig`, :class:`SFTConfig`, :class:`TrainOracleConfig`,
    :class:`SampleLogConfig`, :class:`RunConfig` and
    :class:`ParallelConfig`. ``dtype``: the transformer's parameters and
    activations (``bfloat16`` allowed); hyperparameters, the optimizer's
    state, log-probabilities and the exact evaluation stay in at least
    float32 (:func:`lm_compute_dtype`).""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     'writer': lambda self: group_of(self, SFTConfig).writer(),
     'spec': lambda self: group_of(self, TokenGameConfig).spec(),
     'transformer_config': lambda self: group_of(
         self, ModelConfig).transformer_config(
             model_vocab_size(self.vocab_size), self.dtype),
     '__module__': __name__},
    defaults={'mode': 'sampled', 'algorithm': 'nash_prox', 'num_steps': 2000,
              'eval_every': 100, 'dtype': 'float32', 'num_seeds': 1,
              'output_dir': 'results/lm', 'checkpoint_every': 500})

# The hyperparameters a language-model run passes as runtime values.
LM_SWEEPABLE = ('beta', 'eta', 'learning_rate', 'anchor_tau', 'mixture',
                'temperature')


def lm_compute_dtype(config):
  """The dtype of a language-model run's hyperparameters, environment data
  and exact evaluation: ``dtype``, but at least float32 (a bfloat16 run
  keeps only its transformer in bfloat16)."""
  return jax.numpy.promote_types(jax.numpy.dtype(config.dtype),
                                 jax.numpy.float32)


def data_parallel_of(config) -> int:
  """A run's data-parallel factor: ``data_parallel``, 1 when unset (a
  default of None, so that checkpoints written before the setting existed
  still resume)."""
  value = getattr(config, 'data_parallel', None)
  return 1 if value is None else value


def check_data_parallel(config) -> None:
  """Refuses a ``data_parallel`` that the devices or the batch cannot
  split.

  Raises:
    ConfigError: naming ``--data_parallel``.
  """
  n = data_parallel_of(config)
  if n < 1:
    raise ConfigError('data_parallel', f'must be >= 1, got {n}')
  devices = (jax.device_count() if config.num_devices is None
             else config.num_devices)
  source = ('--num_devices' if config.num_devices is not None else
            'all the devices JAX sees')
  if n > devices or devices % n:
    raise ConfigError('data_parallel', f'must divide the {devices} devices '
                      f'the run uses ({source}), got {n}')
  if config.batch_size % n:
    raise ConfigError('data_parallel', f'must divide --batch_size='
                      f'{config.batch_size} (each device takes an equal '
                      f'share of the batch), got {n}')


def model_parallel_of(config) -> int:
  """A run's model-parallel factor: ``model_parallel``, 1 when unset (a
  default of None, so that checkpoints written before the setting existed
  still resume)."""
  value = getattr(config, 'model_parallel', None)
  return 1 if value is None else value


def check_model_parallel(config, tconfig=None) -> None:
  """Refuses a ``model_parallel`` that the devices (after
  ``data_parallel``) or the transformer's split dimensions cannot divide
  (:data:`nash_jax.sharding.RULES`: heads, key-value heads, MLP width,
  vocabulary). Call after :func:`check_data_parallel`.

  ``tconfig``: the transformer's architecture where the config does not
  describe it (a loaded checkpoint); default ``config.transformer_config()``.

  Raises:
    ConfigError: naming ``--model_parallel``.
  """
  m = model_parallel_of(config)
  if m < 1:
    raise ConfigError('model_parallel', f'must be >= 1, got {m}')
  if m == 1:
    return
  d = data_parallel_of(config)
  devices = (jax.device_count() if config.num_devices is None
             else config.num_devices)
  source = ('--num_devices' if config.num_devices is not None else
            'all the devices JAX sees')
  if m > devices // d or (devices // d) % m:
    raise ConfigError('model_parallel', f'must divide the {devices} devices '
                      f'the run uses ({source}) / --data_parallel={d} = '
                      f'{devices // d}, got {m}')
  cfg = config.transformer_config() if tconfig is None else tconfig
  shapes = jax.eval_shape(lambda key: init_params(key, cfg),
                          jax.random.PRNGKey(0))
  flags = {'heads': 'num_heads', 'kv_heads': 'num_kv_heads',
           'mlp': 'mlp_dim', 'vocab': 'vocab_size'}
  found = sharding_lib.indivisible(shapes, logical_axes(cfg),
                                   {sharding_lib.MODEL_AXIS: m})
  if found:
    def named(name, size):
      if tconfig is not None:  # A checkpoint's: config.json's fields.
        return f'{name} {size} (the checkpoint\'s config.json)'
      if name == 'vocab':
        return (f'the model\'s vocabulary (--vocab_size={config.vocab_size} '
                f'content tokens + PAD, BOS, EOS = {size})')
      return f'--{flags.get(name, name)}={size}'
    what = ', '.join(named(name, size) for name, size, _, _ in found)
    raise ConfigError('model_parallel', f'must divide every dimension it '
                      f'splits over {sharding_lib.MODEL_AXIS!r} (heads, '
                      f'key-value heads, MLP width, vocabulary): {what}; got '
                      f'{m}')


def lm_hyperparameters(config) -> dict:
  """The run's values of :data:`LM_SWEEPABLE` (those that are set)."""
  return {k: getattr(config, k) for k in LM_SWEEPABLE
          if getattr(config, k) is not None}


def validate_lm(config):
  """Checks every setting of a language-model run before any work; returns
  the resolved config (the algorithm's defaults filled in).

  Raises:
    ConfigError: naming the flag.
  """
  _check_int_sizes(config)
  names = tuple(algorithms_lib.SAMPLED_ALGORITHMS)
  if config.algorithm not in names:
    raise ConfigError('algorithm', f'{config.algorithm!r} does not run on a '
                      f'language model; expected one of {", ".join(names)}')
  _check_dtype(config, LM_DTYPES)
  for flag, minimum in (('num_steps', 1), ('eval_every', 1), ('num_seeds', 1),
                        ('seed_block', 1), ('checkpoint_every', 0),
                        ('keep_checkpoints', 1), ('num_samples', 0),
                        ('model_seed', 0), ('sft_steps', 0),
                        ('sft_batch_size', 1), ('oracle_pairs', 1),
                        ('oracle_held_out', 0), ('oracle_steps', 0),
                        ('oracle_batch_size', 1), ('oracle_d_model', 2),
                        ('oracle_num_layers', 1), ('oracle_seed', 0)):
    _positive_int(config, flag, minimum)
  _check_seed(config)
  if not (math.isfinite(config.temperature) and config.temperature > 0):
    raise ConfigError('temperature', f'must be a finite number > 0, got '
                      f'{config.temperature}')
  if config.oracle not in ORACLES:
    raise ConfigError('oracle', f'unknown oracle {config.oracle!r}; expected '
                      f'one of {", ".join(ORACLES)}')
  if not (math.isfinite(config.sft_learning_rate)
          and config.sft_learning_rate > 0):
    raise ConfigError('sft_learning_rate', f'must be a finite number > 0, '
                      f'got {config.sft_learning_rate}')
  sft_lib.check_writer(config.writer(), config.vocab_size)
  if config.train_oracle not in TRAIN_ORACLES:
    raise ConfigError('train_oracle', f'unknown oracle '
                      f'{config.train_oracle!r}; expected one of '
                      f'{", ".join(TRAIN_ORACLES)}')
  if not (math.isfinite(config.oracle_learning_rate)
          and config.oracle_learning_rate > 0):
    raise ConfigError('oracle_learning_rate', f'must be a finite number > '
                      f'0, got {config.oracle_learning_rate}')
  if config.train_oracle != 'annotators' and config.oracle_d_model % 4:
    raise ConfigError('oracle_d_model', f'must be a multiple of 4 (2 heads '
                      f'of even size), got {config.oracle_d_model}')
  check_spec(config.spec())
  validate_transformer_config(config.transformer_config())
  _check_outputs(config)
  check_data_parallel(config)
  check_model_parallel(config)
  # 1 is off, as when unset (and checkpoints match).
  if config.data_parallel == 1:
    config = config.replace(data_parallel=None)
  if config.model_parallel == 1:
    config = config.replace(model_parallel=None)
  if config.schedule == 'cosine' and config.decay_steps is None:
    config = config.replace(decay_steps=config.num_steps)
  alg_config = resolve_algorithm(config, config.num_prompts, 1,
                                 'transformer')
  # A transformer policy: 1 on every backend (the rule does not read n).
  config = resolve_seed_block(config, True, None, language_model=True)
  return _resolved(config, alg_config, ('eta', 'learning_rate',
                                         'inner_steps', 'optimizer'))
