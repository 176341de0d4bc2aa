"""Optional TensorBoard output: one run per seed, every metric column."""

import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from nash_jax import experiment
from nash_jax.tasks import tabular


def _scalars(path):
  """``{tag: [(step, value)]}`` from a TFRecord event file."""
  out = {}
  data = path.read_bytes()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack('<Q', data[offset:offset + 8])
    record = data[offset + 12:offset + 12 + length]
    offset += 12 + length + 4
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


@pytest.mark.slow
def test_tensorboard_has_one_run_per_seed_matching_metrics(tmp_path):
  config = tabular.TabularConfig(
      algorithm='omd', num_actions=5, num_seeds=2, seed=3, num_steps=20,
      eval_every=10, init='random', tensorboard=True, checkpoint_every=0,
      output_dir=str(tmp_path))
  config, file_game = experiment.validate(tabular.TASK, config)
  results = experiment.run_one(tabular.TASK, config, file_game, log=lambda line: None)
  boards = sorted(p.name for p in (tmp_path / 'tensorboard').iterdir())
  assert boards == ['seed_3', 'seed_4']
  for i, seed in enumerate((3, 4)):
    (events,) = (tmp_path / 'tensorboard' / f'seed_{seed}').iterdir()
    scalars = _scalars(events)
    assert set(scalars) >= {'kl_to_equilibrium', 'duality_gap',
                            'exploitability', 'preference_queries'}
    kl = scalars['kl_to_equilibrium']
    assert [step for step, _ in kl] == [0, 10, 20]
    want = [r['kl_to_equilibrium'][i] for r in results.rows]
    np.testing.assert_allclose([v for _, v in kl], want, rtol=1e-6)
  # Seeds are separate curves (different random starts).
  first = _scalars(next((tmp_path / 'tensorboard' / 'seed_3').iterdir()))
  second = _scalars(next((tmp_path / 'tensorboard' / 'seed_4').iterdir()))
  assert first['kl_to_equilibrium'][0] != second['kl_to_equilibrium'][0]
