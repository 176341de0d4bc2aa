r"""Throughput and memory of the exact tabular trainer.

  python -m experiments.benchmark                 # full table (~5 min, 2 CPUs)
  python -m experiments.benchmark --sizes=10,100 --seeds=1,16 --repeats=1

Throughput of one exact Nash-MP step (two win-rate evaluations), in seed-steps
per second, for every (n, seeds) pair, all seeds sharing one game:

* ``vmap``: the trainer with ``--seed_block`` = number of seeds (one vmapped
  block in one compiled call);
* ``blocked``: the trainer with ``--seed_block=1`` (seeds mapped one after
  another inside one compiled call; the bit-identical default);
* ``loop``: one compiled single-seed run per seed, from a Python loop;
* ``numpy``: the same update in plain NumPy, vectorized over seeds.

Ratios are against ``numpy`` in the same run. ``gflops`` is the achieved
rate of the ``vmap`` variant counting ``4 n^2`` FLOPs per seed-step (two
matrix-vector products) against the machine's matrix-multiply rate measured
here (``jnp.dot`` of two ``2048 x 2048`` matrices). The memory check runs
1e5 and 1e6 steps (evaluating every 1000) in fresh processes and prints their
peak host RSS: metrics are reduced on the device to evaluation points, so it
must not grow with the run length. Writes the table as CSV.
"""

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
from nash_jax import algorithms, evaluation, policies
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.games import generate_game

flags.DEFINE_list('sizes', ['10', '100', '1000'], 'Numbers of responses n.')
flags.DEFINE_list('seeds', ['1', '16', '256'], 'Numbers of seeds.')
flags.DEFINE_float('seconds', 0.5, 'Target time of one measurement.')
flags.DEFINE_integer('repeats', 3, 'Measurements per cell (best is kept).')
flags.DEFINE_bool('memory', True, 'Run the 1e5 / 1e6 step memory check.')
flags.DEFINE_string('output', 'results/benchmark.csv', 'CSV of the table.')
flags.DEFINE_integer('memory_steps', None, 'Internal: run a memory probe.')

BETA = 0.1


def _game(n):
  return generate_game(jax.random.PRNGKey(0), 'random', 1, n, 'uniform',
                       jnp.float32)


def _algorithm():
  config = algorithms.resolve_config('nash_mp', AlgorithmConfig(beta=BETA))
  return algorithms.make_algorithm('nash_mp', config, policies.make_tabular())


def _time(fn, target):
  """Seconds per call of ``fn`` (compiled already), best of a few."""
  fn()
  start = time.perf_counter()
  fn()
  once = max(time.perf_counter() - start, 1e-6)
  calls = max(1, int(target / once))
  best = float('inf')
  for _ in range(flags.FLAGS.repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def _setup(n, num_seeds):
  """Shared game, its (unused, uniform) reference, Nash-MP and seed keys."""
  log_eq = jnp.full((1, n), -jnp.log(float(n)), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(1), num_seeds)
  return _game(n), log_eq, _algorithm(), keys


def _trainer_rate(n, num_seeds, seed_block, steps):
  game, log_eq, alg, keys = _setup(n, num_seeds)

  def run():
    state, _ = evaluation.train_on_game(alg, BETA, keys, game, log_eq, num_steps=steps,
                           eval_every=steps, shared_game=True,
                           seed_block=seed_block)
    jax.block_until_ready(state.params)
  return num_seeds * steps / _time(run, flags.FLAGS.seconds)


def _loop_rate(n, num_seeds, steps):
  game, log_eq, alg, keys = _setup(n, num_seeds)

  def run():
    for i in range(num_seeds):
      state, _ = evaluation.train_on_game(alg, BETA, keys[i:i + 1], game, log_eq,
                             num_steps=steps, eval_every=steps,
                             shared_game=True)
    jax.block_until_ready(state.params)
  return num_seeds * steps / _time(run, flags.FLAGS.seconds)


def _numpy_rate(n, num_seeds, steps):
  """Nash-MP in NumPy, vectorized over seeds: ``pi`` is ``[seeds, n]``."""
  game = _game(n)
  prefs = np.asarray(game.preferences[0], np.float32)
  log_ref = np.asarray(game.log_ref_policy[0], np.float32)
  eta = 2 * BETA
  kappa, lam = eta / (1 + eta), eta / (BETA * (1 + eta))

  def normalize(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

  def run():
    log_pi = np.tile(log_ref, (num_seeds, 1))
    for _ in range(steps):
      base = kappa * log_ref + (1 - kappa) * log_pi
      half = normalize(base + lam * np.exp(log_pi) @ prefs.T)
      log_pi = normalize(base + lam * np.exp(half) @ prefs.T)
  return num_seeds * steps / _time(run, flags.FLAGS.seconds)


def _matmul_flops():
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  seconds = _time(lambda: f(a).block_until_ready(), 1.0)
  return 2 * 2048 ** 3 / seconds


def _memory_probe(steps):
  """Runs ``steps`` steps, evaluating every 1000; prints peak RSS bytes."""
  game = _game(10)
  log_eq = jnp.full((1, 10), -jnp.log(10.0), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  evaluation.train_on_game(_algorithm(), BETA, keys, game, log_eq, num_steps=steps,
              eval_every=1000, shared_game=True)
  print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if f.memory_steps:
    _memory_probe(f.memory_steps)
    return
  try:
    sizes = [int(s) for s in f.sizes]
    seeds = [int(s) for s in f.seeds]
  except ValueError:
    print('error: --sizes and --seeds take comma-separated integers',
          file=sys.stderr)
    sys.exit(2)
  if min(sizes) < 2 or min(seeds) < 1:
    print('error: --sizes must be >= 2 and --seeds >= 1', file=sys.stderr)
    sys.exit(2)
  peak = _matmul_flops()
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind} x'
        f'{jax.device_count()}, {os.cpu_count()} CPU cores; matmul '
        f'{peak / 1e9:.1f} GFLOP/s (float32)')
  header = ['n', 'seeds', 'vmap', 'blocked', 'loop', 'numpy', 'vmap/numpy',
            'blocked/numpy', 'loop/numpy', 'vmap/loop', 'gflops',
            'gflops/matmul']
  rows = []
  print(common.table_line(header, 13))
  for n in sizes:
    for s in seeds:
      steps = max(2, min(200, int(2e7 / (4 * n * n * s))))
      vmap = _trainer_rate(n, s, s, steps)
      blocked = _trainer_rate(n, s, 1, steps)
      loop = _loop_rate(n, s, steps)
      plain = _numpy_rate(n, s, steps)
      gflops = vmap * 4 * n * n / 1e9
      row = [n, s, vmap, blocked, loop, plain, vmap / plain, blocked / plain,
             loop / plain, vmap / loop, gflops, gflops * 1e9 / peak]
      rows.append(row)
      print(common.table_line(row, 13), flush=True)
  common.write_table(f.output, header, rows)
  print(f'wrote {f.output} (rates in seed-steps per second)')
  if f.memory:
    for steps in (100_000, 1_000_000):
      start = time.time()
      result = subprocess.run(
          [sys.executable, '-m', 'experiments.benchmark',
           f'--memory_steps={steps}'], capture_output=True, text=True,
          check=True)
      rss = int(result.stdout.strip().splitlines()[-1])
      print(f'memory: {steps:>9} steps (eval every 1000, 4 seeds, n=10): '
            f'peak host RSS {rss / 2**20:.0f} MiB '
            f'({time.time() - start:.0f}s)')


if __name__ == '__main__':
  app.run(main)
