"""Two processes on 127.0.0.1 (JAX's CPU backend with gloo collectives), two
fake devices each, against one process: the same files, bit for bit."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_devices_env

ROOT = Path(__file__).resolve().parents[1]
ARGS = ['--algorithm=nash_mp', '--num_actions=6', '--num_seeds=5',
        '--seed=1', '--init=random', '--num_steps=30', '--eval_every=10',
        '--checkpoint_every=0']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tmp_path):
  single = tmp_path / 'single'
  one = subprocess.run(
      [sys.executable, '-m', 'experiments.matrix_game', *ARGS,
       f'--output_dir={single}'], cwd=ROOT, env=fake_devices_env(1), capture_output=True,
      text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]

  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.matrix_game', *ARGS,
       f'--output_dir={multi}', '--distributed',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}'], cwd=ROOT, env=fake_devices_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  # Only process 0 logs the table.
  assert 'mean' in outs[0][0] and 'mean' not in outs[1][0]
  manifest = (multi / 'manifest.json').read_text()
  assert '"process_count": 2' in manifest and '"device_count": 4' in manifest
  assert ((single / 'metrics.csv').read_text() ==
          (multi / 'metrics.csv').read_text())
  for name in ('final_policy.npy', 'equilibrium.npy'):
    np.testing.assert_array_equal(np.load(single / name),
                                  np.load(multi / name))
