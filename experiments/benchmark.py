r"""Throughput of the exact tabular trainer against this machine's limits.

  python -m experiments.benchmark                  # the full grid
  python -m experiments.benchmark --sizes=100,1000 --seeds=16 \
      --games=shared --dtypes=float32 --blocks=    # a quick subset

The same command runs unchanged on a GPU or TPU (JAX picks the backend; the
default blocks of :mod:`nash_jax.seed_blocks` follow it). One run measures,
on the machine it runs on, its limits and the trainer next to them:

* limits: the matrix-multiply rate (two ``m x m`` matrices, ``--matmul_size``,
  float32 and float64) and the read bandwidth (bytes read per second by a
  sum over the last axis, or a matrix-vector product, of a
  ``--bandwidth_mib`` float32 array), each the better of jitted JAX and
  NumPy, best of ``--repeats``;
  measured at the start and again at the end (on an idle machine the two
  agree; a loaded one measures them low, so the table's fractions use the
  larger of the two), with ``/proc/loadavg`` at both ends;
* one row per ``n`` (``--sizes``), number of seeds (``--seeds``), game kind
  (``--games``: ``shared``, one game for all seeds; ``per_seed``, a game per
  seed) and dtype (``--dtypes``), for the exact algorithm ``--algorithm``
  (Nash-MP: two win-rate products a step) on random games with
  ``--num_contexts`` contexts.

Rates are seed-steps per second, timed on the compiled chunk that
:func:`nash_jax.train.train` calls between evaluations (``lax.scan`` over
``K`` steps, ``vmap`` over a block of seeds, a map over the blocks) with
inputs laid out once as the trainer lays them out: ``K seeds`` over the time
of one call, ``K`` at least 8 and sized so that a call takes about
``--seconds``. Compilation, the layout and the evaluation (a no-op here)
are not counted; what a call costs besides its steps is (dispatch; for
per-seed games a copy of each block's games, about one step's reads), so a
rate is at most about ``1 / K`` below the steady state. The blocks of a
row, the loop and NumPy below are timed in turns, ``--repeats`` rounds, and
each rate is the median of its rounds, so that changes in the machine's
load hit them alike and its quiet moments favour none. Per row:

* ``rate``: the trainer with ``block`` = ``--seed_block`` (default: the
  rule of :func:`nash_jax.seed_blocks.default_seed_block` for this machine's
  backend, the row's game kind and ``n``);
* ``best_block``/``best``: the fastest of the blocks in ``--blocks`` (also
  those above the number of seeds: a run computes its whole block) and the
  default; ``slowdown`` =
  ``best / rate`` (1 when the default is the best); the CSV's last column,
  ``block_rates``, lists the rate of every block measured;
* ``numpy``: the same algorithm in plain NumPy, vectorized over seeds: for a
  shared game the win rates of all seeds as one ``[seeds, n] x [n, n]``
  product per context, for per-seed games one batched matrix-vector product
  (``np.matmul``); NaN for algorithms other than ``nash_mp``;
* ``loop``: a Python loop over single-seed runs: the rate of one seed run
  alone (``--seed_block=1``, the cheapest single-seed program, on the first
  seed's game); a loop over ``S`` seeds takes ``S`` times as long (per-run
  start-up not counted, which favours the loop);
* ``achieved``/``limit``/``of_limit``: for a shared game the FLOP rate
  (``2 X n^2`` FLOPs per seed and win-rate product) against the matmul rate
  of the row's dtype, in GFLOP/s; for per-seed games the rate at which the
  seeds' preferences are read (``X n^2`` elements per seed and product)
  against the read bandwidth, in GB/s. Win-rate products per step are the
  algorithm's preference queries per step.

Per-seed rows whose games take more than ``--max_game_mib`` are skipped.
The memory check runs 1e5 and 1e6 steps (evaluating every 1000) in fresh
processes and prints their peak host RSS: metrics are reduced on the device
to evaluation points, so it must not grow with the run length. Every flag is
checked before any work. Writes the table as CSV (``--output``) and, after
it, the block trade-offs (:func:`block_tradeoffs`: for each setting and
block, its worst slowdown over the numbers of seeds) to
``--output`` with ``_blocks`` before the extension.
"""

import math
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import common
from nash_jax import algorithms, evaluation, policies, seed_blocks, train
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.experiment import format_bytes, memory_limits
from nash_jax.games import generate_game

GAMES = ('shared', 'per_seed')
DTYPES = ('float32', 'float64')

flags.DEFINE_list('sizes', ['10', '100', '1000', '4000'],
                  'Numbers of responses n.')
flags.DEFINE_list('seeds', ['1', '16', '256'], 'Numbers of seeds.')
flags.DEFINE_list('games', list(GAMES), 'Game kinds: shared (one game for '
                  'all seeds), per_seed (a game per seed).')
flags.DEFINE_list('dtypes', list(DTYPES), 'float32, float64.')
flags.DEFINE_list('blocks', ['1', '4', '16', '64', '256'], 'Seed blocks '
                  'measured in every row, also those above its number of '
                  'seeds (a run pads its block; per-seed rows skip blocks '
                  'whose padded games exceed --max_game_mib); empty: only '
                  'the default.')
flags.DEFINE_integer('seed_block', None, 'Block of the rate column '
                     '(default: nash_jax.seed_blocks.default_seed_block).')
flags.DEFINE_string('algorithm', 'nash_mp', 'Exact algorithm: ' +
                    ', '.join(algorithms.ALGORITHM_NAMES) + ' (the NumPy '
                    'baseline exists for nash_mp only).')
flags.DEFINE_integer('num_contexts', 1, 'Contexts X of the games.')
flags.DEFINE_float('seconds', 0.2, 'Target time of one timed chunk of K '
                   'steps (seconds; K >= 8).')
flags.DEFINE_integer('repeats', 3, 'Rounds of timings (best is kept).')
flags.DEFINE_integer('matmul_size', 2048, 'm of the m x m matmul limit.')
flags.DEFINE_integer('bandwidth_mib', 512, 'MiB read by the bandwidth '
                     'limit.')
flags.DEFINE_integer('max_game_mib', 2048, 'Skip per-seed rows whose games '
                     'take more memory.')
flags.DEFINE_bool('memory', True, 'Run the 1e5 / 1e6 step memory check.')
flags.DEFINE_string('output', 'results/benchmark.csv', 'CSV of the table.')
flags.DEFINE_integer('memory_steps', None, 'Internal: run a memory probe of '
                     'this many steps and print its peak RSS.')

BETA = 0.1
HEADER = ['n', 'seeds', 'game', 'dtype', 'block', 'rate', 'best_block',
          'best', 'slowdown', 'numpy', 'loop', 'rate/numpy', 'rate/loop',
          'achieved', 'limit', 'of_limit']
# The CSV has one more column: every measured block's rate, 'b:rate ...'.
CSV_HEADER = HEADER + ['block_rates']
# Bounds of the integer flags (checked before any work).
MAX_SIZE = 100_000
MAX_SEEDS = 2 ** 20
MAX_STEPS = 10 ** 7  # Steps of one timed call, at most...
MIN_STEPS = 8  # ... and at least.


# ----------------------------------------------------------------------------
# Flags, checked before any work.
# ----------------------------------------------------------------------------


def _int_list(name, values, minimum, maximum, allow_empty=False):
  if not values and not allow_empty:
    common.fail(f'--{name}: must not be empty')
  try:
    parsed = [int(v) for v in values]
  except ValueError:
    common.fail(f'--{name}: must be comma-separated integers, got '
                f'{",".join(values)!r}')
  for v in parsed:
    if not minimum <= v <= maximum:
      common.fail(f'--{name}: every value must be in [{minimum}, {maximum}],'
                  f' got {v}')
  if len(set(parsed)) < len(parsed):
    common.fail(f'--{name}: repeated value in {",".join(values)}')
  return parsed


def _choices(name, values, allowed):
  if not values:
    common.fail(f'--{name}: must not be empty')
  for value in values:
    if value not in allowed:
      common.fail(f'--{name}: unknown value {value!r}; expected one of '
                  f'{", ".join(allowed)}')
  if len(set(values)) < len(values):
    common.fail(f'--{name}: repeated value in {",".join(values)}')
  return list(values)


def _at_least(name, minimum, maximum=2 ** 31 - 1):
  value = flags.FLAGS[name].value
  if value is not None and not minimum <= value <= maximum:
    common.fail(f'--{name}: must be in [{minimum}, {maximum}], got {value}')


def check_flags(f):
  """Every flag, before any work: ``(sizes, seeds, blocks)``; a bad flag
  is one ``error: --flag: ...`` line and exit status 2."""
  sizes = _int_list('sizes', f.sizes, 2, MAX_SIZE)
  seeds = _int_list('seeds', f.seeds, 1, MAX_SEEDS)
  blocks = _int_list('blocks', f.blocks, 1, MAX_SEEDS, allow_empty=True)
  _choices('games', f.games, GAMES)
  _choices('dtypes', f.dtypes, DTYPES)
  if f.algorithm not in algorithms.ALGORITHM_NAMES:
    common.fail(f'--algorithm: unknown exact algorithm {f.algorithm!r}; '
                f'expected one of {", ".join(algorithms.ALGORITHM_NAMES)}')
  _at_least('seed_block', 1, MAX_SEEDS)
  _at_least('num_contexts', 1, 10_000)
  _at_least('repeats', 1, 1000)
  _at_least('matmul_size', 16, 65_536)
  _at_least('bandwidth_mib', 1, 2 ** 20)
  _at_least('max_game_mib', 0, 2 ** 30)
  _at_least('memory_steps', 1, 10 ** 9)
  if not (math.isfinite(f.seconds) and 0 < f.seconds <= 3600):
    common.fail(f'--seconds: must be a number in (0, 3600], got {f.seconds}')
  common.check_output_file(f.output)
  common.check_output_file(blocks_path(f.output))
  host, device = memory_limits()
  have = min(host, device) if device is not None else host
  # The largest arrays: a shared game and its NumPy copies; the limits'
  # operands.
  for flag, need in (
      ('sizes', 4 * f.num_contexts * max(sizes) ** 2 * 8),
      ('matmul_size', 3 * f.matmul_size ** 2 * 8),
      ('bandwidth_mib', f.bandwidth_mib * 2 ** 20)):
    if need > have:
      common.fail(f'--{flag}: needs about {format_bytes(need)} of memory; '
                  f'this machine has {format_bytes(have)}')
  if 'per_seed' in f.games and f.max_game_mib * 2 ** 20 * 3 > have:
    common.fail(f'--max_game_mib: per-seed rows of {f.max_game_mib} MiB of '
                f'games need about {format_bytes(f.max_game_mib * 3 * 2**20)}'
                f' of memory; this machine has {format_bytes(have)}')
  return sizes, seeds, blocks


# ----------------------------------------------------------------------------
# The machine's limits.
# ----------------------------------------------------------------------------


def matmul_rates(dtype, size: int, target: float, repeats: int):
  """``(jax, numpy)`` FLOP/s of a ``size x size`` matrix product
  (``2 size^3`` FLOPs): ``jnp.dot`` under ``jit``, and NumPy's BLAS."""
  a = np.random.default_rng(0).random((size, size)).astype(dtype)
  b = np.random.default_rng(1).random((size, size)).astype(dtype)
  numpy_s = common.calls_time(lambda: a @ b, target, repeats)
  return (common.jax_matmul_rate(dtype, size, target, repeats),
          2 * size ** 3 / numpy_s)


def bandwidths(mib: int, target: float, repeats: int):
  """``(jax, numpy)`` bytes read per second from a float32 array of ``mib``
  MiB (rows of 1024), each the better of a sum over the last axis and a
  matrix-vector product (both read the array once; their outputs are
  1/1024 of it)."""
  rows = mib * 2 ** 20 // 4096
  a = np.ones((rows, 1024), np.float32)
  v = np.ones(1024, np.float32)
  x, y = jnp.asarray(a), jnp.asarray(v)
  reduce = jax.jit(lambda x: jnp.sum(x, axis=-1))
  product = jax.jit(jnp.dot)
  jax_s = min(
      common.calls_time(lambda: reduce(x).block_until_ready(), target, repeats),
      common.calls_time(lambda: product(x, y).block_until_ready(), target,
                  repeats))
  numpy_s = min(common.calls_time(lambda: a.sum(axis=-1), target, repeats),
                common.calls_time(lambda: a @ v, target, repeats))
  return rows * 4096 / jax_s, rows * 4096 / numpy_s


def measure_limits(f) -> dict:
  """Matmul FLOP/s per dtype and read bandwidth (bytes/s), each the better
  of JAX and NumPy; printed with both."""
  limits, parts = {}, []
  for dtype in DTYPES:
    jax_r, numpy_r = matmul_rates(np.dtype(dtype), f.matmul_size, f.seconds,
                                  f.repeats)
    limits[dtype] = max(jax_r, numpy_r)
    parts.append(f'matmul {dtype} {limits[dtype] / 1e9:.1f} GFLOP/s (jax '
                 f'{jax_r / 1e9:.1f}, numpy {numpy_r / 1e9:.1f})')
  jax_r, numpy_r = bandwidths(f.bandwidth_mib, f.seconds, f.repeats)
  limits['bandwidth'] = max(jax_r, numpy_r)
  parts.append(f'read bandwidth {limits["bandwidth"] / 1e9:.1f} GB/s (jax '
               f'{jax_r / 1e9:.1f}, numpy {numpy_r / 1e9:.1f})')
  print('limits: ' + '; '.join(parts), flush=True)
  return limits


# ----------------------------------------------------------------------------
# The trainer, NumPy and a loop of single-seed runs.
# ----------------------------------------------------------------------------


def _algorithm(name):
  config = algorithms.resolve_config(name, AlgorithmConfig(beta=BETA))
  return algorithms.make_algorithm(name, config, policies.make_tabular())


def _no_metrics(hyper, state, env_params, eval_data):
  """The trainer's evaluation, a no-op: the benchmark times the steps."""
  del hyper, state, env_params, eval_data
  return {}


def _games(n, num_seeds, kind, dtype, num_contexts):
  """One game (``shared``) or ``num_seeds`` stacked games (``per_seed``)."""
  make = lambda key: generate_game(key, 'random', num_contexts, n, 'uniform',
                                   jnp.dtype(dtype))
  if kind == 'shared':
    return make(jax.random.PRNGKey(0))
  keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
  return jax.jit(jax.vmap(make))(keys)


class Row:
  """One (n, kind, dtype) setting: its algorithm, the trainer's compiled
  chunks and their rates by number of seeds and block."""

  def __init__(self, n, kind, dtype, limits, f):
    self.n, self.kind, self.dtype, self.f = n, kind, dtype, f
    self.shared = kind == 'shared'
    self.limits = limits
    self.make = evaluation.constant_maker(_algorithm(f.algorithm))
    self.mesh = train.seed_mesh()
    self.products = None  # Win-rate products per step.

  def _layout(self, num_seeds, block, games):
    """The trainer's inputs for ``num_seeds`` seeds in blocks of ``block``,
    laid out as :func:`nash_jax.train.train` does (seed ``s`` in lane
    ``s mod block``), and the initial state."""
    devices = self.mesh.devices.size
    gather, _ = train.seed_layout(0, num_seeds, block, devices)
    sharded = jax.sharding.NamedSharding(self.mesh,
                                         jax.sharding.PartitionSpec('seeds'))
    replicated = jax.sharding.NamedSharding(self.mesh,
                                            jax.sharding.PartitionSpec())
    identity = np.array_equal(gather, np.arange(num_seeds))

    def pad(x):  # No copy where the layout is the identity (large games).
      x = x if identity else jnp.take(jnp.asarray(x), gather, axis=0)
      return jax.device_put(x, sharded)

    keys = jax.random.split(jax.random.PRNGKey(1), num_seeds)
    log_eq = jnp.zeros((self.f.num_contexts, self.n), self.dtype)
    hyper = {'beta': np.full(num_seeds, BETA, self.dtype)}
    hyper, keys = jax.tree.map(pad, (hyper, keys))
    if self.shared:
      env, eval_data = jax.device_put((games, log_eq), replicated)
    else:
      log_eq = jnp.broadcast_to(log_eq, (num_seeds,) + log_eq.shape)
      env, eval_data = jax.tree.map(pad, (games, log_eq))
    num_blocks = jnp.int32(train.blocks_to_run(0, num_seeds, block, devices))
    init = train.make_initializer(self.make, _no_metrics, self.shared, block,
                                  self.mesh)
    state, _ = init(num_blocks, hyper, keys, env, eval_data)
    return num_blocks, hyper, state, env, eval_data

  def _estimate(self, num_seeds, block):
    """Rough seconds of one step of ``num_seeds`` seeds (to size ``K``):
    a third of the limits, at least a few microseconds per block."""
    blocks = -(-num_seeds // block)
    work = 2 * block * self.f.num_contexts * self.n ** 2
    if self.shared:
      seconds = work / (0.3 * self.limits[self.dtype])
    else:
      seconds = work / 2 * np.dtype(self.dtype).itemsize / (
          0.3 * self.limits['bandwidth'])
    return blocks * max(seconds, 3e-6)

  def _timer(self, num_seeds, block, games):
    """A warm function running one compiled chunk of ``K`` steps, ``K`` at
    least :data:`MIN_STEPS` and sized so that a call takes about
    ``--seconds``: ``(call, K)``."""
    inputs = self._layout(num_seeds, block, games)
    steps = int(min(MAX_STEPS, max(MIN_STEPS, self.f.seconds /
                                   self._estimate(num_seeds, block))))
    for _ in range(4):
      runner = train.make_chunk_runner(self.make, _no_metrics, steps,
                                       self.shared, block, self.mesh)
      call = lambda r=runner: jax.block_until_ready(r(*inputs))
      state, _ = call()
      seconds = common.best_time(call, 1)
      if seconds > self.f.seconds / 3 or steps >= MAX_STEPS:
        break
      steps = int(min(MAX_STEPS, steps * min(64, max(
          2, 1.2 * self.f.seconds / max(seconds, 1e-6)))))
    self.products = float(state.preference_queries[0] -
                          inputs[2].preference_queries[0]) / steps
    return call, steps

  def timers(self, num_seeds, blocks, games):
    """``{block: (call, seed-steps per call)}`` of the trainer."""
    timers = {}
    for b in blocks:
      call, steps = self._timer(num_seeds, b, games)
      timers[b] = call, num_seeds * steps
    return timers

  def achieved(self, rate):
    """``(achieved, limit)``: GFLOP/s against the matmul rate (shared) or
    GB/s of preferences read against the bandwidth (per seed)."""
    size = self.products * self.f.num_contexts * self.n ** 2
    if self.shared:
      return rate * 2 * size / 1e9, self.limits[self.dtype] / 1e9
    return (rate * size * np.dtype(self.dtype).itemsize / 1e9,
            self.limits['bandwidth'] / 1e9)


def blocks_path(output: str) -> str:
  """Where the block trade-offs go: ``--output`` with ``_blocks`` before
  its extension (``results/benchmark_blocks.csv``)."""
  root, ext = os.path.splitext(output)
  return f'{root}_blocks{ext or ".csv"}'


def median_rates(timers: dict, repeats: int) -> dict:
  """Seed-steps per second of each of ``timers`` (``name -> (call,
  seed-steps per call)``): the median of ``repeats`` rounds in which they
  take turns, so that changes in the machine's load hit them alike."""
  seen = {name: [] for name in timers}
  for _ in range(repeats):
    for name, (call, seed_steps) in timers.items():
      seen[name].append(seed_steps / common.best_time(call, 1))
  return {name: float(np.median(r)) for name, r in seen.items()}


BLOCKS_HEADER = ['n', 'game', 'dtype', 'default', 'default_worst',
                 'minimax_block', 'minimax_worst', 'worst_by_block']


def block_tradeoffs(rows: list[dict]) -> list[list]:
  """What one block costs across the numbers of seeds of a setting.

  ``rows``: one dict per table row, with ``n``, ``game``, ``dtype``,
  ``block`` (the default) and ``rates`` (``{block: seed-steps/s}``). For each
  ``(n, game, dtype)`` and each block measured in every one of its rows, the
  block's *worst slowdown* is ``max over rows of best rate / its rate``: how
  much slower than that row's best block it is, in the row where it does
  worst. The default block may not depend on the number of seeds (seed ``i``
  of a sweep must equal its single run bit for bit, and another block may
  change the last bits), so the smallest worst slowdown is the best any
  default can do here. Returns rows of :data:`BLOCKS_HEADER`.
  """
  groups = {}
  for row in rows:
    groups.setdefault((row['n'], row['game'], row['dtype']), []).append(row)
  table = []
  for (n, game, dtype), members in groups.items():
    common_blocks = set.intersection(*(set(r['rates']) for r in members))
    worst = {b: max(max(r['rates'].values()) / r['rates'][b]
                    for r in members) for b in sorted(common_blocks)}
    default = members[0]['block']
    minimax = min(worst, key=worst.get)
    table.append([n, game, dtype, default, worst.get(default, math.nan),
                  minimax, worst[minimax],
                  ' '.join(f'{b}:{w:.4g}' for b, w in worst.items())])
  return table


def numpy_timer(games, num_seeds, kind, dtype, f):
  """Nash-MP in NumPy, vectorized over seeds (``pi`` is ``[seeds, X,
  n]``): ``(call, seed-steps per call)``, a call taking about
  ``--seconds``; None for other algorithms."""
  if f.algorithm != 'nash_mp':
    return None
  prefs = np.asarray(games.preferences, dtype)
  log_ref = np.asarray(games.log_ref_policy, dtype)
  if kind == 'shared':
    log_ref = np.broadcast_to(log_ref, (num_seeds,) + log_ref.shape)
    transposed = np.ascontiguousarray(np.swapaxes(prefs, -1, -2))

    def win_rates(pi):  # [X, S, n] x [X, n, n]: one product per context.
      return np.swapaxes(np.swapaxes(pi, 0, 1) @ transposed, 0, 1)
  else:
    def win_rates(pi):  # A batched matrix-vector product.
      return np.matmul(prefs, pi[..., None])[..., 0]
  eta = 2 * BETA
  kappa, lam = eta / (1 + eta), eta / (BETA * (1 + eta))

  def normalize(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

  def steps(count):
    log_pi = log_ref.copy()
    for _ in range(count):
      base = kappa * log_ref + (1 - kappa) * log_pi
      half = normalize(base + lam * win_rates(np.exp(log_pi)))
      log_pi = normalize(base + lam * win_rates(np.exp(half)))
    return log_pi

  steps(1)
  once = common.best_time(lambda: steps(1), 2)
  count = max(1, int(f.seconds / max(once, 1e-7)))
  return (lambda: steps(count)), num_seeds * count


def _memory_probe(steps):
  """Runs ``steps`` steps, evaluating every 1000; prints peak RSS bytes."""
  game = _games(10, 1, 'shared', jnp.float32, 1)
  log_eq = jnp.full((1, 10), -jnp.log(10.0), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  evaluation.train_on_game(_algorithm('nash_mp'), BETA, keys, game, log_eq,
                           num_steps=steps, eval_every=1000,
                           shared_game=True)
  print(peak_rss())


def peak_rss() -> int:
  """Peak resident bytes of this process: ``VmHWM`` of
  ``/proc/self/status`` (``ru_maxrss`` where there is none, which on Linux
  also counts the parent's peak before ``exec``)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_check(f):
  """Peak host RSS of 1e5 and 1e6 steps, each in a fresh process."""
  for steps in (100_000, 1_000_000):
    start = time.time()
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.benchmark',
         f'--memory_steps={steps}', f'--output={f.output}'],
        capture_output=True, text=True)
    if result.returncode != 0:
      print(f'memory: {steps} steps failed: '
            f'{result.stderr.strip().splitlines()[-1:]}')
      continue
    rss = int(result.stdout.strip().splitlines()[-1])
    print(f'memory: {steps:>9} steps (eval every 1000, 4 seeds, n=10): '
          f'peak host RSS {rss / 2**20:.0f} MiB '
          f'({time.time() - start:.0f}s)', flush=True)


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  f = flags.FLAGS
  sizes, seeds, blocks = check_flags(f)
  jax.config.update('jax_enable_x64', True)
  if f.memory_steps:
    _memory_probe(f.memory_steps)
    return
  start = time.time()
  platform = jax.devices()[0].platform
  device = jax.devices()[0]
  print(f'device: {platform} {device.device_kind} x{jax.device_count()}, '
        f'{os.cpu_count()} CPU cores; loadavg at start {common.loadavg()}',
        flush=True)
  limits = measure_limits(f)
  print(common.table_line(HEADER, 10))
  rows, by_block = [], []
  for kind in f.games:
    for dtype in f.dtypes:
      for n in sizes:
        row_set = Row(n, kind, dtype, limits, f)
        default = f.seed_block or seed_blocks.default_seed_block(
            platform, kind == 'shared', n, num_contexts=f.num_contexts)
        loop = None
        for s in seeds:
          game_bytes = s * f.num_contexts * n * n * np.dtype(dtype).itemsize
          if kind == 'per_seed' and game_bytes > f.max_game_mib * 2 ** 20:
            print(f'skipped n={n} seeds={s} {kind} {dtype}: games take '
                  f'{game_bytes / 2 ** 20:.0f} MiB > --max_game_mib',
                  flush=True)
            continue
          games = _games(n, s, kind, dtype, f.num_contexts)
          if loop is None:  # One seed alone, block 1.
            one = games if kind == 'shared' else jax.tree.map(
                lambda x: x[:1], games)
            loop = row_set.timers(1, [1], one)[1]
          # A block above the seeds pads the layout with copies of the
          # games (train.seed_layout: at least two blocks per device).
          padded = lambda b: len(train.seed_layout(
              0, s, b, row_set.mesh.devices.size)[0])
          candidates = [default] + [
              b for b in blocks if b != default and (
                  kind == 'shared' or b <= s or
                  padded(b) * game_bytes / s <= f.max_game_mib * 2 ** 20)]
          timers = row_set.timers(s, candidates, games)
          timers['loop'] = loop
          plain = numpy_timer(games, s, kind, dtype, f)
          if plain is not None:
            timers['numpy'] = plain
          measured = median_rates(timers, f.repeats)
          rates = {b: measured[b] for b in candidates}
          plain = measured.get('numpy', math.nan)
          best_block = max(rates, key=rates.get)
          rate = rates[default]
          achieved, limit = row_set.achieved(rate)
          row = [n, s, kind, dtype, default, rate, best_block,
                 rates[best_block], rates[best_block] / rate, plain,
                 measured['loop'], rate / plain, rate / measured['loop'],
                 achieved, limit, achieved / limit]
          rows.append(row + [' '.join(f'{b}:{r:.4g}' for b, r in
                                      sorted(rates.items()))])
          by_block.append({'n': n, 'game': kind, 'dtype': dtype,
                           'block': default, 'rates': rates})
          print(common.table_line(row, 10), flush=True)
          del games
  print('limits again, at the end (on an idle machine the two agree):')
  end = measure_limits(f)
  # The table's limits: the larger of the two measurements (a loaded
  # machine measures its limits low; the fractions above used the first).
  for row in rows:
    key = row[3] if row[2] == 'shared' else 'bandwidth'
    row[14] = max(limits[key], end[key]) / 1e9
    row[15] = row[13] / row[14]
  print('the table, with the larger of the two limits:')
  print(common.table_line(HEADER, 10))
  for row in rows:
    print(common.table_line(row[:-1], 10))
  common.write_table(f.output, CSV_HEADER, rows)
  print(f'wrote {f.output} (rates in seed-steps per second; achieved and '
        'limit in GFLOP/s for shared games, GB/s for per-seed games)')
  tradeoffs = block_tradeoffs(by_block)
  print('one block for every number of seeds: worst slowdown against the '
        'best block of each row')
  print(common.table_line(BLOCKS_HEADER[:-1], 10))
  for row in tradeoffs:
    print(common.table_line(row[:-1], 10))
  blocks_output = blocks_path(f.output)
  common.write_table(blocks_output, BLOCKS_HEADER, tradeoffs)
  print(f'wrote {blocks_output}')
  if f.memory:
    memory_check(f)
  print(f'loadavg at end {common.loadavg()}; {time.time() - start:.0f}s in all')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
