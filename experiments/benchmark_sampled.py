r"""Throughput of the sampled step: preference queries per second.

  python -m experiments.benchmark_sampled          # full table (~12 min, 2 CPUs)
  python -m experiments.benchmark_sampled --algorithms=nash_prox \
      --policies=tabular --seeds=32

For every sampled algorithm and policy class, on one shared game (random
for tabular, annotators with d = 16 features otherwise; n = --num_actions,
--num_contexts contexts, beta = 0.1, batch --batch_size), the trainer's rate
in preference queries per second summed over seeds:

* ``vmap``: all seeds in one vmapped block (``seed_block`` = seeds);
* ``blocked``: ``seed_block = 1`` (seeds one after another inside one
  compiled call; the bit-identical default);
* ``loop``: one compiled single-seed run per seed from a Python loop (the
  baseline of the ratios).

Each measurement runs ``--steps`` steps with one evaluation at the end
(compiled beforehand); the best of ``--repeats`` is kept. Writes the table as
CSV.
"""

import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import common
from nash_jax import algorithms, evaluation, policies
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.games import generate_game

flags.DEFINE_list('algorithms', list(algorithms.SAMPLED_ALGORITHM_NAMES),
                  'Sampled algorithms.')
flags.DEFINE_list('policies', list(policies.POLICIES), 'Policy classes.')
flags.DEFINE_list('seeds', ['32'], 'Numbers of seeds.')
flags.DEFINE_integer('num_actions', 20, 'Responses n.')
flags.DEFINE_integer('num_contexts', 1, 'Contexts X.')
flags.DEFINE_integer('batch_size', 64, 'Comparisons per step.')
flags.DEFINE_integer('steps', 200, 'Steps per measurement.')
flags.DEFINE_integer('repeats', 3, 'Measurements per cell (best is kept).')
flags.DEFINE_string('output', 'results/benchmark_sampled.csv', 'CSV output.')

BETA = 0.1


def _setup(name, policy):
  f = flags.FLAGS
  game = generate_game(jax.random.PRNGKey(0),
                       'random' if policy == 'tabular' else 'annotators',
                       f.num_contexts, f.num_actions, 'uniform', jnp.float32,
                       feature_dim=16)
  config = AlgorithmConfig(beta=BETA, mode='sampled',
                           batch_size=f.batch_size)
  config = algorithms.resolve_config(name, config, f.num_contexts, 16, policy)
  algorithms.validate_config(name, config, policy)
  log_eq = jnp.full((f.num_contexts, f.num_actions),
                    -jnp.log(float(f.num_actions)), jnp.float32)
  algorithm = algorithms.make_algorithm(
      name, config, policies.make_policy(policies.PolicyConfig(policy)),
      make_tabular_environment())
  return algorithm, game, log_eq


def _rate(run, queries):
  run()  # compile
  best = float('inf')
  for _ in range(flags.FLAGS.repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return queries / best


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  f = flags.FLAGS
  try:
    seeds = [int(s) for s in f.seeds]
  except ValueError:
    common.fail('--seeds: must be comma-separated integers')
  if min(seeds) < 1 or f.steps < 1 or f.batch_size < 1:
    common.fail('--seeds, --steps and --batch_size must be >= 1')
  for flag, minimum in (('repeats', 1), ('num_actions', 2),
                        ('num_contexts', 1)):
    if f[flag].value < minimum:
      common.fail(f'--{flag}: must be >= {minimum}, got {f[flag].value}')
  common.check_output_file(f.output)
  for name in f.algorithms:
    if name not in algorithms.SAMPLED_ALGORITHMS:
      common.fail(f'--algorithms: unknown sampled algorithm {name!r}')
  for policy in f.policies:
    if policy not in policies.POLICIES:
      common.fail(f'--policies: unknown policy {policy!r}')
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind}, {os.cpu_count()} '
        f'CPU cores; n={f.num_actions}, X={f.num_contexts}, batch '
        f'{f.batch_size}, float32, {f.steps} steps per measurement')
  header = ['algorithm', 'policy', 'seeds', 'vmap', 'blocked', 'loop',
            'vmap/loop', 'blocked/loop']
  print(common.table_line(header, 14))
  rows = []
  for name in f.algorithms:
    for policy in f.policies:
      alg, game, log_eq = _setup(name, policy)
      for s in seeds:
        keys = jax.random.split(jax.random.PRNGKey(1), s)
        queries = s * f.steps * f.batch_size

        def trained(block, keys=keys):
          return lambda: jax.block_until_ready(evaluation.train_on_game(
              alg, BETA, keys, game, log_eq, num_steps=f.steps,
              eval_every=f.steps, shared_game=True, seed_block=block)[0])

        def loop(keys=keys):
          for i in range(keys.shape[0]):
            jax.block_until_ready(evaluation.train_on_game(
                alg, BETA, keys[i:i + 1], game, log_eq, num_steps=f.steps,
                eval_every=f.steps, shared_game=True)[0])

        vmap = _rate(trained(s), queries)
        blocked = _rate(trained(1), queries)
        looped = _rate(loop, queries)
        row = [name, policy, s, vmap, blocked, looped, vmap / looped,
               blocked / looped]
        rows.append(row)
        print(common.table_line(row, 14), flush=True)
  common.write_table(f.output, header, rows)
  print(f'wrote {f.output} (rates in preference queries per second)')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
