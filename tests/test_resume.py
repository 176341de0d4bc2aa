"""Killed runs resume from their last checkpoint, bit-identical to an
uninterrupted run (DESIGN.md, "Promises users rely on").

Every run here is a genuine process compiled with XLA's backend
optimizations turned down (most of a tiny run's time is compilation); every
check compares runs made under the same flags, so none depends on them.
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_COMPILE, child_env

ROOT = Path(__file__).resolve().parents[1]
ENV = child_env(FAST_COMPILE)
ARGS = ['--algorithm=omwu', '--num_actions=6', '--num_contexts=2',
        '--num_seeds=3', '--seed=2', '--init=random', '--eval_every=10']


def _command(out, *extra):
  return [sys.executable, '-m', 'experiments.matrix_game', *ARGS,
          f'--output_dir={out}', *extra]


def _run(out, *extra):
  return subprocess.run(_command(out, *extra), cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=ENV)


def _same_results(a: Path, b: Path):
  assert (a / 'metrics.csv').read_text() == (b / 'metrics.csv').read_text()
  for name in ('final_policy.npy', 'equilibrium.npy'):
    np.testing.assert_array_equal(np.load(a / name), np.load(b / name))


def _checkpoint_steps(out: Path):
  path = out / 'checkpoints'
  if not path.exists():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  steps = ['--num_steps=6000', '--checkpoint_every=500']
  reference = tmp_path / 'reference'
  assert _run(reference, *steps).returncode == 0
  assert not (reference / 'checkpoints' / 'config.json').read_text() == ''

  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_command(killed, *steps), cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not _checkpoint_steps(killed) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  saved = _checkpoint_steps(killed)
  assert saved and max(saved) < 6000, saved
  # The killed run left no finished-looking result.
  assert not (killed / 'summary.json').exists()

  resumed = _run(killed, *steps)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from step' in resumed.stdout
  _same_results(reference, killed)
  # One row per seed and evaluation: nothing duplicated, nothing missing.
  lines = (killed / 'metrics.csv').read_text().splitlines()
  assert len(lines) == 1 + 3 * (6000 // 10 + 1)
  assert len(set(lines)) == len(lines)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path):
  steps = ['--num_steps=300', '--checkpoint_every=100']
  reference = tmp_path / 'reference'
  assert _run(reference, '--checkpoint_every=0', '--num_steps=300'
              ).returncode == 0
  out = tmp_path / 'run'
  assert _run(out, *steps).returncode == 0
  assert _checkpoint_steps(out) == [100, 200, 300]
  # Damage the newest checkpoint: every file in it becomes garbage.
  for path in (out / 'checkpoints' / '300').rglob('*'):
    if path.is_file():
      path.write_bytes(b'garbage')
  (out / 'summary.json').unlink()
  result = _run(out, *steps)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'unreadable' in result.stderr
  assert 'resuming from step 200' in result.stdout
  _same_results(reference, out)


@pytest.mark.slow
def test_checkpoints_of_other_settings_refuse_unless_overwrite(tmp_path):
  out = tmp_path / 'run'
  assert _run(out, '--num_steps=50', '--checkpoint_every=20').returncode == 0
  before = (out / 'metrics.csv').read_text()
  refused = _run(out, '--num_steps=50', '--checkpoint_every=20', '--beta=0.2')
  assert refused.returncode == 2
  assert refused.stderr.strip().startswith('error: --overwrite:')
  assert 'beta: 0.1 -> 0.2' in refused.stderr
  assert 'Traceback' not in refused.stderr
  assert (out / 'metrics.csv').read_text() == before  # untouched
  again = _run(out, '--num_steps=50', '--checkpoint_every=20', '--beta=0.2',
               '--overwrite')
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming' not in again.stdout
  fresh = tmp_path / 'fresh'
  assert _run(fresh, '--num_steps=50', '--checkpoint_every=0',
              '--beta=0.2').returncode == 0
  _same_results(fresh, out)


@pytest.mark.slow
def test_longer_rerun_continues_from_the_finished_run(tmp_path):
  # num_steps may grow on resume; the result equals a run of the full length.
  out = tmp_path / 'run'
  assert _run(out, '--num_steps=40', '--checkpoint_every=20').returncode == 0
  longer = _run(out, '--num_steps=90', '--checkpoint_every=20')
  assert longer.returncode == 0, longer.stderr[-2000:]
  assert 'resuming from step 40' in longer.stdout
  reference = tmp_path / 'reference'
  assert _run(reference, '--num_steps=90', '--checkpoint_every=0'
              ).returncode == 0
  _same_results(reference, out)
  shutil.rmtree(out / 'checkpoints')


SAMPLED = {
    'nash_prox_mlp_ema': ['--mode=sampled', '--algorithm=nash_prox',
                          '--policy=mlp', '--hidden_sizes=8',
                          '--game=annotators', '--feature_dim=4',
                          '--anchor=ema', '--anchor_tau=0.1',
                          '--batch_size=8'],
    'approx_nash_mp_tabular': ['--mode=sampled', '--algorithm=approx_nash_mp',
                               '--inner_steps=3', '--batch_size=8'],
    'online_ipo_sweep': ['--mode=sampled', '--algorithm=online_ipo',
                         '--batch_size=8', '--sweep=learning_rate=0.01,0.1'],
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(SAMPLED))
def test_sampled_runs_resume_bit_identically(tmp_path, name):
  # The state of the sampled algorithms (policy params of every class,
  # optimizer state, anchors, PRNG keys) goes through the checkpoints: a run
  # continued from step 40 equals a run of 90 steps; a sweep resumes too.
  extra = SAMPLED[name]
  out = tmp_path / 'run'
  assert _run(out, *extra, '--num_steps=40', '--checkpoint_every=20'
              ).returncode == 0
  longer = _run(out, *extra, '--num_steps=90', '--checkpoint_every=20')
  assert longer.returncode == 0, longer.stderr[-2000:]
  reference = tmp_path / 'reference'
  assert _run(reference, *extra, '--num_steps=90', '--checkpoint_every=0'
              ).returncode == 0
  if name.endswith('sweep'):
    cells = sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert cells == ['learning_rate=0.01', 'learning_rate=0.1']
    for cell in cells:
      _same_results(reference / cell, out / cell)
  else:
    assert 'resuming from step 40' in longer.stdout
    _same_results(reference, out)
