"""Cross-play win rates (nash_jax/crossplay.py, experiments/crossplay.py):
the exact matrix against a loop over contexts and responses and its
identities (W + W^T = 1, W_ii = 1/2), the sampled matrix against the exact
one within its intervals (with a negative control), and the binary end to
end on two runs of one game file, with its refusals."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from refusals import assert_refused, run_table

from nash_jax import crossplay
from nash_jax.games import generate_game

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _game_and_policies(num_policies=3, seed=0):
  game = generate_game(jax.random.PRNGKey(seed), 'random', 3, 5, 'random')
  rng = np.random.default_rng(seed)
  policies = rng.dirichlet(np.ones(5), size=(num_policies, 3))
  return game, policies


def test_exact_win_rates_against_a_loop():
  game, policies = _game_and_policies()
  prefs = np.asarray(game.preferences, np.float64)
  rho = np.asarray(game.context_weights, np.float64)
  w = crossplay.exact_win_rates(policies, prefs, rho)
  k = len(policies)
  loop = np.zeros((k, k))
  for i in range(k):
    for j in range(k):
      for x in range(3):
        for a in range(5):
          for b in range(5):
            loop[i, j] += rho[x] * policies[i, x, a] * prefs[x, a, b] * \
                policies[j, x, b]
  np.testing.assert_allclose(w, loop, rtol=1e-12)
  np.testing.assert_allclose(w + w.T, 1.0, atol=1e-6)
  np.testing.assert_allclose(np.diag(w), 0.5, atol=1e-6)


@pytest.mark.parametrize('outcome', ['bernoulli', 'probability'])
def test_sampled_win_rates_cover_the_exact_ones(outcome):
  game, policies = _game_and_policies(4, seed=1)
  exact = crossplay.exact_win_rates(policies, game.preferences,
                                    game.context_weights)
  est = crossplay.sampled_win_rates(jax.random.PRNGKey(0), policies,
                                    game.preferences, game.context_weights,
                                    4000, outcome)
  assert est['comparisons'] == 4000
  z = np.abs(est['mean'] - exact) / est['stderr']
  # 16 cells at 5 standard errors (fixed key).
  assert np.all(z < 5), z
  inside = (est['low'] <= exact) & (exact <= est['high'])
  assert inside.mean() >= 0.75
  # Negative control: against the policies' reversed order, the estimates
  # miss the exact matrix by many standard errors.
  wrong = np.abs(est['mean'] - exact[::-1, ::-1]) / est['stderr']
  assert np.max(wrong) > 10


def _run(args, cwd):
  return subprocess.run([sys.executable, '-m', 'experiments.crossplay'] +
                        args, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def _fake_run(path, algorithm, policy, seed=0):
  """A finished run directory as the binaries write it (the files
  crossplay reads)."""
  os.makedirs(path)
  np.save(os.path.join(path, 'final_policy.npy'), policy)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({'algorithm': algorithm, 'seed': seed}, f)
  with open(os.path.join(path, 'summary.json'), 'w') as f:
    json.dump({'final': [{'preference_queries': 640}] * len(policy),
               'wall_time_s': 1.5,
               'cost': {'training_flops': 1e9}}, f)


def test_binary_end_to_end_and_refusals(tmp_path):
  game, policies = _game_and_policies(2)
  game_file = str(tmp_path / 'game.npz')
  np.savez(game_file, preferences=np.asarray(game.preferences),
           ref_policy=np.asarray(game.ref_policy),
           context_weights=np.asarray(game.context_weights))
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  _fake_run(a, 'nash_prox', policies[:1])
  _fake_run(b, 'dpo', np.stack([policies[1], policies[0]]))
  out = str(tmp_path / 'out')
  done = _run([f'--runs={a},{b}', f'--game={game_file}',
               '--comparisons=500', f'--output_dir={out}',
               '--seed_index=0'], ROOT)
  assert done.returncode == 0, done.stderr
  record = json.load(open(os.path.join(out, 'crossplay.json')))
  names = [p['name'] for p in record['policies']]
  assert names == ['pi_ref', 'nash_prox', 'dpo']
  exact = np.asarray(record['exact'])
  expected = crossplay.exact_win_rates(
      np.stack([game.ref_policy, policies[0], policies[1]]),
      game.preferences, game.context_weights)
  np.testing.assert_allclose(exact, expected, rtol=1e-6)
  assert record['policies'][1]['cost']['preference_queries'] == 640
  assert record['policies'][1]['cost']['training_flops'] == 1e9
  lines = open(os.path.join(out, 'crossplay.csv')).read().splitlines()
  assert lines[0] == 'row,column,exact,mean,low,high,comparisons'
  assert len(lines) == 1 + 9
  # Refusals: one line, exit 2, nothing written.
  table = [([f'--runs={a},{tmp_path}/missing', f'--game={game_file}'],
            '--runs'),
           ([f'--runs={a}', '--seed_index=1', f'--game={game_file}'],
            '--seed_index'),
           ([f'--runs={a}', '--comparisons=1', f'--game={game_file}'],
            '--comparisons'),
           ([f'--runs={a}'], '--game')]
  results = run_table('experiments.crossplay', table, tmp_path / 'bad',
                      lambda out, args: [*args, f'--output_dir={out}'])
  for (_, flag), (outcome, bad) in zip(table, results):
    assert_refused(outcome, f'error: {flag}', bad)
