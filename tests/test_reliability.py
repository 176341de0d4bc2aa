"""Every bad input and fault a user can cause ends in one clear line or a
clean recovery: flag-parse errors, ``--help``, sweep cells,
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
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from refusals import assert_refused, run_cases

from experiments import common
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import experiment, reference
from nash_jax import io as io_lib
from nash_jax.algorithms import ConfigError
from nash_jax.experiment.run import stop_line
from nash_jax.metrics import METRICS
from nash_jax.tasks import tabular, token_game

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
# flag-parse errors are one `error: --flag: ...` line, status 2.


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


# Every module of experiments/ that runs as a program.
BINARIES = tuple(sorted(
    p.stem for p in (ROOT / 'experiments').glob('*.py')
    if "if __name__ == '__main__':" in p.read_text()))


def test_the_binaries_are_found():
  assert {'matrix_game', 'compare', 'stability', 'lm', 'benchmark',
          'benchmark_sampled', 'benchmark_lm', 'crossplay', 'reproduce',
          'post_train'} <= set(BINARIES)


@pytest.mark.parametrize('name', BINARIES)
def test_every_binary_parses_flags_through_common(name):
  source = (ROOT / 'experiments' / f'{name}.py').read_text()
  assert re.search(r'app\.run\((main|common\.task_main\(\w+\.TASK\)), '
                   r'flags_parser=common\.parse_flags\)', source), name


def test_binaries_of_a_task_are_a_few_lines_naming_it():
  for name, task in (('matrix_game', 'tabular'), ('lm', 'token_game'),
                     ('post_train', 'post_train')):
    source = (ROOT / 'experiments' / f'{name}.py').read_text()
    code = source[source.index('"""', 3) + 3:].strip().splitlines()
    assert len(code) <= 12, (name, len(code))
    assert f'common.task_main({task}.TASK)' in source


def test_real_processes_refuse_bad_flags_and_list_flags_in_help(tmp_path):
  # In a genuine process (exit status 2, one line), and
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
# sweep cells never collide.


def test_duplicate_sweep_values_are_refused():
  with pytest.raises(ConfigError, match=r'^--sweep: beta lists 0\.1 twice'):
    experiment.parse_sweep(['beta=0.1,0.10'], tabular.TASK.sweep_names())
  with pytest.raises(ConfigError, match=r'^--betas: lists 0\.1 twice'):
    experiment.check_distinct('betas', [0.1, 0.03, 0.1])
  with pytest.raises(ConfigError, match='^--sweep:'):
    experiment.validate_sweep(tabular.TASK, tabular.TabularConfig(),
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
  config = tabular.TabularConfig(
      algorithm='omwu', num_actions=4, num_steps=30, eval_every=10,
      output_dir=str(tmp_path))
  resolved, _ = experiment.validate(tabular.TASK, config)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path),
                                     dataclasses.asdict(resolved))
  ckpt.save(60, _state(), [{'step': np.array([60])}])
  ckpt.close()
  with pytest.raises(ConfigError, match=r'^--num_steps: 30 is fewer steps '
                     'than the 60 already done'):
    experiment.validate(tabular.TASK, config)


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
  # Every data file: OCDBT may leave a copy of the data that a restore does
  # not read (two files of one size here), and which of them a listing
  # gives first varies.
  for target in _data_files(newest):
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
# SIGTERM and SIGINT checkpoint at the next chunk boundary.

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
# float64 is never recorded for float32 results.


def test_float64_without_x64_mode_is_refused(tmp_path):
  config = tabular.TabularConfig(output_dir=str(tmp_path / 'out'))
  jax.config.update('jax_enable_x64', False)
  try:
    with pytest.raises(ConfigError, match=r"^--dtype: float64 needs JAX's "
                       'x64 mode'):
      experiment.validate(tabular.TASK, config)
    experiment.validate(tabular.TASK, config.replace(dtype='float32'))
  finally:
    jax.config.update('jax_enable_x64', True)


# --------------------------------------------------------------------------
# beta too small for the exact reference is refused before work.


def test_too_small_beta_is_refused_naming_the_smallest_that_works(tmp_path):
  config = tabular.TabularConfig(beta=1e-5, output_dir=str(
      tmp_path / 'out'))
  with pytest.raises(ConfigError, match=r'^--beta: 1e-05 is below 0\.0001, '
                     'the smallest beta'):
    experiment.validate(tabular.TASK, config)
  assert reference.check_beta(reference.MIN_BETA) is None
  assert reference.check_beta(0.0) is None
  with pytest.raises(ConfigError, match=r'^--beta: 1e-12 is below'):
    experiment.validate_sweep(tabular.TASK, config, {'beta': [1e-12, 0.1]})
  assert not (tmp_path / 'out').exists()


def test_min_beta_is_solved_on_a_small_game():
  game = tabular.build_games(tabular.TabularConfig(
      num_actions=6, game_seed=1), None)
  pi = reference.regularized_equilibrium(
      np.asarray(game.preferences), np.asarray(game.ref_policy),
      reference.MIN_BETA)
  assert np.all(np.isfinite(pi)) and np.allclose(pi.sum(-1), 1)


# --------------------------------------------------------------------------
# the output directory is created and written before any work.


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
# a second run into a locked output directory refuses.


def test_a_locked_output_dir_refuses_a_second_run(tmp_path):
  first = io_lib.OutputLock(str(tmp_path / 'out')).acquire()
  with pytest.raises(ConfigError) as e:
    io_lib.OutputLock(str(tmp_path / 'out')).acquire()
  assert str(e.value) == (f'--output_dir: {tmp_path / "out"} is in use by '
                          f'another run (process {os.getpid()}); wait for it '
                          'to end or choose another --output_dir')
  first.release()
  assert not (tmp_path / 'out' / '.lock').exists()
  io_lib.OutputLock(str(tmp_path / 'out')).acquire().release()


@pytest.mark.slow
def test_two_real_processes_into_one_output_dir(tmp_path):
  # Two genuine processes: the second refuses with one line naming the
  # first's process id, before any work, and the first is untouched; once
  # the first is killed (SIGKILL: no cleanup), its lock is gone with it.
  out = tmp_path / 'out'
  args = ['--num_actions=4', '--num_steps=100000000', '--eval_every=1000000',
          '--checkpoint_every=0', f'--output_dir={out}']
  first = _start('experiments.matrix_game', *args)
  try:
    deadline = time.time() + 120
    while not (out / '.lock').exists() and first.poll() is None:
      assert time.time() < deadline, 'the first run never took its lock'
      time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-2000:]
    second = _start('experiments.matrix_game', *args)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err[-2000:]
    assert _lines(err) == [
        f'error: --output_dir: {out} is in use by another run (process '
        f'{first.pid}); wait for it to end or choose another --output_dir']
    assert first.poll() is None  # Still running.
  finally:
    first.kill()
    first.communicate()
  io_lib.OutputLock(str(out)).acquire().release()


# --------------------------------------------------------------------------
# diverged runs are marked (inf and NaN apart) and can stop.


def test_divergence_is_marked_with_inf_and_nan_apart():
  from nash_jax.experiment import results as results_lib
  row = {'kl_to_equilibrium': np.array([0.1, np.inf, np.nan, np.nan])}
  assert results_lib.divergence(row['kl_to_equilibrium']) == [
      None, 'inf', 'nan', 'nan']
  assert results_lib.divergence_note(row) == (
      '  DIVERGED: kl_to_equilibrium inf in 1, nan in 2 of 4 runs')
  assert results_lib.divergence_note(
      {'kl_to_equilibrium': np.array([0.1, 0.2])}) == ''
  from nash_jax.experiment.run import stopping_rule
  until = stopping_rule(None, True)
  assert until(row) and not until({'kl_to_equilibrium': np.ones(2)})
  budget = stopping_rule(5, False)
  assert budget({'preference_queries': np.array([5, 6]), **row})
  assert not budget({'preference_queries': np.array([4, 6]), **row})
  assert stopping_rule(None, False) is None


def test_stop_on_divergence_stops_at_that_evaluation(tmp_path, monkeypatch):
  # A genuine run whose metrics turn NaN or inf (by key parity) from step
  # 20 on: it stops there, says so, and summary.json tells NaN from inf.
  task_lib = sys.modules['nash_jax.tasks.tabular']
  exact = task_lib.evaluation.exact_evaluator

  def poisoned(make):
    evaluate = exact(make)

    def wrapped(hyper, state, env_params, log_eq):
      metrics = evaluate(hyper, state, env_params, log_eq)
      bad = jax.numpy.where(state.key[-1] % 2 == 0, np.nan, np.inf)
      metrics['kl_to_equilibrium'] = jax.numpy.where(
          state.step >= 20, bad, metrics['kl_to_equilibrium'])
      return metrics
    return wrapped

  monkeypatch.setattr(task_lib.evaluation, 'exact_evaluator', poisoned)
  assert 'stop_on_divergence' in [
      f.name for f in dataclasses.fields(experiment.RunConfig)]
  config, _ = experiment.validate(tabular.TASK, tabular.TabularConfig(
      algorithm='omwu', num_actions=3, num_seeds=2, num_steps=50,
      eval_every=10, checkpoint_every=0, stop_on_divergence=True,
      output_dir=str(tmp_path / 'out')))
  lines = []
  results = experiment.run_one(tabular.TASK, config, log=lines.append)
  assert int(results.rows[-1]['step'][0]) == 20
  assert 'DIVERGED: kl_to_equilibrium' in lines[2]
  assert lines[-1] == ('[omwu] stopped at step 20: a run diverged '
                       '(--stop_on_divergence)')
  experiment.write_results(results)
  import json
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  kinds = {f['seed']: f['diverged'] for f in summary['final']}
  assert set(kinds.values()) <= {'inf', 'nan'}
  assert summary['diverged'] == {
      kind: [s for s, k in kinds.items() if k == kind]
      for kind in ('inf', 'nan')}
  assert all(f['kl_to_equilibrium'] is None for f in summary['final'])


def test_summary_tells_nan_from_inf():
  config = tabular.TabularConfig(num_seeds=3, seed=4)
  row = {'step': np.full(3, 10), 'preference_queries': np.full(3, 10),
         **{m: np.array([0.1, np.inf, np.nan]) for m in METRICS}}
  s = experiment.summary(experiment.Results(config, [row], None, None, 1.0))
  assert [f['diverged'] for f in s['final']] == [None, 'inf', 'nan']
  assert s['diverged'] == {'inf': [5], 'nan': [6]}


# --------------------------------------------------------------------------
# settings the algorithm does not read are refused, and errors
# name the flag the user typed.


def test_settings_the_algorithm_does_not_use_are_refused():
  base = tabular.TabularConfig()
  sampled = base.replace(mode='sampled', algorithm='nash_prox')
  assert experiment.unused_by(base, 'learning_rate') == 'nash_mp'
  assert experiment.unused_by(base, 'batch_size') == '--mode=exact'
  assert experiment.unused_by(base, 'beta') is None
  assert experiment.unused_by(base.replace(algorithm='self_play_pg'),
                              'learning_rate') is None
  assert experiment.unused_by(sampled, 'anchor_tau') == (
      'nash_prox with --anchor=copy')
  assert experiment.unused_by(sampled.replace(anchor='ema'),
                              'anchor_tau') is None
  assert experiment.unused_by(sampled, 'mixture') == 'nash_prox'
  assert experiment.unused_by(sampled, 'hidden_sizes') == '--policy=tabular'
  with pytest.raises(ConfigError, match='^--learning_rate: nash_mp does not '
                     'use it$'):
    experiment.check_used([base.replace(learning_rate=-1.0)],
                          ['beta', 'learning_rate'])
  # Used by one algorithm of several (experiments.compare): accepted.
  experiment.check_used([base, base.replace(algorithm='online_ipo')],
                        ['learning_rate'])
  with pytest.raises(ConfigError, match='^--eta: self_play_pg, online_ipo '
                     'do not use it$'):
    experiment.check_used([base.replace(algorithm='self_play_pg'),
                           base.replace(algorithm='online_ipo')], ['eta'])
  with pytest.raises(ConfigError, match='^--sweep: nash_mp does not use '
                     'learning_rate'):
    experiment.validate_sweep(tabular.TASK, base, {'learning_rate': [0.1, 0.2]})
  with pytest.raises(ConfigError, match='^--sweep: nash_prox with '
                     '--anchor=copy does not use anchor_tau'):
    experiment.validate_sweep(tabular.TASK, sampled, {'anchor_tau': [0.1, 0.2]})


def test_errors_name_the_flag_the_user_typed(tmp_path):
  out = str(tmp_path / 'out')
  for algorithm in ('nash_mp', 'omd', 'proximal_point'):
    with pytest.raises(ConfigError, match='^--beta: 1e\\+308 '):
      experiment.validate(tabular.TASK, tabular.TabularConfig(
          algorithm=algorithm, beta=1e308, output_dir=out))
  with pytest.raises(ConfigError, match='^--eta: must be a finite number'):
    experiment.validate(tabular.TASK, tabular.TabularConfig(eta=float('inf'),
                                                    output_dir=out))
  error = common.renamed(ConfigError('algorithm', "unknown algorithm 'x'"),
                         {'algorithm': 'algorithms'})
  assert str(error) == "--algorithms: unknown algorithm 'x'"
  assert str(common.renamed(ConfigError('beta', 'x'), {})) == '--beta: x'
  for name in ('compare', 'stability'):
    source = (ROOT / 'experiments' / f'{name}.py').read_text()
    assert "common.renamed(e, {'algorithm': 'algorithms'" in source


def test_unused_flag_in_a_real_process(tmp_path):
  proc = _start('experiments.matrix_game', '--learning_rate=-1',
                f'--output_dir={tmp_path / "out"}')
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert _lines(err) == ['error: --learning_rate: nash_mp does not use it']
  assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------
# a recovered checkpoint is one warning line (no "Event loop is
# closed" tracebacks), real unraisable errors still reach the hook.


def test_closed_event_loop_noise_is_dropped_and_nothing_else(tmp_path,
                                                             monkeypatch):
  import asyncio
  import types
  loop = asyncio.new_event_loop()
  loop.close()
  with pytest.raises(RuntimeError) as closed:
    loop.call_soon_threadsafe(print)
  noise = types.SimpleNamespace(exc_value=closed.value,
                                exc_traceback=closed.value.__traceback__)
  other = types.SimpleNamespace(exc_value=RuntimeError('Event loop is '
                                                       'closed'),
                                exc_traceback=None)
  assert checkpoint_lib.is_closed_loop_noise(noise)
  assert not checkpoint_lib.is_closed_loop_noise(other)
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  ckpt = _saved(tmp_path)
  target = _data_files(Path(ckpt.path, '40'))[-1]
  _flip_bit(target, target.stat().st_size // 2)
  assert ckpt.restore(_state())[2] == 20
  ckpt.close()
  sys.unraisablehook(noise)
  sys.unraisablehook(other)
  assert seen == [other]


# --------------------------------------------------------------------------
# a full disk is one line naming the output directory.


def test_full_disk_is_recognized_through_the_chain(capsys):
  import errno
  assert io_lib.disk_full(OSError(errno.ENOSPC, 'No space'))
  assert io_lib.disk_full(OSError(errno.EDQUOT, 'quota'))
  assert not io_lib.disk_full(OSError(errno.EACCES, 'denied'))
  try:
    try:
      raise OSError(errno.ENOSPC, 'full')
    except OSError as e:
      raise ValueError('writing the checkpoint failed') from e
  except ValueError as e:
    chained = e
  assert io_lib.disk_full(chained)
  assert io_lib.disk_full(ValueError(
      'RESOURCE_EXHAUSTED: Error writing "done/0": Failed to write 19144 '
      'bytes to file 16: No space left on device'))
  assert not io_lib.disk_full(ValueError('bad value'))
  assert io_lib.disk_full_line('/data/run') == (
      'error: no space left on device while writing /data/run; free some '
      'space and rerun the same command to resume from the last checkpoint')
  common.report_disk_full(ValueError, chained, None)
  output_dir = (flags.FLAGS['output_dir'].value
                if 'output_dir' in flags.FLAGS else None)
  assert capsys.readouterr().err == (
      io_lib.disk_full_line(output_dir) + '\n')


@pytest.mark.slow
def test_full_disk_in_a_real_process(tmp_path):
  small = tmp_path / 'small'
  small.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200k',
                            'tmpfs', str(small)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip('cannot mount a small tmpfs here (needs root): '
                f'{mounted.stderr.decode().strip()}')
  try:
    proc = _start('experiments.matrix_game', '--algorithm=omwu',
                  '--num_actions=30', '--num_seeds=4', '--num_steps=400',
                  '--eval_every=1', '--checkpoint_every=100',
                  f'--output_dir={small / "out"}')
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert _lines(err) == [io_lib.disk_full_line(str(small / 'out'))]
  finally:
    subprocess.run(['umount', str(small)], capture_output=True)


# --------------------------------------------------------------------------
# a float32 reference policy within float32 rounding of 1.


def test_float32_reference_policy_is_accepted_and_renormalized(tmp_path):
  from nash_jax.games import GameFileError, load_game
  n = 20
  ref = np.full(n, 1 / n, np.float32)
  ref[0] += np.float32(1.25e-6)
  assert abs(ref.astype(np.float64).sum() - 1) > 1e-6
  path = tmp_path / 'game.npz'
  np.savez(path, preferences=np.full((n, n), 0.5), ref_policy=ref)
  game = load_game(str(path), dtype=np.float64)
  assert abs(np.asarray(game.ref_policy).sum() - 1) < 1e-12
  np.savez(path, preferences=np.full((n, n), 0.5),
           ref_policy=ref.astype(np.float64))  # float64: 1e-6 still holds.
  with pytest.raises(GameFileError, match='ref_policy must sum to 1'):
    load_game(str(path), dtype=np.float64)


# --------------------------------------------------------------------------
# experiments.stability reports progress per cell and resumes.


@pytest.mark.slow
def test_stability_reports_progress_per_cell_and_resuming(tmp_path):
  from nash_jax import stability
  study = stability.Study(('online_ipo',), (0.1,), (0.01, 0.1), 20)
  base = tabular.TabularConfig(
      num_actions=3, num_seeds=1, num_steps=20, eval_every=10,
      checkpoint_every=10, output_dir=str(tmp_path))
  for attempt in range(2):
    lines = []
    stability.run(stability.validate(base, study), study, str(tmp_path),
                  checkpoint_every=10, log=lines.append)
    assert lines[0].startswith('online_ipo: 2 cells x 1 seeds')
    cells = [line for line in lines if line.startswith('online_ipo  ')]
    assert len(cells) == 2 and 'lr 0.01' in cells[0], lines
    if attempt == 0:
      assert any(line.startswith('[online_ipo] step      10/20')
                 for line in lines), lines
    else:
      assert any('resuming from step 20' in line for line in lines), lines


# --------------------------------------------------------------------------
# sizes that cannot fit, or integers beyond any machine, are refused
# before any work; long setup phases say so first.


def test_memory_is_estimated_and_what_cannot_fit_is_refused(tmp_path):
  sampled = tabular.TabularConfig(
      mode='sampled', algorithm='nash_prox', batch_size=10 ** 9,
      output_dir=str(tmp_path / 'out'))
  flag, need, _ = tabular.memory_estimate(sampled)
  assert flag == 'batch_size' and 1.5e11 < need < 3e11
  gb = 10 ** 9
  with pytest.raises(ConfigError, match=r'^--batch_size: 1000000000 '
                     r'comparisons per step .* need about 200 GB of memory; '
                     r'this machine has 64 GB'):
    tabular.check_memory(sampled, limits=(64 * gb, None))
  exact = tabular.TabularConfig(num_actions=20000, num_seeds=256)
  with pytest.raises(ConfigError, match=r'^--num_actions: 256 games of 1 x '
                     r'20000\^2 preferences need about 1\.6\d TB'):
    tabular.check_memory(exact, limits=(10 ** 12, 80 * gb))
  # Seeds sharing one game: one [n, n] matrix.
  assert tabular.memory_estimate(exact.replace(game_seed=0))[1] < 2e10
  # A sweep multiplies the games by its cells.
  small = tabular.TabularConfig(num_actions=1000, num_seeds=100)
  assert (tabular.memory_estimate(small, runs=4)[1] >
          3.9 * tabular.memory_estimate(small)[1])
  tabular.check_memory(tabular.TabularConfig())  # The default fits.
  # Per-seed games are counted as the trainer lays them out: a lone run of
  # a small game (block 16 on a CPU, two blocks) holds 32 copies; a game of
  # more than 64^2 preferences gets a block of 1 (two copies).
  if jax.devices()[0].platform == 'cpu':
    lone = tabular.TabularConfig(num_actions=60, num_seeds=1)
    assert tabular.memory_estimate(lone)[2].startswith('32 games of 1 x')
    many = lone.replace(num_contexts=100)
    assert tabular.memory_estimate(many)[2].startswith('2 games of 100 x')
  assert experiment.format_bytes(2.04e11) == '204 GB'
  with pytest.raises(ConfigError, match='^--batch_size:'):
    experiment.validate(tabular.TASK, sampled)
  assert not (tmp_path / 'out').exists()


def test_huge_integers_are_refused_before_work(tmp_path):
  with pytest.raises(ConfigError, match=r'^--seed_block: 10{20} is too '
                     r'large \(at most 2\^31 - 1\)$'):
    experiment.validate(tabular.TASK, tabular.TabularConfig(
        seed_block=10 ** 20, output_dir=str(tmp_path / 'out')))
  with pytest.raises(ConfigError, match='^--num_steps: .* too large'):
    experiment.validate(token_game.TASK, token_game.TokenGameConfig(
        num_steps=2 ** 40, output_dir=str(tmp_path / 'out')))
  assert not (tmp_path / 'out').exists()


def test_long_reference_solves_are_announced():
  assert tabular.setup_note(tabular.TabularConfig()) is None
  assert tabular.setup_note(tabular.TabularConfig(
      num_actions=20000, num_seeds=256)) == (
          '[nash_mp] solving pi*_beta for 256 games of n = 20000 (1 context '
          'each) ...')
  assert tabular.setup_note(tabular.TabularConfig(
      num_seeds=10 ** 6, game_seed=0)) is None
  assert 'for 1000000 games of n = 20' in tabular.setup_note(
      tabular.TabularConfig(num_seeds=10 ** 6))


def test_checkpoints_saved_before_a_new_switch_still_resume():
  saved = {'beta': 0.1}
  assert checkpoint_lib.differences(
      saved, {'beta': 0.1, 'stop_on_divergence': False}) == []
  assert checkpoint_lib.differences(
      saved, {'beta': 0.1, 'stop_on_divergence': True}) == [
          'stop_on_divergence: None -> True']


def test_benchmark_sampled_refuses_bad_input_before_any_work(tmp_path):
  (tmp_path / 'file').write_text('')
  cases = [(['--repeats=0'], 'repeats'), (['--num_actions=1'], 'num_actions'),
           ([f'--output={tmp_path}'], 'output'),
           ([f'--output={tmp_path}/file/x.csv'], 'output')]
  outcomes = run_cases('experiments.benchmark_sampled',
                       [args for args, _ in cases], tmp_path / 'driver')
  for (args, flag), outcome in zip(cases, outcomes):
    assert_refused(outcome, f'error: --{flag}:')  # Not even the device line.


# --------------------------------------------------------------------------
# an unreachable coordinator is one line after --distributed_timeout
# (JAX's own client would abort the process with a C++ stack dump).


@pytest.mark.slow
def test_unreachable_coordinator_times_out_with_one_line(tmp_path):
  import socket
  with socket.socket() as s:  # A free port that nothing listens on.
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  proc = _start('experiments.matrix_game', '--distributed',
                f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2', '--process_id=1',
                '--distributed_timeout=1', f'--output_dir={tmp_path / "o"}')
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert _lines(err) == [
      f'error: --coordinator_address: 127.0.0.1:{port} did not answer '
      'within 1 s (--distributed_timeout): Connection refused']
  assert not (tmp_path / 'o').exists()
