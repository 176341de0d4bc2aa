"""What the experiment binaries share: flags generated from a task's
settings, one ``main`` per kind of run (:func:`task_main`), error handling
and the measuring helpers of the benchmarks."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from typing import Callable

import jax
import numpy as np
from absl import flags

from nash_jax import experiment
from nash_jax import io as io_lib
from nash_jax.algorithms import ConfigError
from nash_jax.games import GameFileError
from nash_jax.settings import settings_of


def define_settings(config_class, **defaults) -> None:
  """Defines one flag per setting of a composed config class (see
  :func:`nash_jax.settings.compose`): the field's name, default (the
  class's, or ``defaults[name]``), type and help. Settings marked
  ``flag=False`` get none."""
  definers = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, bool: flags.DEFINE_bool}
  for field in settings_of(config_class):
    meta = field.metadata
    if not meta['flag']:
      continue
    default = defaults.get(field.name, field.default)
    if meta['kind'] is tuple:
      flags.DEFINE_list(field.name, [str(v) for v in default], meta['help'])
    else:
      definers[meta['kind']](field.name, default, meta['help'])


def config_from_settings(config_class, **overrides):
  """A ``config_class`` from the parsed flags of its settings (list-valued
  settings parsed to tuples of their item type)."""
  values = {}
  for field in settings_of(config_class):
    if field.name in flags.FLAGS:
      value = flags.FLAGS[field.name].value
      if field.metadata['kind'] is tuple:
        item = field.metadata['item']
        try:
          value = tuple(item(v) for v in value)
        except ValueError:
          kind = 'integers' if item is int else 'numbers'
          raise ConfigError(field.name, f'must be {kind}, got '
                            f'{",".join(value)}') from None
      values[field.name] = value
  values.update(overrides)
  return config_class(**values)


def explicit_settings(config_class) -> list[str]:
  """The settings of ``config_class`` given on the command line (not left
  at their defaults), in declaration order."""
  return [f.name for f in settings_of(config_class)
          if f.name in flags.FLAGS and flags.FLAGS[f.name].present]


def renamed(error: Exception, names: dict[str, str]) -> Exception:
  """``error`` naming the flag the user typed: a binary whose flag feeds a
  setting of another name (``--algorithms`` -> ``algorithm``) passes
  ``{setting: flag}``."""
  if getattr(error, 'flag', None) not in names:
    return error
  return ConfigError(names[error.flag], str(error).partition(': ')[2])


def define_multihost_flags() -> None:
  """``--distributed`` and its coordinator settings (see start_jax)."""
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize '
                    'first: with no other flag it detects Slurm, Open MPI '
                    'or a TPU pod from the environment; otherwise give '
                    '--coordinator_address, --num_processes, --process_id. '
                    'Only process 0 writes files and logs.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 '
                      '(with --distributed).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run (with '
                       '--distributed).')
  flags.DEFINE_integer('process_id', None, 'This process (with '
                       '--distributed).')
  flags.DEFINE_integer('distributed_timeout', 300, 'Seconds to wait for the '
                       'coordinator and the other processes (with '
                       '--distributed); then stop with one error line.')


def start_jax(dtype: str) -> None:
  """Configures JAX before any array exists: float64 needs x64 mode, and
  ``--distributed`` joins the other processes (CPU hosts talk through gloo)."""
  jax.config.update('jax_enable_x64', dtype == 'float64')
  f = flags.FLAGS
  if 'distributed' not in f:
    return  # A binary without the multi-host flags.
  if not f.distributed:
    for name in ('coordinator_address', 'num_processes', 'process_id'):
      if f[name].value is not None:
        fail(f'--{name}: only used with --distributed')
    if f['distributed_timeout'].present:
      fail('--distributed_timeout: only used with --distributed')
    return
  if f.distributed_timeout < 1:
    fail(f'--distributed_timeout: must be >= 1, got {f.distributed_timeout}')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if f.coordinator_address and f.process_id not in (None, 0):
    wait_for_coordinator(f.coordinator_address, f.distributed_timeout)
  try:
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes,
                               process_id=f.process_id,
                               initialization_timeout=f.distributed_timeout)
  except (RuntimeError, ValueError) as e:
    fail(f'--distributed: jax.distributed.initialize failed: '
         f'{" ".join(str(e).split())[:300]}')


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Waits until ``host:port`` accepts a TCP connection, or fails with one
  line after ``timeout`` seconds. JAX's client aborts the whole process
  (a C++ fatal error and a stack dump, not an exception) when it cannot
  reach the coordinator, so a process other than 0 checks first."""
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    fail(f'--coordinator_address: expected host:port, got {address!r}')
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host.strip('[]'), int(port)),
                               timeout=max(0.1, min(5.0, timeout))).close()
      return
    except OSError as e:
      if time.monotonic() >= deadline:
        fail(f'--coordinator_address: {address} did not answer within '
             f'{timeout:g} s (--distributed_timeout): '
             f'{e.strerror or type(e).__name__}')
      time.sleep(0.25)


def quiet_logs() -> None:
  """Only warnings and errors from absl logging (JAX, orbax) on stderr,
  less orbax's tracebacks of a full disk from its writer threads (the run
  then ends with one line, see :func:`report_disk_full`)."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  handler = logging.get_absl_handler()
  if not any(f is _not_disk_full for f in handler.filters):
    handler.addFilter(_not_disk_full)


def _not_disk_full(record) -> bool:
  """Logging filter: False for a record carrying a full-disk exception."""
  return not (record.exc_info and io_lib.disk_full(record.exc_info[1]))


def report_disk_full(kind, error, tb) -> None:
  """``sys.excepthook`` of the binaries: a full disk (anywhere in the
  exception chain, see :func:`nash_jax.io.disk_full`) is one line
  naming ``--output_dir``; any other exception goes to Python's hook."""
  if not io_lib.disk_full(error):
    return sys.__excepthook__(kind, error, tb)
  output_dir = (flags.FLAGS['output_dir'].value
                if 'output_dir' in flags.FLAGS else None)
  print(io_lib.disk_full_line(output_dir), file=sys.stderr, flush=True)


def table_line(cells, width: int) -> str:
  """One right-aligned line of a benchmark table (floats to 4 digits)."""
  return ' '.join(f'{v:>{width}.4g}' if isinstance(v, float) else
                  f'{v:>{width}}' for v in cells)


def write_table(path: str, header: list[str], rows: list[list]) -> None:
  """Writes a benchmark table as CSV (creating the directory; written
  atomically, :func:`nash_jax.io.write_csv`)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  io_lib.write_csv(path, header, rows)


def flag_error_line(error: Exception, flag_values=None) -> str:
  """The one ``--flag: what is wrong`` message of an absl flag-parse error
  (an unknown flag, a missing value, a value of the wrong type) raised by
  ``flag_values`` (default: ``flags.FLAGS``)."""
  text = ' '.join(str(error).split())
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    hint = text.partition('. Did you mean: ')[2].rstrip(' ?')
    return (f'--{name}: unknown flag' +
            (f' (did you mean --{hint}?)' if hint else '') +
            '; --help lists the flags')
  missing = re.match(r'Missing value for flag --?([\w.-]+)', text)
  if missing:
    return f'--{missing.group(1)}: needs a value (--{missing.group(1)}=...)'
  bad = re.match(r'flag --?([\w.-]+)=(.*?): (.*)', text)
  if bad:
    name, value, why = bad.groups()
    kind = _flag_kind(name, flags.FLAGS if flag_values is None else
                      flag_values)
    if kind:
      return f'--{name}: must be {kind}, got {value!r}'
    return f'--{name}: {why} (got {value!r})'
  return text


def _flag_kind(name: str, flag_values) -> str | None:
  """``'an integer'``, ``'a number'`` or ``'true or false'`` for flags of
  those types."""
  if name not in flag_values:
    return None
  parser = type(flag_values[name].parser).__name__
  return {'IntegerParser': 'an integer', 'FloatParser': 'a number',
          'BooleanParser': 'true or false'}.get(parser)


def adopt_key_flags(module_name: str) -> None:
  """Lists every flag defined by this module (the generated settings, the
  multi-host flags) in ``module_name``'s ``--help``, as its own."""
  here = flags.FLAGS.find_module_defining_flag
  for name in list(flags.FLAGS):
    if here(name) == __name__:
      flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[name])


HELP_FLAGS = {'--help', '-help', '-h', '-?', '--helpshort', '--helpfull',
              '--helpxml'}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for ``app.run(main, flags_parser=parse_flags)``:
  a parse error (unknown flag, missing or malformed value) is one
  ``error: --flag: ...`` line and exit status 2, like every other refusal;
  ``--help`` lists the binary's flags with the generated settings among
  them."""
  adopt_key_flags(argv[0] if argv else sys.argv[0])
  signal.signal(signal.SIGINT, _interrupted)
  sys.excepthook = report_disk_full
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(flag_error_line(e))
  except SystemExit as e:  # absl's help flags print and exit 1; asked for
    if e.code == 1 and HELP_FLAGS & set(argv[1:]):  # help, it is success.
      sys.exit(0)
    raise


def _interrupted(signum, frame) -> None:
  """Ctrl-C outside training (which checkpoints first, see
  :class:`nash_jax.experiment.run.Preemption`): one line, status 130."""
  print('stopped by SIGINT; rerun the same command to continue',
        file=sys.stderr, flush=True)
  sys.exit(130)


def fail(message: str) -> None:
  """One line on stderr and exit status 2: the refusal of bad input."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


USER_ERRORS = (ConfigError, GameFileError)


def report_sweep(cells, results, output_dir: str, start: float,
                 write: Callable) -> None:
  """Writes every cell's results (``write(result)``) and
  ``OUTPUT_DIR/sweep.csv``, and prints one line per cell (mean and median
  final ``kl_to_equilibrium``) and where the files went."""
  for res in results:
    write(res)
  path = experiment.write_sweep_table(cells, results, output_dir)
  if jax.process_index() == 0:
    for (values, _), res in zip(cells, results):
      last = res.rows[-1]
      print(f'{experiment.cell_name(values):<40} kl_to_equilibrium mean '
            f'{np.mean(last["kl_to_equilibrium"]):.3e} median '
            f'{np.median(last["kl_to_equilibrium"]):.3e}')
    print(f'wrote {path} and {len(cells)} cell directories '
          f'({time.time() - start:.1f}s)')


def check_output_file(path: str, flag: str = 'output') -> None:
  """Refuses an output file that is a directory or whose directory cannot
  be created and written (before any work)."""
  if not path:
    fail(f'--{flag}: must not be empty')
  if os.path.isdir(path):
    fail(f'--{flag}: {path} is a directory; give a file name')
  try:
    experiment.check_output_dir(os.path.dirname(os.path.abspath(path)), flag)
  except ConfigError as e:
    fail(str(e))


# ----------------------------------------------------------------------------
# Measuring the machine (the benchmark binaries).
# ----------------------------------------------------------------------------


def loadavg() -> str:
  """The first three fields of ``/proc/loadavg`` (1, 5, 15 minutes), or
  ``'n/a'`` where there is none."""
  try:
    with open('/proc/loadavg') as f:
      return ' '.join(f.read().split()[:3])
  except OSError:
    return 'n/a'


def best_time(fn: Callable, repeats: int) -> float:
  """Best wall time of ``repeats`` calls of ``fn`` (already warm)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def calls_time(fn: Callable, target: float, repeats: int) -> float:
  """Seconds per call of ``fn``: calls repeated to about ``target`` s, the
  best of ``repeats`` such rounds (after a warm-up call)."""
  fn()
  start = time.perf_counter()
  fn()
  calls = max(1, int(target / max(time.perf_counter() - start, 1e-6)))
  return best_time(lambda: [fn() for _ in range(calls)], repeats) / calls


def jax_matmul_rate(dtype, size: int, target: float, repeats: int) -> float:
  """FLOP/s of a jitted ``size x size`` matrix product (``2 size^3``
  FLOPs) in ``dtype``, timed by :func:`calls_time`."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  product = jax.jit(jax.numpy.dot)
  seconds = calls_time(lambda: product(a, b).block_until_ready(), target,
                       repeats)
  return 2 * size ** 3 / seconds


# ----------------------------------------------------------------------------
# One binary per kind of run.
# ----------------------------------------------------------------------------

# Flags kept for a release under their old names: {old: new}.
DEPRECATED = {'oracle': 'outcome'}


def define_task_flags(task, **defaults) -> None:
  """Defines the flags of a binary that runs ``task``: ``--algorithm``
  (the algorithms of its kind of run), ``--sweep`` (where it has runtime
  settings to sweep), one flag per setting of ``task.settings`` (with this
  binary's ``defaults``), the deprecated aliases and the multi-host flags."""
  names = task.algorithms
  flags.DEFINE_string(
      'algorithm', defaults.pop('algorithm', task.settings().algorithm),
      'One of ' + ', '.join(names) + ' (see README.md).')
  sweepable = task.sweep_names()
  if sweepable:
    flags.DEFINE_multi_string(
        'sweep', [], 'NAME=V1,V2,...: run every combination of these values '
        '(repeat the flag for a grid) with all seeds in one compiled call; '
        'NAME is one of ' + ', '.join(sweepable) + '. Each cell is written '
        'to OUTPUT_DIR/<name>=<value>_.../ in the usual layout, and '
        'OUTPUT_DIR/sweep.csv summarizes the cells.')
  define_settings(task.settings, **defaults)
  define_deprecated_flags()
  define_multihost_flags()


def define_deprecated_flags() -> None:
  """The deprecated aliases (:data:`DEPRECATED`) of the settings defined."""
  for old, new in DEPRECATED.items():
    if new in flags.FLAGS:
      flags.DEFINE_string(old, None, f'Deprecated alias of --{new}.')


def task_config(task, **overrides):
  """The ``task.settings`` config of the parsed flags (a deprecated alias
  standing for its new name) and the names of the settings given on the
  command line.

  Raises:
    ConfigError: an alias given together with its new name.
  """
  given = explicit_settings(task.settings)
  for old, new in DEPRECATED.items():
    if old in flags.FLAGS and flags.FLAGS[old].present:
      if flags.FLAGS[new].present:
        raise ConfigError(old, f'is a deprecated alias of --{new}; give '
                          f'only --{new}')
      overrides[new] = flags.FLAGS[old].value
      given.append(new)
  return config_from_settings(task.settings, **overrides), given


def aliases_used() -> dict:
  """``{new: old}`` of the deprecated aliases given on the command line, so
  that a refusal names the flag the user typed."""
  return {new: old for old, new in DEPRECATED.items()
          if old in flags.FLAGS and flags.FLAGS[old].present}


def warn_deprecated() -> None:
  """One line on stderr per deprecated alias given (after validation, so
  that a refusal stays one line)."""
  for new, old in aliases_used().items():
    print(f'warning: --{old} is deprecated; use --{new}', file=sys.stderr)


def task_main(task) -> Callable:
  """The ``main`` of a binary that runs ``task``: flags to a config, every
  check before any work (one line and exit status 2 on bad input), the
  output directory locked, the run (or sweep) through the run kit, the
  result files, a final table."""

  def main(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    quiet_logs()
    start_jax(flags.FLAGS.dtype)
    cells = None
    try:
      io_lib.lock_output_dir(flags.FLAGS.output_dir, only_existing=True)
      config, given = task_config(task, algorithm=flags.FLAGS.algorithm)
      experiment.check_used([config], given)
      if 'sweep' in flags.FLAGS and flags.FLAGS.sweep:
        grid = experiment.parse_sweep(flags.FLAGS.sweep, task.sweep_names())
        cells, inputs = experiment.validate_sweep(task, config, grid)
      else:
        config, inputs = experiment.validate(task, config)
      io_lib.lock_output_dir(config.output_dir)
    except USER_ERRORS as e:
      fail(str(renamed(e, aliases_used())))
    warn_deprecated()
    start = time.time()
    if cells is None:
      results = experiment.run_task(task, [config], inputs)
      task.write(results[0])
      if jax.process_index() == 0:
        print(experiment.format_table(results[0]))
        print(f'wrote {config.output_dir} ({time.time() - start:.1f}s)')
      return
    results = experiment.run_task(task, [c for _, c in cells], inputs,
                                  config.output_dir,
                                  checkpoint_every=config.checkpoint_every)
    report_sweep(cells, results, config.output_dir, start, task.write)

  return main
