"""Tests of ``python -m experiments.reproduce`` and nash_jax/figures/.

One end-to-end run of the binary at the hidden ``--scale=test`` (most of
its time compilation) feeds the file and content checks; the refusals of bad
flags run as separate processes beside it. All of these are marked slow.
Unit tests check the figures' helpers against closed forms.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FAST_COMPILE, child_env

from nash_jax import figures, reference, stability
from nash_jax.figures import common, convergence, num_responses, sampled
from nash_jax.games import generate_game

ROOT = Path(__file__).parents[1]
ABSL_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')
TIMEOUT_S = 300


def _start(*args):
  # With FAST_COMPILE: every check below holds with a tolerance, not to the
  # bit, so none depends on XLA's backend optimizations.
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.reproduce', *args], cwd=ROOT,
      env=child_env(FAST_COMPILE, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
  out, err = process.communicate(timeout=TIMEOUT_S)
  return process.returncode, out, err


def _error_lines(stderr):
  return [line for line in stderr.splitlines()
          if line.strip() and not ABSL_LOG_LINE.match(line)]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The test-scale run, and the bad-flag runs started beside it."""
  root = tmp_path_factory.mktemp('reproduce')
  out = root / 'out'
  a_file = root / 'a_file'
  a_file.write_text('not a directory')
  bad = {
      'scale': (['--scale=huge', f'--output_dir={root / "bad1"}'],
                '--scale'),
      'figure': (['--figures=convergence,nope', '--scale=test',
                  f'--output_dir={root / "bad2"}'], '--figures'),
      'plot_only': (['--plot_only', f'--output_dir={root / "bad3"}'],
                    '--plot_only'),
      'output_dir': ([f'--output_dir={a_file}', '--scale=test'],
                     '--output_dir'),
      'argument': (['stray', f'--output_dir={root / "bad4"}'],
                   'unexpected arguments'),
  }
  main = _start('--scale=test', f'--output_dir={out}')
  started = {k: _start(*args) for k, (args, _) in bad.items()}
  refused = {k: (_finish(p), bad[k][1]) for k, p in started.items()}
  result = _finish(main)
  return {'out': out, 'root': root, 'main': result, 'refused': refused}


@pytest.mark.slow
def test_run_succeeds_and_writes_every_file(runs):
  rc, out, err = runs['main']
  assert rc == 0, err
  assert 'done in' in out
  for name in figures.FIGURES:
    directory = runs['out'] / name
    result = json.loads((directory / 'result.json').read_text())
    assert result['figure'] == name and result['scale'] == 'test'
    assert result['outputs']
    for csv_name in result['outputs']:
      assert csv_name.endswith('.csv')
      assert len(common.read_csv(directory / csv_name)) > 0
    assert (directory / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (directory / f'{name}.pdf').read_bytes()[:5] == b'%PDF-'
    assert figures.missing_results(name, str(directory)) is None


@pytest.mark.slow
def test_convergence_csv(runs):
  directory = runs['out'] / 'convergence'
  rows = common.read_csv(directory / 'convergence.csv')
  rates = {r['algorithm']: r for r in common.read_csv(
      directory / 'convergence_rates.csv')}
  # Nash-MP's geometric-mean KL falls at every evaluation (well above the
  # float64 floor here) and stays under the claimed bound.
  _, kl, _ = convergence._curves(rows, 0.1, 'nash_mp', 'preference_queries')
  mean = common.log_band(kl, axis=1)[1]
  assert mean[-1] > 1e-13
  assert np.all(np.diff(mean) < 0)
  assert rates['nash_mp']['fraction_within_bound'] == 1.0
  assert rates['nash_mp']['fitted_rate'] <= rates['nash_mp']['claimed_rate']
  np.testing.assert_allclose(rates['nash_mp']['claimed_rate'], 1.2 ** -0.5)
  assert rates['proximal_point']['fraction_within_bound'] == 1.0
  assert rates['proximal_point']['rate_unit'] == 'outer_step'
  assert rates['nash_mp']['reached_kl_1e-6'] == 1.0
  assert {r['algorithm'] for r in rows} == {'nash_mp', 'omd',
                                            'proximal_point'}
  assert len({r['seed'] for r in rows}) == 3


@pytest.mark.slow
def test_num_responses_csv(runs):
  rows = common.read_csv(runs['out'] / 'num_responses' / 'num_responses.csv')
  assert {r['num_actions'] for r in rows} == {5.0, 20.0}
  for r in rows:
    assert np.isfinite(r['queries_to_threshold'])
    assert r['queries_to_threshold'] <= r['claimed_queries'] + 2
  # n = 20 is above the test config's newton_max_actions: its reference is
  # certified by a span residual well below 1e-9.
  big = [r for r in rows if r['num_actions'] == 20]
  assert all(r['reference'] == 'certified_extragradient' for r in big)
  assert all(r['reference_span'] < 1e-9 for r in big)


@pytest.mark.slow
def test_nash_vs_reward_csv(runs):
  directory = runs['out'] / 'nash_vs_reward'
  per_game = {name: common.read_csv(directory / f'nash_vs_reward_{name}.csv')
              for name in ('rock_paper_scissors', 'cyclic', 'population',
                           'bradley_terry')}
  for name, rows in per_game.items():
    for r in rows:
      # A von Neumann winner cannot be exploited and never loses.
      assert abs(r['exploitability_nash']) < 1e-7, name
      assert r['exploitability_nash'] <= r['exploitability_bt_greedy'] + 1e-7
      assert r['win_rate_nash_vs_bt_greedy'] >= 0.5 - 1e-7
  for r in per_game['rock_paper_scissors']:
    assert r['condorcet_winner'] == 0
    assert r['exploitability_bt_greedy'] > 0.01
  for r in per_game['bradley_terry']:
    # The fit is exact on a transitive BT game (rewards recovered up to a
    # constant) and its argmax is the Condorcet winner.
    assert r['bt_misfit'] < 1e-8
    assert r['condorcet_winner'] == 1
    assert abs(r['exploitability_bt_greedy']) < 1e-7
  summary = common.read_csv(directory / 'nash_vs_reward.csv')
  assert {s['game'] for s in summary} == set(per_game)


@pytest.mark.slow
def test_stability_csv(runs):
  rows = stability.read_csv(runs['out'] / 'stability' / 'stability.csv')
  cells = {(r['algorithm'], r['beta'], r['learning_rate']) for r in rows}
  assert cells == {(a, b, lr) for a in ('online_ipo', 'nash_prox')
                   for b in (0.1, 0.01) for lr in (0.03, 1.0)}
  assert len(rows) == len(cells)
  for r in rows:
    assert r['num_seeds'] == 4
    assert r['preference_queries'] >= 3_200
    for key in ('fraction_converged', 'fraction_diverged'):
      assert 0 <= r[key] <= 1
    assert r['fraction_converged'] + r['fraction_diverged'] <= 1
    quantiles = [r[f'kl_{q}'] for q in ('min', 'q10', 'median', 'q90',
                                        'max')]
    assert quantiles == sorted(quantiles) and quantiles[0] >= 0
  # The stability limit shows even here: online IPO at beta = 0.01 with an
  # sgd step of 1 ends farther from pi*_beta than pi_ref on most games.
  worst = [r for r in rows if r['algorithm'] == 'online_ipo' and
           r['beta'] == 0.01 and r['learning_rate'] == 1.0][0]
  assert worst['fraction_diverged'] > 0.5
  # One result directory per algorithm and cell.
  runs_dir = runs['out'] / 'stability' / 'runs'
  assert len(list(runs_dir.glob('*/beta=*/summary.json'))) == len(rows)


@pytest.mark.slow
def test_sampled_csv(runs):
  directory = runs['out'] / 'sampled'
  rows = common.read_csv(directory / 'sampled.csv')
  summary = common.read_csv(directory / 'sampled_summary.csv')
  assert {(s['panel'], s['algorithm'], s['policy'], s['batch_size'])
          for s in summary} == {('policies', 'nash_prox', 'loglinear', 64),
                                ('batch', 'nash_prox', 'tabular', 16),
                                ('batch', 'nash_prox', 'tabular', 64)}
  for s in summary:
    assert 0 <= s['fraction_converged'] <= 1
    assert s['preference_queries'] >= 640
    assert s['num_seeds'] == 2
    assert 0 < s['kl_final_q25'] <= s['kl_final_median'] <= s['kl_final_q75']
    assert np.isfinite(s['kl_floor_median'])
    # Learning moved every run towards pi*_beta.
    assert s['kl_final_median'] < s['kl_initial_median']
  for s in summary:
    key = {k: s[k] for k in ('panel', 'batch_size', 'policy')}
    for seed in (0, 1):
      run = [r for r in rows if r['seed'] == seed and
             all(r[k] == v for k, v in key.items())]
      queries = [r['preference_queries'] for r in run]
      steps = [r['step'] for r in run]
      assert queries[0] == 0 and queries[-1] >= 640
      assert np.all(np.diff(queries) > 0) and np.all(np.diff(steps) > 0)
      # One query per comparison, batch_size comparisons a step.
      np.testing.assert_array_equal(queries, np.asarray(steps) *
                                    s['batch_size'])
      assert all(np.isfinite(r['kl_to_equilibrium']) for r in run)


@pytest.mark.slow
def test_language_model_csvs(runs):
  directory = runs['out'] / 'language_model'
  stab = common.read_csv(directory / 'lm_stability.csv')
  assert {(r['algorithm'], r['beta'], r['learning_rate']) for r in stab} == {
      (a, 0.1, lr) for a in ('online_ipo', 'nash_prox') for lr in (0.01, 0.3)}
  for r in stab:
    assert r['num_seeds'] == 2 and r['preference_queries'] >= 80
    assert 0 <= r['fraction_converged'] <= 1
    assert r['kl_min'] <= r['kl_median'] <= r['kl_max']
  kl = common.read_csv(directory / 'lm_kl.csv')
  assert list(dict.fromkeys(r['algorithm'] for r in kl)) == [
      'online_ipo', 'nash_prox', 'dpo']
  # Every run starts at pi_ref: one KL(pi* || pi_ref) for all at step 0.
  start = {r['kl_to_equilibrium'] for r in kl if r['step'] == 0}
  assert len(start) == 1
  last = max(r['step'] for r in kl)
  for name in ('online_ipo', 'nash_prox'):
    queries = common.column(kl, 'preference_queries', algorithm=name,
                            step=last)
    assert np.all(queries >= 80)
    # The comparison's run is the stability cell at its (beta, lr).
    final = common.column(kl, 'kl_to_equilibrium', algorithm=name,
                          step=last)
    cell = [r for r in stab if r['algorithm'] == name and
            r['learning_rate'] == 0.01][0]
    np.testing.assert_allclose(np.median(final), cell['kl_median'],
                               rtol=1e-12)
  # dpo asks its 80 queries up front.
  assert set(common.column(kl, 'preference_queries', algorithm='dpo')) == {
      80}
  cross = common.read_csv(directory / 'lm_crossplay.csv')
  names = ['pi_ref', 'online_ipo', 'nash_prox', 'dpo']
  w = np.asarray([[common.column(cross, 'win_rate', row=a, column=b)[0]
                   for b in names] for a in names])
  np.testing.assert_allclose(w + w.T, 1, atol=1e-12)
  np.testing.assert_allclose(np.diag(w), 0.5, atol=1e-12)
  # W[dpo, pi_ref] from the run's own files, by an independent formula.
  run = directory / 'runs' / 'comparison' / 'dpo'
  game = np.load(run / 'game.npz')
  pi = np.load(run / 'final_policy.npy').mean(0)
  ref = game['ref_policy'] / game['ref_policy'].sum(-1, keepdims=True)
  expected = sum(
      rho * pi[x] @ game['preferences'][x] @ ref[x]
      for x, rho in enumerate(game['context_weights']))
  np.testing.assert_allclose(w[3, 0], expected, rtol=1e-9)


def test_sampled_floor():
  kl = np.asarray([[1.0, 2.0]] * 7 + [[0.1, 0.4], [0.3, 0.2]])   # [T=9, 2]
  # The last quarter of 8 steps after the first evaluation: 2 evaluations.
  np.testing.assert_allclose(sampled.floor(kl), [0.2, 0.3])
  np.testing.assert_allclose(sampled.floor(kl[:2]), [1.0, 2.0])
  # 10 steps in chunks of ceil(10 / 4) = 3: 12 steps; 11 -> 11 in chunks
  # of 1.
  assert common.sampled_schedule(640, 64, 4) == (12, 3)
  assert common.sampled_schedule(641, 64, 11) == (11, 1)
  assert common.sampled_schedule(200_000, 64, 50) == (3150, 63)


@pytest.mark.slow
def test_plot_only_redraws_without_recomputing(runs):
  out = runs['out']
  before = {p: p.stat().st_mtime_ns for p in out.rglob('*')
            if p.suffix in ('.csv', '.json', '.npy')}
  images = {p: p.stat().st_mtime_ns for p in out.glob('*/*.png')}
  rc, stdout, err = _finish(_start('--plot_only', f'--output_dir={out}'))
  assert rc == 0, err
  assert 'claim' not in stdout   # no figure was computed
  assert {p: p.stat().st_mtime_ns for p in before} == before
  # Each figure's image (language_model draws a second one).
  assert {p.parent.name for p in images if p.stem == p.parent.name} == set(
      figures.FIGURES)
  for path, mtime in images.items():
    assert path.stat().st_mtime_ns > mtime


@pytest.mark.slow
def test_bad_flags_are_refused_with_one_line(runs):
  for name, ((rc, out, err), flag) in runs['refused'].items():
    lines = _error_lines(err)
    assert rc == 2, (name, err)
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith('error: '), name
    assert flag in lines[0], (name, lines[0])
  for bad in ('bad1', 'bad2', 'bad3', 'bad4'):
    assert not (runs['root'] / bad).exists()


def test_certified_equilibrium_matches_newton():
  game = generate_game(jax.random.PRNGKey(3), 'random', 2, 30, 'random',
                       jnp.float64)
  for beta in (0.1, 0.01):
    pi, span = num_responses.certified_equilibrium(game, beta)
    newton = reference.regularized_equilibrium(
        np.asarray(game.preferences), np.asarray(game.ref_policy), beta)
    assert span < 1e-10
    kl = np.sum(newton * np.log(newton / pi), axis=-1)
    # The certificate: KL(pi* || pi) <= span^2 / 2, here ~5e-21, below what
    # the KL formula resolves in float64 (~1e-15 with a Dirichlet pi_ref).
    assert np.all(kl <= span ** 2 / 2 + 1e-14)
    log_ratio = np.log(pi) - np.log(newton)
    assert np.max(np.ptp(log_ratio, axis=-1)) < 1e-8


def test_rate_helpers():
  queries = np.arange(0, 100, 2)
  kl = 0.3 * 0.9 ** queries
  np.testing.assert_allclose(convergence.fitted_rate(queries, kl), 0.9)
  np.testing.assert_allclose(convergence.nash_mp_bound(10, 0.1), 1.2 ** -5)
  np.testing.assert_allclose(convergence.proximal_point_bound(3, 1.0), 1 / 8)
  # KL_0 (1 + 2 beta)^(-N/2) = threshold exactly at the claimed N.
  n = num_responses.claimed_queries(0.5, 1e-6, 0.1)
  np.testing.assert_allclose(0.5 * 1.2 ** (-n / 2), 1e-6)
  lo, mid, hi = common.log_band([[1e-2, 1e-4], [1e-2, 1e-4]], axis=1)
  np.testing.assert_allclose(mid, 1e-3)
  assert np.all(lo < mid) and np.all(mid < hi)
