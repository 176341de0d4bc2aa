"""``python -m experiments.benchmark_lm``: its JSON lines at a tiny size, and
its refusals of bad flags (one ``error: --flag: ...`` line, exit status 2,
nothing written). No timing is asserted: the numbers are the benchmark's.

Speed: the end-to-end run is one genuine process (about 20 s on 2 busy
cores, mostly compilation; XLA's backend optimizations are turned down,
which changes no result that is checked). The refusals run in children
forked from one process that has imported JAX and nash_jax once, each
executing the binary as ``python -m`` does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST_COMPILE, child_env
from refusals import assert_refused, run_table

ROOT = Path(__file__).parents[1]
BINARY = 'experiments.benchmark_lm'
TINY = ['--sizes=1x16', '--head_dim=8', '--mlp_ratio=2', '--batch_size=2',
        '--steps=1', '--repeats=1', '--matmul_size=32', '--max_length=3',
        '--prompt_length=3', '--num_prompts=2', '--dtypes=float32']
CONFIG_KEYS = {
    'layers', 'd_model', 'dtype', 'step_s', 'tokens_per_s',
    'generated_tokens_per_s', 'counted_tokens_per_s', 'tokens_counted',
    'generate_s', 'score_s', 'oracle_s', 'update_s', 'parts_sum_s',
    'generate_frac', 'score_frac', 'update_frac', 'flops_per_step',
    'achieved_flops_per_s', 'matmul_f32_flops_per_s',
    'fraction_of_f32_matmul', 'loadavg_before', 'loadavg_after',
    'batch_prompts', 'prompt_length', 'new_tokens', 'vocab_size'}


def _trl_installed() -> bool:
  return all(importlib.util.find_spec(m) is not None
             for m in ('torch', 'transformers', 'datasets', 'trl'))


def _env():
  return child_env(FAST_COMPILE, PYTHONPATH=str(ROOT))


@pytest.mark.slow
def test_tiny_run_prints_json_lines(tmp_path):
  out = tmp_path / 'bench.jsonl'
  # Where TRL is absent, the default --trl=auto says why in one line; where
  # it is installed, the comparison is left to the real benchmark.
  trl = [] if not _trl_installed() else ['--trl=off']
  proc = subprocess.run(
      [sys.executable, '-m', BINARY, *TINY, *trl, f'--output={out}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  records = [json.loads(line) for line in lines]  # Every line is JSON.
  assert [r['record'] for r in records] == [
      'machine', 'trl_skipped', 'config', 'summary']
  assert out.read_text().splitlines() == lines
  machine, skipped, *configs, summary = records
  assert machine['matmul_f32_flops_per_s'] > 0
  assert machine['loadavg_start']
  if trl:
    assert skipped['reason'] == '--trl=off'
  else:
    assert 'not installed' in skipped['reason']
  assert [c['dtype'] for c in configs] == ['float32']
  for c in configs:
    assert CONFIG_KEYS <= set(c), CONFIG_KEYS - set(c)
    assert (c['layers'], c['d_model'], c['batch_prompts'], c['new_tokens'],
            c['vocab_size']) == (1, 16, 2, 3, 256)
    assert c['step_s'] > 0 and c['flops_per_step'] > 0
    # Max-length counting: 2 responses x batch x new tokens per step.
    assert c['tokens_per_s'] == pytest.approx(2 * 2 * 3 / c['step_s'])
    assert c['generated_tokens_per_s'] == c['tokens_per_s']
    assert 0 < c['counted_tokens_per_s'] <= c['tokens_per_s'] * (1 + 1e-9)
    assert c['parts_sum_s'] == pytest.approx(
        c['generate_s'] + c['score_s'] + c['oracle_s'] + c['update_s'])
    assert 'ratio_vs_trl' not in c
  assert set(summary) >= {'loadavg_start', 'loadavg_end', 'tokens_per_s',
                          'ratio_vs_trl'}
  assert set(summary['tokens_per_s']) == {'1x16 float32'}


REFUSALS = [
    (['--sizes=2y128'], '--sizes: expected LAYERSxD_MODEL'),
    (['--sizes=0x128'], '--sizes: layers and d_model must be >= 1'),
    (['--sizes=2x100'], '--sizes: d_model=100 is not a multiple of'),
    (['--sizes='], '--sizes: give at least one size'),
    (['--dtypes=float16'], "--dtypes: unknown dtype 'float16'"),
    (['--head_dim=3', '--sizes=1x6'], '--head_dim: must be even'),
    (['--steps=0'], '--steps: must be >= 1'),
    (['--batch_size=0'], '--batch_size: must be >= 1'),
    (['--vocab_size=3'], '--vocab_size: must be >= 4'),
    (['--max_length=0'], '--max_length: must be >= 1'),
    (['--prompt_length=1'], '--prompt_length: must be >= 2'),
    (['--beta=-1'], '--beta: must be a finite number > 0'),
    (['--learning_rate=nan'], '--learning_rate: must be a finite number'),
    (['--trl_threads=a'], '--trl_threads: must be comma-separated integers'),
    (['--trl_threads=-1'], '--trl_threads: must be integers >= 0'),
    (['--trl=maybe'], '--trl:'),
    (['--steps=x'], "--steps: must be an integer, got 'x'"),
    (['--no_such_flag=1'], '--no_such_flag: unknown flag'),
    (['extra'], 'unexpected arguments: extra'),
]
if not _trl_installed():
  REFUSALS.append((['--trl=on'], '--trl: on, but'))

@pytest.fixture(scope='module')
def refusals(tmp_path_factory):
  """``(outcome, output file)`` of every case of :data:`REFUSALS`."""
  return run_table(BINARY, REFUSALS, tmp_path_factory.mktemp('refusals'),
                   lambda out, args: [*args, f'--output={out}'], env=_env(),
                   timeout=300, suffix='.jsonl')


@pytest.mark.parametrize('index', range(len(REFUSALS)),
                         ids=[' '.join(a) for a, _ in REFUSALS])
def test_refuses_bad_flags_before_any_work(refusals, index):
  outcome, output = refusals[index]
  # Nothing measured (stdout empty), not even the machine line.
  assert_refused(outcome, f'error: {REFUSALS[index][1]}', output)


def test_refuses_an_output_directory(tmp_path):
  """A genuine process: ``--output`` naming a directory is refused with
  status 2 before any work."""
  proc = subprocess.run(
      [sys.executable, '-m', BINARY, f'--output={tmp_path}'], cwd=ROOT,
      env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stdout == ''
  assert proc.stderr.splitlines() == [
      f'error: --output: {tmp_path} is a directory; give a file name']
