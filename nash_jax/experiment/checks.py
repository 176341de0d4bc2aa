"""Checks shared by every kind of run, before any work.

Each raises :class:`~nash_jax.errors.ConfigError` naming the flag, so that
a binary refuses bad input with one line. A task's own checks (its
environment, its files) come after these (:func:`nash_jax.experiment.
validate`), and :func:`resolve_run` comes last.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax

from nash_jax import algorithms as algorithms_lib
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import distributions, reference
from nash_jax import seed_blocks as seed_blocks_lib
from nash_jax.errors import ConfigError
from nash_jax.settings import check_minimums, settings_of

MAX_SEED = 2 ** 31 - 1
# Integer settings above this are refused before any work (sizes, seeds and
# step counts far beyond any machine).
MAX_INT = 2 ** 31 - 1


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


def check_dtype(config, dtypes) -> None:
  """Refuses a ``dtype`` outside ``dtypes`` (or float64 without x64)."""
  if config.dtype not in dtypes:
    raise ConfigError('dtype', f'must be one of {", ".join(dtypes)}, got '
                      f'{config.dtype!r}')
  check_x64(config.dtype)


def check_seed(config) -> None:
  """Refuses seeds ``seed .. seed + num_seeds - 1`` outside ``[0, 2^31)``."""
  if not 0 <= config.seed <= MAX_SEED - config.num_seeds + 1:
    raise ConfigError('seed', f'must be in [0, 2^31 - num_seeds], got '
                      f'{config.seed}')


def check_int_sizes(config) -> None:
  """Refuses integer settings beyond :data:`MAX_INT` (``--seed_block=10**20``
  would fail deep inside NumPy after work has started)."""
  for field in settings_of(type(config)):
    value = getattr(config, field.name)
    if (field.metadata['kind'] is int and isinstance(value, int) and
        abs(value) > MAX_INT):
      raise ConfigError(field.name, f'{value} is too large (at most '
                        f'2^31 - 1)')


def check_positive_number(config, flag: str) -> None:
  """Refuses a float setting that is not a finite number > 0."""
  value = getattr(config, flag)
  if not (math.isfinite(value) and value > 0):
    raise ConfigError(flag, f'must be a finite number > 0, got {value}')


def check_choice(config, flag: str, choices, what: str | None = None
                 ) -> None:
  """Refuses a setting outside ``choices``: ``unknown <what> 'x'; expected
  one of a, b`` (``what``: default the flag's name)."""
  value = getattr(config, flag)
  if value not in choices:
    raise ConfigError(flag, f'unknown {what or flag} {value!r}; expected '
                      f'one of {", ".join(choices)}')


def check_outputs(config) -> None:
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


def resolve_run(config, alg_config, fields=DERIVED):
  """``config`` with the algorithm's resolved defaults (``fields`` of
  ``alg_config``), after the last checks: ``beta`` within the reference
  solver's reach, and checkpoints in the output directory that this run
  may resume.

  Raises:
    ConfigError: naming ``--beta`` or the setting the checkpoints differ in.
  """
  if reference.check_beta(config.beta):
    raise ConfigError('beta', reference.check_beta(config.beta))
  config = config.replace(**{k: getattr(alg_config, k) for k in fields
                             if hasattr(config, k)})
  try:
    checkpoint_lib.Checkpointer(config.output_dir, dataclasses.asdict(
        config)).check(config.overwrite, config.num_steps)
  except checkpoint_lib.CheckpointMismatch as e:
    raise ConfigError(e.flag, str(e)) from None
  return config


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


def format_bytes(n: float) -> str:
  """``2.04e11 -> '204 GB'`` (decimal units, 3 significant digits)."""
  for unit in ('bytes', 'kB', 'MB', 'GB', 'TB', 'PB'):
    if n < 1000 or unit == 'PB':
      return f'{n:.3g} {unit}'
    n /= 1000
  return f'{n:.3g} PB'


def _sampled_only() -> frozenset:
  """Algorithm settings that only sampled-mode algorithms read."""
  read = lambda registry: frozenset().union(*(s.reads for s in
                                              registry.values()))
  return (read(algorithms_lib.SAMPLED_ALGORITHMS) -
          read(algorithms_lib.ALGORITHMS))


# Settings read only where another setting has a given value.
CONDITIONS = {'anchor_every': ('anchor', 'copy'), 'anchor_tau': ('anchor', 'ema'),
              'decay_steps': ('schedule', 'cosine'),
              'hidden_sizes': ('policy', 'mlp'),
              'init_scale': ('init', 'random')}
# Settings of the sampled mode that are not the algorithm's (the outcome
# kind of every preference query).
SAMPLED_SETTINGS = ('outcome',)


def unused_by(config, name: str) -> str | None:
  """Who ignores setting ``name`` in ``config``: the algorithm
  (``'nash_mp'``, from what its registry entry reads,
  :attr:`nash_jax.algorithms.AlgorithmSpec.reads`), the mode
  (``'--mode=exact'``) or a combination (``'nash_prox with
  --anchor=copy'``); None when the run reads it (or ``name`` is not an
  algorithm or policy setting, or the algorithm is unknown, which
  validation refuses)."""
  mode = getattr(config, 'mode', 'sampled')
  try:
    spec = algorithms_lib.spec_of(config.algorithm, mode)
  except ConfigError:
    return None
  algorithm_settings = {f.name for f in
                        dataclasses.fields(algorithms_lib.AlgorithmConfig)}
  if mode == 'exact' and (name in _sampled_only() or
                          name in SAMPLED_SETTINGS):
    return '--mode=exact'
  if name in algorithm_settings and name not in spec.reads:
    return config.algorithm
  if name in CONDITIONS and hasattr(config, CONDITIONS[name][0]):
    flag, value = CONDITIONS[name]
    if getattr(config, flag) != value:
      given = f'--{flag}={getattr(config, flag)}'
      return (given if flag in ('policy', 'init') else
              f'{config.algorithm} with {given}')
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


def check_outcome(config) -> None:
  """Refuses an ``outcome`` kind outside :data:`nash_jax.distributions.
  OUTCOMES` (:func:`nash_jax.distributions.check_outcome`)."""
  distributions.check_outcome(config.outcome)


def check_algorithm(task, config) -> None:
  """Refuses an algorithm that does not run in ``task``'s kind of run (its
  registry entry's ``runs``)."""
  names = task.algorithms
  if config.algorithm in names:
    return
  if config.algorithm in algorithms_lib.ALL_ALGORITHM_NAMES:
    raise ConfigError('algorithm', f'{config.algorithm!r} does not run on '
                      f'{task.what}; expected one of {", ".join(names)}')
  raise ConfigError('algorithm', f'unknown algorithm {config.algorithm!r}; '
                    f'expected one of {", ".join(names)}')


def validate(task, config):
  """Checks every setting of a run of ``task`` before any work: the checks
  every kind of run shares (sizes, algorithm, dtype, declared minimums,
  seeds), then the task's own (which read its input files and resolve the
  algorithm's defaults).

  Returns:
    ``(config, inputs)``: the resolved config and what the task read.

  Raises:
    ConfigError: one line naming the flag (and the file).
  """
  check_int_sizes(config)
  check_algorithm(task, config)
  check_dtype(config, task.dtypes)
  check_minimums(config)
  check_seed(config)
  return task.validate(config)
