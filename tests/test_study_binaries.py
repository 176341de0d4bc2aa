"""End-to-end runs of experiments.stability, experiments.benchmark and
experiments.benchmark_sampled at tiny sizes: they run, write what README.md
says, and refuse bad flags with one ``error:`` line."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_stability_study_refuses_bad_flags_before_any_work(tmp_path):
  for flag, expected in (('--learning_rates=a,b', '--learning_rates'),
                         ('--betas=', '--betas'),
                         ('--kl_threshold=0', '--kl_threshold'),
                         ('--anchor_tau=2', '--anchor_tau')):
    out = tmp_path / flag.strip('-').split('=')[0]
    result = _run('experiments.stability', flag, f'--output_dir={out}')
    assert result.returncode == 2, (flag, result.stderr[-1000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {expected}'), (
        flag, lines)
    assert not out.exists()


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
  exact = tmp_path / 'exact.csv'
  result = _run('experiments.benchmark', '--sizes=4', '--seeds=1,2',
                '--repeats=1', '--seconds=0.01', '--nomemory',
                f'--output={exact}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert [(r['n'], r['seeds']) for r in _rows(exact)] == [('4', '1'),
                                                          ('4', '2')]
  refused = _run('experiments.benchmark_sampled', '--policies=transformer',
                 f'--output={tmp_path / "x.csv"}')
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      "error: --policies: unknown policy 'transformer'"]
