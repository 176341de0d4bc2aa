"""End-to-end runs of experiments.stability, experiments.benchmark and
experiments.benchmark_sampled at tiny sizes: they run, write what README.md
says, and refuse bad flags with one ``error:`` line."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from refusals import assert_refused, run_table

from nash_jax import seed_blocks

ROOT = Path(__file__).resolve().parents[1]


def _run(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_stability_study_writes_its_table_figure_and_cells(tmp_path):
  out = tmp_path / 'study'
  result = _run('experiments.stability', '--num_seeds=3', '--num_actions=5',
                '--betas=0.1', '--learning_rates=0.01,3', '--batch_size=8',
                '--query_budget=400', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(out / 'stability.csv')
  assert [(r['algorithm'], float(r['learning_rate'])) for r in rows] == [
      ('online_ipo', 0.01), ('online_ipo', 3.0), ('nash_prox', 0.01),
      ('nash_prox', 3.0)]
  for r in rows:
    assert int(r['num_seeds']) == 3
    # 400 queries at 8 a step, in whole evaluation chunks of 5 steps.
    assert int(r['preference_queries']) == 400
    converged, diverged = float(r['fraction_converged']), float(
        r['fraction_diverged'])
    assert 0 <= converged <= 1 and 0 <= diverged <= 1
    assert converged + diverged <= 1
    quantiles = [float(r[k]) for k in ('kl_min', 'kl_q10', 'kl_median',
                                       'kl_q90', 'kl_max')]
    assert quantiles == sorted(quantiles)
  # A step of 3 on an IPO loss at beta = 0.1 blows up online IPO.
  assert float(rows[1]['kl_median']) > float(rows[0]['kl_median'])
  for name in ('stability.png', 'stability.pdf'):
    assert (out / name).stat().st_size > 0
  for algorithm in ('online_ipo', 'nash_prox'):
    cells = sorted(p.name for p in (out / algorithm).iterdir() if p.is_dir())
    assert cells == ['beta=0.1_learning_rate=0.01', 'beta=0.1_learning_rate=3',
                     'checkpoints']
    policy = np.load(out / algorithm / cells[0] / 'final_policy.npy')
    assert policy.shape == (3, 1, 5)
    assert len(_rows(out / algorithm / 'sweep.csv')) == 2


STABILITY_REFUSALS = [
    (['--learning_rates=a,b'], '--learning_rates'),
    (['--betas='], '--betas'),
    (['--kl_threshold=0'], '--kl_threshold'),
    (['--anchor_tau=2'], '--anchor_tau'),
]


def test_stability_study_refuses_bad_flags_before_any_work(tmp_path):
  results = run_table('experiments.stability', STABILITY_REFUSALS, tmp_path,
                      lambda out, args: [*args, f'--output_dir={out}'])
  for (_, expected), (outcome, out) in zip(STABILITY_REFUSALS, results):
    assert_refused(outcome, f'error: {expected}', out)


@pytest.mark.slow
def test_benchmarks_write_their_tables(tmp_path):
  sampled = tmp_path / 'sampled.csv'
  result = _run('experiments.benchmark_sampled', '--algorithms=nash_prox',
                '--policies=tabular,loglinear', '--seeds=2', '--steps=5',
                '--repeats=1', f'--output={sampled}')
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(sampled)
  assert [(r['algorithm'], r['policy'], r['seeds']) for r in rows] == [
      ('nash_prox', 'tabular', '2'), ('nash_prox', 'loglinear', '2')]
  for r in rows:
    rates = [float(r[k]) for k in ('vmap', 'blocked', 'loop')]
    assert all(rate > 0 for rate in rates)
    np.testing.assert_allclose(float(r['vmap/loop']), rates[0] / rates[2])
  refused = _run('experiments.benchmark_sampled', '--policies=transformer',
                 f'--output={tmp_path / "x.csv"}')
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      "error: --policies: unknown policy 'transformer'"]


@pytest.mark.slow
def test_benchmark_writes_its_table_with_the_limits(tmp_path):
  out = tmp_path / 'exact.csv'
  result = _run('experiments.benchmark', '--sizes=4', '--seeds=1,2',
                '--games=shared,per_seed', '--dtypes=float32',
                '--blocks=1,2', '--repeats=1', '--seconds=0.01',
                '--matmul_size=64', '--bandwidth_mib=4', '--nomemory',
                f'--output={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith('device: cpu') and 'loadavg at start' in lines[0]
  limits = [line for line in lines if line.startswith('limits: ')]
  assert len(limits) == 2  # At the start and at the end.
  for name in ('matmul float32', 'matmul float64', 'read bandwidth'):
    assert name in limits[0]
  assert lines[-1].startswith('loadavg at end')
  rows = _rows(out)
  assert [(r['n'], r['seeds'], r['game']) for r in rows] == [
      ('4', '1', 'shared'), ('4', '2', 'shared'), ('4', '1', 'per_seed'),
      ('4', '2', 'per_seed')]
  for r in rows:
    # The default block of nash_jax.seed_blocks on this CPU.
    assert int(r['block']) == seed_blocks.default_seed_block(
        'cpu', r['game'] == 'shared', 4)
    rates = [float(r[k]) for k in ('rate', 'best', 'numpy', 'loop')]
    assert all(rate > 0 for rate in rates)
    measured = dict(item.split(':') for item in r['block_rates'].split())
    assert r['block'] in measured and r['best_block'] in measured
    # The blocks measured: the default and every block of --blocks (a run
    # with fewer seeds than its block pays for the whole block).
    assert set(measured) == {r['block'], '1', '2'}
    assert float(r['slowdown']) >= 1
    np.testing.assert_allclose(float(r['slowdown']),
                               rates[1] / rates[0], rtol=1e-9)
    np.testing.assert_allclose(float(r['rate/numpy']), rates[0] / rates[2])
    np.testing.assert_allclose(float(r['rate/loop']), rates[0] / rates[3])
    np.testing.assert_allclose(float(r['of_limit']),
                               float(r['achieved']) / float(r['limit']))
  # The block trade-offs: per (n, game, dtype), each block's worst slowdown
  # over the numbers of seeds, recomputed here from the rows' block rates.
  tradeoffs = _rows(tmp_path / 'exact_blocks.csv')
  assert [(t['n'], t['game']) for t in tradeoffs] == [('4', 'shared'),
                                                      ('4', 'per_seed')]
  for t in tradeoffs:
    members = [dict((b, float(x)) for b, x in (item.split(':') for item in
                    r['block_rates'].split()))
               for r in rows if r['game'] == t['game']]
    worst = {b: max(max(m.values()) / m[b] for m in members)
             for b in members[0]}
    found = dict(item.split(':') for item in t['worst_by_block'].split())
    assert set(found) == set(worst)
    for b, w in worst.items():
      np.testing.assert_allclose(float(found[b]), w, rtol=2e-3)
    # (The CSV's block rates have 4 significant digits.)
    best = min(worst.values())
    np.testing.assert_allclose(float(t['minimax_worst']), best, rtol=2e-3)
    assert worst[t['minimax_block']] <= best * (1 + 2e-3)
    np.testing.assert_allclose(float(t['default_worst']),
                               worst[t['default']], rtol=2e-3)
    assert min(worst.values()) >= 1


BENCHMARK_REFUSALS = [
    ('--repeats=0', '--repeats: must be in [1, 1000], got 0'),
    ('--seconds=nan', '--seconds: must be a number in (0, 3600], got nan'),
    ('--seconds=0', '--seconds: must be a number in (0, 3600], got 0.0'),
    ('--sizes=1', '--sizes: every value must be in [2, 100000], got 1'),
    ('--sizes=a,10', "--sizes: must be comma-separated integers, got 'a,10'"),
    ('--sizes=', '--sizes: must not be empty'),
    ('--sizes=100000', '--sizes: needs about 320 GB of memory; this machine '
     'has '),
    ('--seeds=0', '--seeds: every value must be in [1, 1048576], got 0'),
    ('--seeds=16,16', '--seeds: repeated value in 16,16'),
    ('--blocks=2,x', "--blocks: must be comma-separated integers, got '2,x'"),
    ('--games=shared,pooled', "--games: unknown value 'pooled'; expected one "
     'of shared, per_seed'),
    ('--dtypes=float16', "--dtypes: unknown value 'float16'; expected one of "
     'float32, float64'),
    ('--seed_block=0', '--seed_block: must be in [1, 1048576], got 0'),
    ('--algorithm=nash_prox', "--algorithm: unknown exact algorithm "
     "'nash_prox'"),
    ('--num_contexts=0', '--num_contexts: must be in [1, 10000], got 0'),
    ('--repeats=abc', "--repeats: must be an integer, got 'abc'"),
    ('--output={dir}', '--output: {dir} is a directory; give a file name'),
    ('--output={file}/x.csv', '--output: {file} exists and is not a '
     'directory'),
]


@pytest.fixture(scope='module')
def benchmark_refusals(tmp_path_factory):
  """``(outcome, line expected, the directory that must not appear)`` of
  every case of :data:`BENCHMARK_REFUSALS`, each run as ``python -m
  experiments.benchmark`` (children of one process, tests/refusals.py)."""
  tmp = tmp_path_factory.mktemp('benchmark_refusals')
  file = tmp / 'file'
  file.write_text('')
  fill = lambda text: text.format(dir=tmp, file=file)
  argv = lambda out, flag: [fill(flag)] + (
      [] if flag.startswith('--output') else [f'--output={out / "x.csv"}'])
  results = run_table('experiments.benchmark', BENCHMARK_REFUSALS, tmp, argv)
  return [(outcome, fill(line), out)
          for (outcome, out), (_, line) in zip(results, BENCHMARK_REFUSALS)]


@pytest.mark.parametrize('index', range(len(BENCHMARK_REFUSALS)),
                         ids=[f for f, _ in BENCHMARK_REFUSALS])
def test_benchmark_refuses_bad_flags_before_any_work(benchmark_refusals,
                                                     index):
  outcome, line, out = benchmark_refusals[index]
  assert_refused(outcome, 'error: ' + line, out)


def test_benchmark_help_lists_its_own_flags():
  result = _run('experiments.benchmark', '--help')
  assert result.returncode == 0, result.stderr[-2000:]
  for flag in ('--sizes', '--seeds', '--games', '--dtypes', '--blocks',
               '--seed_block', '--seconds', '--repeats', '--matmul_size',
               '--bandwidth_mib', '--output'):
    assert f'  {flag}: ' in result.stdout, flag
