"""Every bad input and fault a user can cause ends in one clear line or a
clean recovery (issue 12): flag-parse errors, ``--help``, sweep cells,
checkpoints that are ahead, damaged or silently corrupted, signals, the
float64 label without x64 mode, too small ``beta``.

Cheap by design: most checks run in this process on tiny inputs; the few
real processes run side by side.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

from experiments import common
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import experiment, reference
from nash_jax.algorithms import ConfigError
from nash_jax.experiment.run import stop_line

ROOT = Path(__file__).resolve().parents[1]
ABSL_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')


def _start(module, *args, **kwargs):
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)


def _lines(text: str) -> list[str]:
  """Non-empty lines that are not absl log lines (warnings of libraries)."""
  return [line for line in text.splitlines()
          if line.strip() and not ABSL_LOG_LINE.match(line)]


# --------------------------------------------------------------------------
# Item 7: flag-parse errors are one `error: --flag: ...` line, status 2.


def _parse_error(*args) -> str:
  fv = flags.FlagValues()
  flags.DEFINE_integer('num_steps', 1, '', flag_values=fv)
  flags.DEFINE_float('beta', 0.1, '', flag_values=fv)
  flags.DEFINE_bool('tensorboard', False, '', flag_values=fv)
  with pytest.raises(flags.Error) as e:
    fv(['prog', *args])
  return common.flag_error_line(e.value, fv)


@pytest.mark.parametrize('args,line', [
    (['--num_steps=abc'], "--num_steps: must be an integer, got 'abc'"),
    (['--num_steps=1e308'], "--num_steps: must be an integer, got '1e308'"),
    (['--beta=x'], "--beta: must be a number, got 'x'"),
    (['--tensorboard=maybe'],
     "--tensorboard: must be true or false, got 'maybe'"),
    (['--num_steps'], '--num_steps: needs a value (--num_steps=...)'),
    (['--no_such=1'], '--no_such: unknown flag; --help lists the flags'),
    (['--num_stepz=1'], '--num_stepz: unknown flag (did you mean '
     '--num_steps?); --help lists the flags'),
])
def test_flag_parse_errors_are_one_line_naming_the_flag(args, line):
  assert _parse_error(*args) == line


BINARIES = ('matrix_game', 'compare', 'stability', 'lm', 'benchmark_sampled',
            'reproduce')


@pytest.mark.parametrize('name', BINARIES)
def test_every_binary_parses_flags_through_common(name):
  # benchmark.py belongs to the benchmark work (issue 11) and is left out.
  source = (ROOT / 'experiments' / f'{name}.py').read_text()
  assert 'app.run(main, flags_parser=common.parse_flags)' in source


def test_real_processes_refuse_bad_flags_and_list_flags_in_help(tmp_path):
  # Item 7 in a genuine process (exit status 2, one line) and item 14:
  # --help lists the generated settings with their defaults.
  help_ = _start('experiments.matrix_game', '--help')
  bad = _start('experiments.lm', '--num_steps=1e308',
               f'--output_dir={tmp_path / "out"}')
  out, _ = help_.communicate(timeout=120)
  _, err = bad.communicate(timeout=120)
  assert help_.returncode == 0
  for fragment in ('--num_steps', "(default: '1000')", '--beta',
                   '--output_dir', '--distributed', '--sweep'):
    assert fragment in out
  assert bad.returncode == 2
  assert _lines(err) == ["error: --num_steps: must be an integer, got "
                         "'1e308'"]
  assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------
# Item 2: sweep cells never collide.


def test_duplicate_sweep_values_are_refused():
  with pytest.raises(ConfigError, match=r'^--sweep: beta lists 0\.1 twice'):
    experiment.parse_sweep(['beta=0.1,0.10'])
  with pytest.raises(ConfigError, match=r'^--betas: lists 0\.1 twice'):
    experiment.check_distinct('betas', [0.1, 0.03, 0.1])
  with pytest.raises(ConfigError, match='^--sweep:'):
    experiment.validate_sweep(experiment.ExperimentConfig(),
                              {'beta': [0.1, 0.1]})


def test_distinct_sweep_values_get_distinct_lossless_names():
  values = [0.1, 0.1000001, 1e-05, 1.0, 3e-4, 0.30000000000000004]
  names = [experiment.cell_name({'beta': v}) for v in values]
  assert names[:5] == ['beta=0.1', 'beta=0.1000001', 'beta=1e-05', 'beta=1',
                       'beta=0.0003']
  assert len(set(names)) == len(names)
  assert [float(n.partition('=')[2]) for n in names] == values


# --------------------------------------------------------------------------
# Items 3, 4, 5: checkpoints that are ahead, damaged or corrupted.

CONFIG = {'algorithm': 'omwu', 'beta': 0.1, 'num_steps': 60}


def _state(offset=0.0):
  return {'w': np.arange(300, dtype=np.float64) / 7 + offset,
          'key': np.arange(4, dtype=np.uint32)}


def _saved(tmp_path, steps=(20, 40)) -> checkpoint_lib.Checkpointer:
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), CONFIG)
  rows = [{'step': np.array([0]), 'kl': np.array([0.5])}]
  for step in steps:
    ckpt.save(step, _state(step), rows)
  ckpt.close()
  return checkpoint_lib.Checkpointer(str(tmp_path), CONFIG)


def test_fewer_steps_than_a_checkpoint_are_refused(tmp_path):
  ckpt = _saved(tmp_path)
  with pytest.raises(checkpoint_lib.CheckpointMismatch) as e:
    ckpt.check(overwrite=False, num_steps=30)
  assert e.value.flag == 'num_steps'
  assert str(e.value).startswith('30 is fewer steps than the 40 already '
                                 'done in ')
  assert 'give --num_steps >= 40' in str(e.value)
  ckpt.check(overwrite=False, num_steps=40)  # The same length: resumes.
  ckpt.check(overwrite=True, num_steps=30)  # Starts over.
  assert not os.path.exists(ckpt.path)


def test_fewer_steps_is_one_line_naming_num_steps(tmp_path):
  config = experiment.ExperimentConfig(
      algorithm='omwu', num_actions=4, num_steps=30, eval_every=10,
      output_dir=str(tmp_path))
  resolved, _ = experiment.validate(config)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path),
                                     dataclasses.asdict(resolved))
  ckpt.save(60, _state(), [{'step': np.array([60])}])
  ckpt.close()
  with pytest.raises(ConfigError, match=r'^--num_steps: 30 is fewer steps '
                     'than the 60 already done'):
    experiment.validate(config)


@pytest.mark.parametrize('text', ['{not json', '[1, 2]', ''])
def test_invalid_checkpoint_config_is_set_aside(tmp_path, text, caplog):
  ckpt = _saved(tmp_path)
  Path(ckpt.path, 'config.json').write_text(text)
  ckpt.check(overwrite=False, num_steps=60)  # No traceback, no refusal.
  assert not os.path.exists(ckpt.path)
  assert os.path.exists(ckpt.path + '.damaged/config.json')
  assert 'unreadable' in caplog.text and 'starting over' in caplog.text
  assert ckpt.restore(_state()) is None


def _data_files(path: Path):
  return sorted((p for p in path.rglob('*') if p.is_file() and
                 p.parent.name == 'd'), key=lambda p: p.stat().st_size)


def _flip_bit(path: Path, offset: int):
  data = bytearray(path.read_bytes())
  data[offset % len(data)] ^= 0x10
  path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['flip_middle', 'flip_start', 'truncate',
                                    'missing_file'])
def test_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, damage,
                                                         caplog):
  ckpt = _saved(tmp_path)
  newest = Path(ckpt.path, '40')
  target = _data_files(newest)[-1]
  if damage == 'flip_middle':
    _flip_bit(target, target.stat().st_size // 2)
  elif damage == 'flip_start':
    _flip_bit(target, 40)
  elif damage == 'truncate':
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
  else:
    target.unlink()
  state, _, done = ckpt.restore(_state())
  assert done == 20
  np.testing.assert_array_equal(state['w'], _state(20)['w'])
  assert os.path.isdir(os.path.join(ckpt.path, '40.damaged'))
  assert 'unreadable' in caplog.text
  ckpt.close()


def test_checksum_covers_every_array():
  tree = {'state': _state(), 'rows': {'step': np.arange(3)},
          'done': np.int64(3)}
  tree['checksum'] = checkpoint_lib.checksum(tree)
  checkpoint_lib.verify(tree)
  tree['state']['w'] = tree['state']['w'].copy()
  tree['state']['w'][5] = np.nextafter(tree['state']['w'][5], 1e9)
  with pytest.raises(checkpoint_lib.ChecksumMismatch):
    checkpoint_lib.verify(tree)


# --------------------------------------------------------------------------
# Item 13: SIGTERM and SIGINT checkpoint at the next chunk boundary.

SIGNAL_ARGS = ['--algorithm=omwu', '--num_actions=5', '--num_seeds=2',
               '--num_steps=1500', '--eval_every=100',
               '--checkpoint_every=100000']


@pytest.mark.slow
def test_signals_checkpoint_and_resume_bit_identically(tmp_path):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  run = lambda out: _start('experiments.matrix_game', *SIGNAL_ARGS,
                           f'--output_dir={tmp_path / out}', env=env)
  reference_run = run('reference')
  stopped = {'SIGTERM': run('sigterm'), 'SIGINT': run('sigint')}
  for name, proc in stopped.items():
    assert proc.stdout.readline().startswith('[omwu] step       0/')
    proc.send_signal(getattr(signal, name))
  assert reference_run.wait(timeout=300) == 0
  for name, proc in stopped.items():
    _, err = proc.communicate(timeout=300)
    status = 128 + getattr(signal, name)
    assert proc.returncode == status, err
    line = _lines(err)
    assert len(line) == 1 and re.fullmatch(
        rf'\[omwu\] {name}: stopped at step (\d+), checkpoint of step \1 in '
        r'\S+/checkpoints; rerun the same command to resume', line[0]), err
    assert not (tmp_path / name.lower() / 'summary.json').exists()
  resumed = {name: run(name.lower()) for name in stopped}
  for name, proc in resumed.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert 'resuming from step' in out
    for f in ('metrics.csv', 'final_policy.npy'):
      assert ((tmp_path / name.lower() / f).read_bytes() ==
              (tmp_path / 'reference' / f).read_bytes())


def test_stop_line_without_checkpoints():
  line = stop_line('omd', signal.SIGTERM, 300, None)
  assert line == ('[omd] SIGTERM: stopped at step 300, no checkpoint '
                  '(--checkpoint_every=0)')


# --------------------------------------------------------------------------
# Item 11: float64 is never recorded for float32 results.


def test_float64_without_x64_mode_is_refused(tmp_path):
  config = experiment.ExperimentConfig(output_dir=str(tmp_path / 'out'))
  jax.config.update('jax_enable_x64', False)
  try:
    with pytest.raises(ConfigError, match=r"^--dtype: float64 needs JAX's "
                       'x64 mode'):
      experiment.validate(config)
    experiment.validate(config.replace(dtype='float32'))
  finally:
    jax.config.update('jax_enable_x64', True)


# --------------------------------------------------------------------------
# Item 1: beta too small for the exact reference is refused before work.


def test_too_small_beta_is_refused_naming_the_smallest_that_works(tmp_path):
  config = experiment.ExperimentConfig(beta=1e-5, output_dir=str(
      tmp_path / 'out'))
  with pytest.raises(ConfigError, match=r'^--beta: 1e-05 is below 0\.0001, '
                     'the smallest beta'):
    experiment.validate(config)
  assert reference.check_beta(reference.MIN_BETA) is None
  assert reference.check_beta(0.0) is None
  with pytest.raises(ConfigError, match=r'^--beta: 1e-12 is below'):
    experiment.validate_sweep(config, {'beta': [1e-12, 0.1]})
  assert not (tmp_path / 'out').exists()


def test_min_beta_is_solved_on_a_small_game():
  game = experiment.build_games(experiment.ExperimentConfig(
      num_actions=6, game_seed=1), None)
  pi = reference.regularized_equilibrium(
      np.asarray(game.preferences), np.asarray(game.ref_policy),
      reference.MIN_BETA)
  assert np.all(np.isfinite(pi)) and np.allclose(pi.sum(-1), 1)


# --------------------------------------------------------------------------
# Item 9: the output directory is created and written before any work.


def test_output_dirs_that_cannot_be_written_are_refused(tmp_path):
  dangling = tmp_path / 'dangling'
  dangling.symlink_to(tmp_path / 'nowhere' / 'x')
  (tmp_path / 'file').write_text('x')
  cases = {str(dangling): 'is a symbolic link to',
           str(tmp_path / 'file' / 'out'): 'is not a directory',
           '/proc/nash_jax_out': 'cannot be written'}
  for path, fragment in cases.items():
    with pytest.raises(ConfigError, match=f'^--output_dir: .*{fragment}'):
      experiment.check_output_dir(path)
  fresh = tmp_path / 'a' / 'b' / 'c'
  experiment.check_output_dir(str(fresh))  # Probed, then removed again.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['dangling', 'file']


# --------------------------------------------------------------------------
# Item 10: a second run into a locked output directory refuses.


def test_a_locked_output_dir_refuses_a_second_run(tmp_path):
  first = experiment.OutputLock(str(tmp_path / 'out')).acquire()
  with pytest.raises(ConfigError) as e:
    experiment.OutputLock(str(tmp_path / 'out')).acquire()
  assert str(e.value) == (f'--output_dir: {tmp_path / "out"} is in use by '
                          f'another run (process {os.getpid()}); wait for it '
                          'to end or choose another --output_dir')
  first.release()
  assert not (tmp_path / 'out' / '.lock').exists()
  experiment.OutputLock(str(tmp_path / 'out')).acquire().release()
