"""Sharding the seed axis over devices: 8 fake CPU devices against one.

XLA_FLAGS must be set before JAX starts, so the comparison runs in a fresh
Python process.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import fake_devices_env

SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_enable_x64', True)
    from nash_jax import algorithms, evaluation, policies, train
    from nash_jax.algorithms import AlgorithmConfig
    from nash_jax.games import generate_game
    POLICY = policies.make_tabular('random')
    assert jax.device_count() == 8, jax.devices()
    num_seeds = 5  # not divisible by the device count
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    games = jax.vmap(lambda k: generate_game(k, 'random', 2, 7, 'random',
                                             jnp.float64))(keys)
    log_eq = jnp.full((num_seeds, 2, 7), -jnp.log(7.0))
    for name in ('nash_mp', 'omwu', 'self_play_pg'):
      config = algorithms.resolve_config(name, AlgorithmConfig(
          beta=0.1), 2)
      alg = algorithms.make_algorithm(name, config, POLICY)
      results = {}
      for devices in (1, 8):
        for block in (1, 2):
          mesh = train.seed_mesh(devices)
          results[devices, block] = evaluation.train_on_game(
              alg, 0.1, keys, games, log_eq, num_steps=7, eval_every=3,
              shared_game=False, first_seed=2, seed_block=block, mesh=mesh)
      for block in (1, 2):
        (s1, r1), (s8, r8) = results[1, block], results[8, block]
        jax.tree.map(np.testing.assert_array_equal, s1, s8)
        for a, b in zip(r1, r8):
          for k in a:
            np.testing.assert_array_equal(a[k], b[k])
      # The state really was spread over the devices.
      assert len(results[8, 1][0].params) == num_seeds
    game = jax.tree.map(lambda x: x[0], games)
    alg = algorithms.make_algorithm('nash_mp', algorithms.resolve_config(
        'nash_mp', AlgorithmConfig(beta=0.1), 2), POLICY)
    one = evaluation.train_on_game(alg, 0.1, keys, game, log_eq[0], num_steps=4,
                      eval_every=2, shared_game=True,
                      mesh=train.seed_mesh(1))
    eight = evaluation.train_on_game(alg, 0.1, keys, game, log_eq[0], num_steps=4,
                        eval_every=2, shared_game=True,
                        mesh=train.seed_mesh(8))
    jax.tree.map(np.testing.assert_array_equal, one[0], eight[0])
    print('DEVICES OK')
''')


@pytest.mark.slow
def test_eight_fake_devices_match_one_device_bit_for_bit():
  result = subprocess.run([sys.executable, '-c', SCRIPT],
                          env=fake_devices_env(8),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'DEVICES OK' in result.stdout


COMPARE_SCRIPT = textwrap.dedent('''
    import csv, sys
    import numpy as np
    one, two = sys.argv[1:]
    assert (np.load(one + '/final_policy.npy').tobytes() ==
            np.load(two + '/final_policy.npy').tobytes())
    a = list(csv.DictReader(open(one + '/metrics.csv')))
    b = list(csv.DictReader(open(two + '/metrics.csv')))
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
      for k in ('seed', 'step', 'preference_queries'):
        assert x[k] == y[k], (k, x, y)
      for k in x:
        assert abs(float(x[k]) - float(y[k])) <= 1e-15, (k, x[k], y[k])
    print('PROMISE OK')
''')


@pytest.mark.slow
def test_two_fake_devices_keep_the_readme_promise(tmp_path):
  # README "Devices and several hosts": training bit-identical across
  # device counts (final_policy.npy, steps, queries), metrics to 1e-15.
  args = ['--mode=sampled', '--algorithm=nash_prox', '--num_actions=6',
          '--num_seeds=3', '--seed_block=2', '--num_steps=60',
          '--eval_every=10', '--batch_size=8', '--checkpoint_every=0']
  procs = []
  for devices in (1, 2):
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'experiments.matrix_game', *args,
         f'--output_dir={tmp_path / str(devices)}'],
        env=fake_devices_env(devices),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  result = subprocess.run([sys.executable, '-c', COMPARE_SCRIPT,
                           str(tmp_path / '1'), str(tmp_path / '2')],
                          capture_output=True, text=True, timeout=120)
  assert 'PROMISE OK' in result.stdout, result.stderr[-3000:]
