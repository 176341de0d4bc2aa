"""End-to-end tests of the experiment binaries (experiments/*.py).

Every test runs a binary as a separate process and checks what it printed
and wrote: the output layout of experiments.matrix_game and
experiments.compare, that the written metrics agree with the written
policies, that seed ``i`` of a sweep equals the single run of seed ``i``,
and that bad input stops before any work with one ``error:`` line.

Speed. A fresh ``python -m experiments.matrix_game`` spends about 2.5 s
importing JAX and 3-5 s compiling, and this file needs about a hundred
runs. Two things keep it near a minute on 2 CPU cores:

* A fork server: one Python process imports the heavy modules once, then
  forks a child per run that executes the binary exactly as ``python -m``
  does (``runpy.run_module(..., run_name='__main__')``, fresh flags, stdout
  and stderr to files, atexit handlers run). Two servers run side by side.
  ``test_real_process_*`` run genuine ``python -m`` processes and check that
  they match the forked runs bit for bit; ``NASH_JAX_TEST_FORK=0`` runs every
  case as a genuine process.
* JAX's persistent compilation cache, in a fresh directory per test module,
  so that runs which compile the same program share the compilation (a
  cached executable is the same program; results are unaffected).

The runs that tests read are listed in ``PLAN``; those of the selected tests
(see :func:`uses`) start together, before the first test.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import slow_except

from nash_jax import algorithms as algorithms_lib
from nash_jax import reference
from nash_jax.algorithms import ALGORITHM_NAMES
from nash_jax.games import GENERATORS
from nash_jax.tasks import tabular

ROOT = Path(__file__).parents[1]
MATRIX_GAME = 'experiments.matrix_game'
COMPARE = 'experiments.compare'
FILES = ['checkpoints', 'config.json', 'equilibrium.npy', 'final_policy.npy',
         'manifest.json', 'metrics.csv', 'summary.json']
METRIC_HEADER = ['seed', 'step', 'preference_queries', 'kl_to_equilibrium',
                 'duality_gap', 'exploitability', 'fixed_point_residual',
                 'win_rate_vs_ref']
# absl's own log lines (e.g. JAX probing for a TPU) on stderr.
ABSL_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')
USE_FORK = os.environ.get('NASH_JAX_TEST_FORK', '1') != '0'
WORKERS = 2
TIMEOUT_S = 300


def _steps_args(algorithm):
  """A tiny run: 50 steps, evaluated every 10 (proximal_point: 3, every 1)."""
  if algorithm == 'proximal_point':
    return ['--num_steps=3', '--eval_every=1']
  return ['--num_steps=50', '--eval_every=10']


def _sweep_args(algorithm, *extra, num_seeds=3, seed=4):
  return [f'--algorithm={algorithm}', '--num_actions=6',
          f'--num_seeds={num_seeds}', f'--seed={seed}',
          *_steps_args(algorithm), *extra]


# Sweeps compared with single runs: (name, algorithm, extra flags).
SWEEP_CASES = [
    ('nash_mp', 'nash_mp', []),
    ('omwu', 'omwu', []),
    ('self_play_pg', 'self_play_pg', []),
    ('nash_mp-game_seed', 'nash_mp', ['--game_seed=7']),
    ('self_play_pg-game_seed-init_random', 'self_play_pg',
     ['--game_seed=7', '--init=random']),
]

# The runs that tests read: name -> (module, args). '{data}' in an argument is
# the directory of the game files written by _write_game_files; every run
# gets --output_dir=<base>/<name>. Of repeated flags the last one wins.
PLAN = {}
for _algorithm in ALGORITHM_NAMES:
  PLAN[f'sweep/{_algorithm}'] = (MATRIX_GAME, _sweep_args(_algorithm))
for _name, _algorithm, _extra in SWEEP_CASES:
  if _extra:
    PLAN[f'sweep/{_name}'] = (MATRIX_GAME, _sweep_args(_algorithm, *_extra))
  PLAN[f'single/{_name}'] = (MATRIX_GAME, _sweep_args(
      _algorithm, *_extra, num_seeds=1, seed=5))
for _game in GENERATORS:
  if _game != 'random':  # That is sweep/nash_mp.
    PLAN[f'game/{_game}'] = (MATRIX_GAME, _sweep_args(
        'nash_mp', f'--game={_game}', '--num_steps=20', *(
            ['--ref_policy=random'] if _game == 'tie' else [])))
PLAN['beta0'] = (MATRIX_GAME, [
    '--algorithm=extragradient', '--beta=0', '--num_actions=6',
    '--num_contexts=2', '--num_seeds=2', '--num_steps=25', '--eval_every=10'])
PLAN['file/npy'] = (MATRIX_GAME, [
    '--game=file', '--game_file={data}/game.npy', '--algorithm=omd',
    '--num_actions=20', '--num_seeds=2', '--num_steps=30', '--eval_every=10'])
PLAN['file/npz'] = (MATRIX_GAME, [
    '--game=file', '--game_file={data}/game.npz', '--algorithm=nash_mp',
    '--beta=0.2', '--num_steps=30', '--eval_every=10'])
PLAN['compare'] = (COMPARE, [
    '--algorithms=nash_mp,omd,proximal_point', '--num_actions=6',
    '--num_seeds=2', '--query_budget=60', '--eval_every=5'])

# Sampled mode (--mode=sampled): every sampled algorithm with the tabular
# policy, and the log-linear and MLP policies on the annotators game; tiny
# runs of 20 steps of batch 8. Seed 5 of two sweeps is run alone too.
SAMPLED_BATCH = 8
SAMPLED_CASES = {  # name -> extra flags
    **{alg: [f'--algorithm={alg}'] for alg in
       algorithms_lib.SAMPLED_ALGORITHM_NAMES},
    'loglinear': ['--algorithm=nash_prox', '--policy=loglinear',
                  '--game=annotators', '--feature_dim=4', '--num_contexts=2',
                  '--anchor=ema', '--anchor_tau=0.5'],
    'mlp': ['--algorithm=self_play_pg', '--policy=mlp', '--game=annotators',
            '--feature_dim=3', '--num_contexts=2', '--hidden_sizes=8,8'],
}
SAMPLED_SINGLES = ('online_ipo', 'mlp')

# The cases the fast tier (-m 'not slow') keeps; the full suite runs all.
FAST_ALGORITHMS = {'nash_mp', 'online_ipo'}
FAST_SAMPLED = {'online_ipo'}


def _sampled_args(name, num_seeds=3, seed=4):
  return ['--mode=sampled', '--num_actions=5', f'--num_seeds={num_seeds}',
          f'--seed={seed}', '--num_steps=20', '--eval_every=10',
          f'--batch_size={SAMPLED_BATCH}', *SAMPLED_CASES[name]]


for _name in SAMPLED_CASES:
  PLAN[f'sampled/{_name}'] = (MATRIX_GAME, _sampled_args(_name))
for _name in SAMPLED_SINGLES:
  PLAN[f'sampled-single/{_name}'] = (MATRIX_GAME, _sampled_args(
      _name, num_seeds=1, seed=5))


def _write_game_files(data: Path) -> dict:
  """The game files of the 'file/*' runs; returns the arrays written."""
  rng = np.random.default_rng(0)

  def preferences(*shape):
    upper = rng.uniform(size=shape)
    return 0.5 + (upper - np.swapaxes(upper, -1, -2)) / 2

  npy = preferences(5, 5)
  np.save(data / 'game.npy', npy)
  ref = rng.uniform(0.2, 1.0, size=(2, 4))
  npz = {'preferences': preferences(2, 4, 4),
         'ref_policy': ref / ref.sum(-1, keepdims=True),
         'context_weights': np.array([0.3, 0.7])}
  np.savez(data / 'game.npz', **npz)
  return {'npy': {'preferences': npy}, 'npz': npz}


# --------------------------------------------------------------------------
# Running the binaries.


@dataclasses.dataclass
class Run:
  args: list
  returncode: int
  stdout: str
  stderr: str

  def describe(self) -> str:
    return (f'args: {self.args}\nexit code: {self.returncode}\n'
            f'stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}')


# The fork server: reads one JSON request per line, runs it in a forked child
# like `python -m MODULE ARGS` and answers with the child's exit status.
_SERVER = r'''
import atexit, json, os, runpy, sys, traceback
import absl.app, experiments.common, nash_jax.analysis, nash_jax.experiment
for line in sys.stdin:
  request = json.loads(line)
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      for fd, name in ((1, 'stdout'), (2, 'stderr')):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT), fd)
      sys.argv = [request['module']] + request['args']
      try:
        runpy.run_module(request['module'], run_name='__main__',
                         alter_sys=True)
        code = 0
      except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
          code = e.code or 0
        else:
          print(e.code, file=sys.stderr)
      except BaseException:
        traceback.print_exc()
      atexit._run_exitfuncs()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  _, status = os.waitpid(pid, 0)
  print(os.waitstatus_to_exitcode(status), flush=True)
'''


class Runner:
  """Runs the binaries, :data:`WORKERS` at a time; see the module docstring."""

  def __init__(self, base: Path):
    self.base = base
    self.logs = base / 'logs'
    self.logs.mkdir()
    self.data = base / 'data'
    self.data.mkdir()
    self.env = dict(os.environ,
                    JAX_COMPILATION_CACHE_DIR=str(base / 'jax_cache'),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    self.servers = queue.Queue()
    self.all_servers = []
    if USE_FORK:
      for _ in range(WORKERS):
        server = subprocess.Popen(
            [sys.executable, '-c', _SERVER], cwd=ROOT, env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.servers.put(server)
        self.all_servers.append(server)
    self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    self.count = 0
    self.lock = threading.Lock()
    self.planned = {}

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)
    for server in self.all_servers:
      server.stdin.close()  # The server exits after its current run.
    for server in self.all_servers:
      try:
        server.wait(timeout=TIMEOUT_S)
      except subprocess.TimeoutExpired:
        server.kill()

  def _run(self, module, args) -> Run:
    if not USE_FORK:
      return run_process(module, args, self.env)
    with self.lock:
      self.count += 1
      stem = self.logs / str(self.count)
    out, err = stem.with_suffix('.out'), stem.with_suffix('.err')
    server = self.servers.get()
    try:
      server.stdin.write(json.dumps({
          'module': module, 'args': args, 'stdout': str(out),
          'stderr': str(err)}) + '\n')
      server.stdin.flush()
      answer = server.stdout.readline()
    finally:
      self.servers.put(server)
    assert answer, 'the fork server died'
    return Run(args, int(answer), out.read_text(), err.read_text())

  def submit(self, module, args) -> concurrent.futures.Future:
    return self.pool.submit(self._run, module, list(args))

  def run(self, module, args) -> Run:
    return self.submit(module, args).result(timeout=TIMEOUT_S)

  def start(self, name):
    if name not in self.planned:
      module, args = PLAN[name]
      args = [a.replace('{data}', str(self.data)) for a in args]
      args.append(f'--output_dir={self.base / name}')
      self.planned[name] = self.submit(module, args)

  def get(self, name) -> tuple[Run, Path]:
    """A planned run (exit status 0 checked) and its output directory."""
    self.start(name)
    run = self.planned[name].result(timeout=TIMEOUT_S)
    assert run.returncode == 0, run.describe()
    assert 'Traceback' not in run.stdout + run.stderr, run.describe()
    return run, self.base / name


def run_process(module, args, env=None) -> Run:
  """``python -m module args`` as a genuine process."""
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
  return Run(list(args), result.returncode, result.stdout, result.stderr)


def uses(plan_keys):
  """Marks the PLAN entries a test reads: ``plan_keys(**params)``."""
  def mark(test):
    test.plan_keys = plan_keys
    return test
  return mark


@pytest.fixture(scope='module')
def runner(request, tmp_path_factory):
  """The runner, with the planned runs of the selected tests started."""
  runner = Runner(tmp_path_factory.mktemp('binaries'))
  runner.games = _write_game_files(runner.data)
  for item in request.session.items:
    plan_keys = getattr(getattr(item, 'function', None), 'plan_keys', None)
    if plan_keys and item.module is request.module:
      callspec = getattr(item, 'callspec', None)
      for name in plan_keys(**(callspec.params if callspec else {})):
        runner.start(name)
  yield runner
  runner.close()


# --------------------------------------------------------------------------
# Reading and checking results.


def read_metrics(out: Path):
  """``(header, rows as dicts of strings, lines)`` of metrics.csv."""
  text = (out / 'metrics.csv').read_text()
  reader = csv.reader(text.splitlines())
  header = next(reader)
  return header, [dict(zip(header, r)) for r in reader], text.splitlines()


def _null_to_nan(obj):
  if obj is None:
    return math.nan
  if isinstance(obj, dict):
    return {k: _null_to_nan(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_null_to_nan(v) for v in obj]
  return obj


def rows_last_step(out: Path) -> str:
  return (out / 'metrics.csv').read_text().splitlines()[-1].split(',')[1]


def read_json(path: Path, null_is_nan: bool = False):
  """Reads strict JSON; in summaries NaN is written as null, read as NaN."""
  text = path.read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  obj = json.loads(text)
  return _null_to_nan(obj) if null_is_nan else obj


def _same(a: float, b: float) -> bool:
  return (math.isnan(a) and math.isnan(b)) or a == b


def expected_steps(num_steps, eval_every):
  return list(range(0, num_steps, eval_every)) + [num_steps]


def np_kl(p, q):
  """``KL(p || q)`` per context, terms with ``p = 0`` counting 0."""
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), axis=-1)


@dataclasses.dataclass
class Layout:
  config: dict
  header: list
  rows: list          # metrics.csv rows, dicts of strings
  lines: list         # metrics.csv lines
  by_seed: dict       # seed -> its rows, in order
  final_policy: np.ndarray
  equilibrium: np.ndarray
  summary: dict

  @property
  def steps(self):
    return [int(r['step']) for r in self.by_seed[self.config['seed']]]

  def last(self, column):
    """The column of every seed's last row, ``[S]``."""
    return np.array([float(rows[-1][column]) for rows in
                     self.by_seed.values()])


def check_layout(out: Path, context_weights=None, tol=1e-9) -> Layout:
  """Checks the matrix_game layout of ``out`` and its internal consistency.

  The metric columns, the per-seed and mean finals of summary.json and the
  last rows of metrics.csv must agree, and ``kl_to_equilibrium`` of the last
  rows must be ``KL_rho(equilibrium || final_policy)`` recomputed here
  (``rho`` uniform unless ``context_weights``).
  """
  assert sorted(os.listdir(out)) == FILES  # No *.tmp left over.
  # The final step is always checkpointed (rerunning resumes, finished).
  last_step = int(rows_last_step(out))
  assert (out / 'checkpoints' / str(last_step)).is_dir()
  config = read_json(out / 'config.json')
  num_seeds, seed = config['num_seeds'], config['seed']
  shape = (num_seeds, config['num_contexts'], config['num_actions'])
  header, rows, lines = read_metrics(out)
  assert header[:len(METRIC_HEADER)] == METRIC_HEADER
  seeds = list(range(seed, seed + num_seeds))
  # Rows go evaluation by evaluation, every seed in order within each.
  assert len(rows) % num_seeds == 0 and rows
  assert [int(r['seed']) for r in rows] == seeds * (len(rows) // num_seeds)
  by_seed = {s: [r for r in rows if int(r['seed']) == s] for s in seeds}
  steps = [int(r['step']) for r in by_seed[seed]]
  assert steps[0] == 0 and steps == sorted(set(steps)), steps
  assert steps[-1] <= config['num_steps']
  for s in seeds:
    assert [int(r['step']) for r in by_seed[s]] == steps
    queries = [int(r['preference_queries']) for r in by_seed[s]]
    assert queries[0] == 0 and queries == sorted(queries), queries
  layout = Layout(config, header, rows, lines, by_seed,
                  np.load(out / 'final_policy.npy'),
                  np.load(out / 'equilibrium.npy'),
                  read_json(out / 'summary.json', null_is_nan=True))
  for array in (layout.final_policy, layout.equilibrium):
    assert array.shape == shape and array.dtype == np.float64
    assert np.all(array >= 0)
    np.testing.assert_allclose(array.sum(-1), 1, atol=tol)

  summary = layout.summary
  assert summary['algorithm'] == config['algorithm']
  assert [f['seed'] for f in summary['final']] == seeds
  for final in summary['final']:
    last = by_seed[final['seed']][-1]
    for column in header[1:]:
      assert _same(final[column], float(last[column])), (column, final)
  for column in header[1:]:
    mean = np.mean([f[column] for f in summary['final']])
    assert summary['mean'][column] == pytest.approx(mean, rel=1e-12,
                                                    nan_ok=True), column
  for column in METRIC_HEADER[3:]:
    if column != 'fixed_point_residual' or config['beta'] > 0:
      assert np.all(np.isfinite(layout.last(column))), column

  weights = (np.full(shape[1], 1 / shape[1]) if context_weights is None
             else np.asarray(context_weights))
  kl = np_kl(layout.equilibrium, layout.final_policy) @ weights
  np.testing.assert_allclose(layout.last('kl_to_equilibrium'), kl,
                             rtol=tol, atol=1e-12)
  if config['init'] == 'ref':  # The first row is pi_ref against itself.
    np.testing.assert_allclose(
        [float(rows[s - seed]['win_rate_vs_ref']) for s in seeds], 0.5,
        atol=1e-12)
  return layout


def check_refused(run: Run, out: Path, expected_code=2,
                  must_contain=()):
  """Bad input: the exit status, one ``error:`` line, nothing written."""
  assert 'Traceback' not in run.stdout + run.stderr, run.describe()
  if expected_code is None:
    assert run.returncode != 0, run.describe()
  else:
    assert run.returncode == expected_code, run.describe()
  assert not out.exists(), run.describe()
  if expected_code == 2:
    lines = [line for line in run.stderr.splitlines()
             if line.strip() and not ABSL_LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith('error: '), run.describe()
    assert run.stdout == '', run.describe()
    text = lines[0]
  else:
    text = run.stderr
  for fragment in must_contain:
    assert fragment in text, run.describe()


# --------------------------------------------------------------------------
# experiments.matrix_game, end to end.


@pytest.mark.parametrize('algorithm', slow_except(
    ALGORITHM_NAMES, FAST_ALGORITHMS))
@uses(lambda algorithm: [f'sweep/{algorithm}'])
def test_matrix_game_every_algorithm(runner, algorithm):
  run, out = runner.get(f'sweep/{algorithm}')
  layout = check_layout(out)
  config = layout.config
  num_steps, eval_every = (3, 1) if algorithm == 'proximal_point' else (50, 10)
  assert (config['algorithm'], config['num_seeds'], config['seed'],
          config['num_actions'], config['num_contexts'], config['num_steps'],
          config['eval_every'], config['beta'], config['output_dir']) == (
              algorithm, 3, 4, 6, 1, num_steps, eval_every, 0.1, str(out))
  # Step sizes resolved to the algorithm's defaults.
  spec = algorithms_lib.ALGORITHMS[algorithm]
  if spec.default_eta is None:
    assert config['eta'] is None
  else:
    assert config['eta'] == spec.default_eta(0.1) > 0
  if spec.parameter_space:
    assert config['learning_rate'] == algorithms_lib.default_learning_rate(
        algorithm, 0.1, 'sgd', 1) > 0
  else:
    assert config['learning_rate'] is None
  assert (config['inner_eta'] is not None) == (algorithm == 'proximal_point')

  # The algorithm's step info follows the metrics (README.md).
  extra = {'proximal_point': ['inner_steps'], 'self_play_pg': ['loss'],
           'online_ipo': ['loss']}.get(algorithm, [])
  assert layout.header == METRIC_HEADER + extra
  steps = expected_steps(num_steps, eval_every)
  assert layout.steps == steps
  assert len(layout.rows) == 3 * len(steps)
  assert sorted(layout.by_seed) == [4, 5, 6]
  assert layout.last('preference_queries').min() > 0
  # Seeds draw their own games.
  assert not np.array_equal(layout.equilibrium[0], layout.equilibrium[1])

  progress = [line for line in run.stdout.splitlines()
              if line.startswith(f'[{algorithm}] step')]
  assert [int(line.split()[2].split('/')[0]) for line in progress] == steps, (
      run.stdout)
  table = run.stdout.splitlines()
  mean = [line for line in table if line.lstrip().startswith('mean')]
  assert len(mean) == 1, run.stdout
  assert [line.split()[0] for line in table[-5:-1]] == ['4', '5', '6',
                                                        'mean']
  assert table[-1].startswith(f'wrote {out}')
  mean_kl = float(mean[0].split()[2])
  assert mean_kl == pytest.approx(layout.summary['mean']['kl_to_equilibrium'],
                                  rel=1e-3)


@pytest.mark.parametrize('name,algorithm,extra', slow_except(
    SWEEP_CASES, FAST_ALGORITHMS, key=lambda c: c[0]),
                         ids=[c[0] for c in SWEEP_CASES])
@uses(lambda name, algorithm, extra: [
    f'sweep/{name}' if extra else f'sweep/{algorithm}', f'single/{name}'])
def test_sweep_seed_equals_single_run(runner, name, algorithm, extra):
  key = f'sweep/{name}' if extra else f'sweep/{algorithm}'
  sweep = check_layout(runner.get(key)[1])
  single = check_layout(runner.get(f'single/{name}')[1])
  assert single.config['num_seeds'] == 1 and single.config['seed'] == 5
  assert np.array_equal(sweep.final_policy[1], single.final_policy[0])
  assert np.array_equal(sweep.equilibrium[1], single.equilibrium[0])
  seed5 = [line for line in sweep.lines if line.startswith('5,')]
  assert sweep.lines[0] == single.lines[0]
  assert seed5 and seed5 == single.lines[1:]
  assert sweep.summary['final'][1] == single.summary['final'][0]

  shared = '--game_seed=7' in extra
  same_games = [np.array_equal(sweep.equilibrium[0], e)
                for e in sweep.equilibrium[1:]]
  assert same_games == [shared] * 2
  if '--init=random' in extra:
    # Each seed starts from its own random policy.
    start = [float(rows[0]['kl_to_equilibrium'])
             for rows in sweep.by_seed.values()]
    assert len(set(start)) == 3
    assert not np.allclose(
        [float(rows[0]['win_rate_vs_ref']) for rows in
         sweep.by_seed.values()], 0.5)


@pytest.mark.slow
@uses(lambda: ['beta0'])
def test_beta_zero_runs_against_a_von_neumann_winner(runner):
  _, out = runner.get('beta0')
  layout = check_layout(out)
  assert layout.config['beta'] == 0.0 and layout.config['eta'] == 1.0
  assert layout.steps == [0, 10, 20, 25]
  assert all(r['fixed_point_residual'] == 'nan' for r in layout.rows)
  assert math.isnan(layout.summary['mean']['fixed_point_residual'])
  for row in layout.rows:  # At beta = 0 the gap is twice the exploitability.
    assert float(row['duality_gap']) == pytest.approx(
        2 * float(row['exploitability']), abs=1e-12)

  # Regenerate the games: the equilibrium wins against every pure response
  # at least half the time, and the exploitability column is the final
  # policy's.
  config = tabular.TabularConfig(**layout.config)
  games = tabular.build_games(config, None)
  preferences = np.asarray(games.preferences)         # [S, X, n, n]
  eq = layout.equilibrium
  worst = np.einsum('sxyz,sxy->sxz', preferences, eq).min(-1)
  assert np.all(worst >= 0.5 - 1e-8), worst
  g = np.einsum('sxyz,sxz->sxy', preferences, layout.final_policy)
  np.testing.assert_allclose(layout.last('exploitability'),
                             g.max(-1).mean(-1) - 0.5, rtol=1e-9, atol=1e-12)


def np_metrics(policy, preferences, ref, weights, beta, eq):
  """Every metric of nash_jax.metrics, in NumPy, for one seed."""
  g = np.einsum('xyz,xz->xy', preferences, policy)
  g_ref = np.einsum('xyz,xz->xy', preferences, ref)
  soft = beta * np.log(np.sum(ref * np.exp(g / beta), axis=-1))
  residual = np.log(policy) - np.log(ref) - g / beta
  return {
      'kl_to_equilibrium': np_kl(eq, policy) @ weights,
      'duality_gap': 2 * (soft @ weights + beta * np_kl(policy, ref) @
                          weights) - 1,
      'exploitability': g.max(-1) @ weights - 0.5,
      'fixed_point_residual': np.ptp(residual, axis=-1) @ weights,
      'win_rate_vs_ref': np.sum(policy * g_ref, axis=-1) @ weights,
  }


@pytest.mark.parametrize('kind', slow_except(['npy', 'npz'], {'npz'}))
@uses(lambda kind: [f'file/{kind}'])
def test_game_file(runner, kind):
  _, out = runner.get(f'file/{kind}')
  arrays = runner.games[kind]
  preferences = arrays['preferences']
  if preferences.ndim == 2:
    preferences = preferences[None]
  num_contexts, num_actions = preferences.shape[0], preferences.shape[-1]
  ref = arrays.get('ref_policy', np.full((num_contexts, num_actions),
                                         1 / num_actions))
  weights = arrays.get('context_weights', np.full(num_contexts,
                                                  1 / num_contexts))
  layout = check_layout(out, context_weights=weights)
  config = layout.config
  # The file decides the sizes (--num_actions=20 is overridden).
  assert (config['game'], config['game_file'], config['num_contexts'],
          config['num_actions']) == (
              'file', str(runner.data / f'game.{kind}'), num_contexts,
              num_actions)
  beta = config['beta']
  eq = layout.equilibrium
  for s in range(config['num_seeds']):  # All seeds play the file's game.
    assert np.array_equal(eq[s], eq[0])
  # The equilibrium is the fixed point pi* ∝ pi_ref exp(g_pi* / beta) of the
  # file's game with the file's pi_ref.
  assert np_metrics(eq[0], preferences, ref, weights, beta, eq[0])[
      'fixed_point_residual'] < 1e-8
  for s in range(config['num_seeds']):
    expected = np_metrics(layout.final_policy[s], preferences, ref, weights,
                          beta, eq[s])
    for column, value in expected.items():
      written = float(layout.by_seed[config['seed'] + s][-1][column])
      assert written == pytest.approx(value, rel=1e-9, abs=1e-12), column
  assert float(layout.rows[-1]['kl_to_equilibrium']) < float(
      layout.rows[0]['kl_to_equilibrium'])


@pytest.mark.parametrize('game', slow_except(GENERATORS, {'random'}))
@uses(lambda game: ['sweep/nash_mp'] + (
    [f'game/{game}'] if game != 'random' else []))
def test_generated_game_families(runner, game):
  key = 'sweep/nash_mp' if game == 'random' else f'game/{game}'
  layout = check_layout(runner.get(key)[1])
  assert layout.config['game'] == game
  assert layout.steps == ([0, 10, 20, 30, 40, 50] if game == 'random' else
                          [0, 10, 20])
  if game == 'tie':  # Every pair ties: pi* = pi_ref, which never moves.
    assert layout.config['ref_policy'] == 'random'
    assert not np.allclose(layout.equilibrium, 1 / 6)
    np.testing.assert_allclose(layout.final_policy, layout.equilibrium,
                               atol=1e-9)
    np.testing.assert_allclose(layout.last('kl_to_equilibrium'), 0,
                               atol=1e-12)
  else:
    kl = [float(r['kl_to_equilibrium']) for r in layout.rows]
    assert kl[-1] <= kl[0]
  # Each family draws games of its own.
  if game != 'random':
    other = check_layout(runner.get('sweep/nash_mp')[1])
    assert not np.allclose(other.equilibrium, layout.equilibrium)


# --------------------------------------------------------------------------
# experiments.compare, end to end.


@uses(lambda: ['compare'])
def test_compare(runner):
  run, out = runner.get('compare')
  names = ['nash_mp', 'omd', 'proximal_point']
  assert sorted(os.listdir(out)) == sorted(
      names + ['comparison.csv', 'comparison.png'])
  layouts = {name: check_layout(out / name) for name in names}
  for name, layout in layouts.items():
    assert layout.config['algorithm'] == name
    assert layout.config['eval_every'] == (1 if name == 'proximal_point'
                                           else 5)
    # Stops at the first evaluation where every seed used the budget.
    queries = [[int(r['preference_queries']) for r in rows]
               for rows in layout.by_seed.values()]
    assert min(q[-1] for q in queries) >= 60, (name, queries)
    assert min(q[-2] for q in queries) < 60, (name, queries)
    assert np.array_equal(layout.equilibrium, layouts['nash_mp'].equilibrium)
  assert not np.array_equal(layouts['nash_mp'].equilibrium[0],
                            layouts['nash_mp'].equilibrium[1])

  with open(out / 'comparison.csv', newline='') as f:
    table = list(csv.DictReader(f))
  assert [row['algorithm'] for row in table] == names
  for column in ('kl_to_equilibrium', 'queries_to_kl_1e-06',
                 'reached_kl_1e-06', 'queries_to_kl_0.001', 'duality_gap',
                 'preference_queries', 'num_seeds'):
    assert column in table[0], column
  for row in table:
    layout = layouts[row['algorithm']]
    assert float(row['kl_to_equilibrium']) == pytest.approx(
        layout.summary['mean']['kl_to_equilibrium'], rel=1e-12)
    assert int(float(row['num_seeds'])) == 2
    # Queries to KL < 1e-6, recomputed from metrics.csv.
    first = []
    for rows in layout.by_seed.values():
      hits = [int(r['preference_queries']) for r in rows
              if float(r['kl_to_equilibrium']) < 1e-6]
      first.append(hits[0] if hits else math.nan)
    assert float(row['reached_kl_1e-06']) == np.mean(np.isfinite(first))
    assert _same(float(row['queries_to_kl_1e-06']), float(np.mean(first)))

  png = (out / 'comparison.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and png[12:16] == b'IHDR'
  width, height = struct.unpack('>II', png[16:24])
  assert width > 100 and height > 100 and len(png) > 5000
  for name in names:
    assert any(line.startswith(name) for line in run.stdout.splitlines())
  assert run.stdout.splitlines()[-1].startswith(f'wrote {out}')


# --------------------------------------------------------------------------
# experiments.matrix_game --mode=sampled, end to end.


@pytest.mark.parametrize('name', slow_except(SAMPLED_CASES,
                                             FAST_SAMPLED))
@uses(lambda name: [f'sampled/{name}'])
def test_matrix_game_sampled(runner, name):
  run, out = runner.get(f'sampled/{name}')
  layout = check_layout(out)  # Same files as exact mode; KL recomputed.
  config = layout.config
  flags = dict(a[2:].split('=', 1) for a in SAMPLED_CASES[name])
  policy = flags.get('policy', 'tabular')
  assert (config['mode'], config['algorithm'], config['policy'],
          config['batch_size'], config['num_seeds'], config['num_steps']) == (
              'sampled', flags['algorithm'], policy, SAMPLED_BATCH, 3, 20)
  assert config['optimizer'] == ('sgd' if policy == 'tabular' else 'adam')
  assert config['learning_rate'] > 0
  if flags['algorithm'] == 'approx_nash_mp':
    assert config['inner_steps'] == 10
  assert layout.header == METRIC_HEADER + ['loss']
  assert layout.steps == [0, 10, 20]
  # One preference query per comparison, batch_size a step.
  for row in layout.rows:
    assert int(row['preference_queries']) == (
        int(row['step']) * SAMPLED_BATCH), row
    assert math.isfinite(float(row['loss']))
  # [S, X, n] policies whose rows sum to 1 (check_layout), that moved from
  # pi_ref and differ between seeds, which draw their own games.
  assert layout.final_policy.shape == (3, int(flags.get('num_contexts', 1)),
                                       5)
  assert not np.array_equal(layout.equilibrium[0], layout.equilibrium[1])
  assert not np.allclose(layout.final_policy[0], layout.final_policy[1])
  assert np.all(layout.last('win_rate_vs_ref') != 0.5)
  progress = [line for line in run.stdout.splitlines()
              if line.startswith(f'[{flags["algorithm"]}] step')]
  assert len(progress) == 3, run.stdout
  assert run.stdout.splitlines()[-1].startswith(f'wrote {out}')

  # The equilibrium is that of the regenerated games, and a log-linear
  # final policy is in its class: log(pi / pi_ref) = phi theta + c(x).
  games = tabular.build_games(tabular.TabularConfig(**{
      **config, 'hidden_sizes': tuple(config['hidden_sizes'])}), None)
  for i in range(3):
    eq = reference.regularized_equilibrium(games.preferences[i],
                                           games.ref_policy[i], 0.1)
    np.testing.assert_allclose(layout.equilibrium[i], eq, rtol=1e-9,
                               atol=1e-12)
  if policy == 'loglinear':
    for i in range(3):
      phi = np.asarray(games.features[i])            # [X, n, d]
      num_contexts = phi.shape[0]
      design = np.concatenate([phi.reshape(-1, phi.shape[-1]), np.kron(
          np.eye(num_contexts), np.ones((5, 1)))], axis=1)
      target = np.log(layout.final_policy[i] /
                      np.asarray(games.ref_policy[i])).reshape(-1)
      coef = np.linalg.lstsq(design, target, rcond=None)[0]
      np.testing.assert_allclose(design @ coef, target, atol=1e-8)
      assert np.max(np.abs(coef[:phi.shape[-1]])) > 1e-4


@pytest.mark.parametrize('name', slow_except(SAMPLED_SINGLES,
                                             FAST_SAMPLED))
@uses(lambda name: [f'sampled/{name}', f'sampled-single/{name}'])
def test_sampled_sweep_seed_equals_single_run(runner, name):
  sweep = check_layout(runner.get(f'sampled/{name}')[1])
  single = check_layout(runner.get(f'sampled-single/{name}')[1])
  assert single.config['num_seeds'] == 1 and single.config['seed'] == 5
  assert np.array_equal(sweep.final_policy[1], single.final_policy[0])
  assert np.array_equal(sweep.equilibrium[1], single.equilibrium[0])
  seed5 = [line for line in sweep.lines if line.startswith('5,')]
  assert sweep.lines[0] == single.lines[0]
  assert seed5 and seed5 == single.lines[1:]
  assert sweep.summary['final'][1] == single.summary['final'][0]


SAMPLED_TINY = ['--mode=sampled', '--algorithm=nash_prox', '--batch_size=8']

# (id, flags after MG_TINY, the flag the one error line starts with, and
# what else it must contain).
SAMPLED_REFUSED = [
    ('batch_size', [*SAMPLED_TINY, '--batch_size=0'], 'batch_size', []),
    ('anchor_every', [*SAMPLED_TINY, '--anchor_every=0'], 'anchor_every', []),
    ('anchor_tau_zero', [*SAMPLED_TINY, '--anchor_tau=0'], 'anchor_tau', []),
    ('anchor_tau_large', [*SAMPLED_TINY, '--anchor_tau=1.5'], 'anchor_tau',
     []),
    ('anchor', [*SAMPLED_TINY, '--anchor=lazy'], 'anchor', ['lazy']),
    ('feature_dim_zero', [*SAMPLED_TINY, '--policy=loglinear',
                          '--feature_dim=0'], 'policy', ['--feature_dim']),
    ('feature_dim_annotators', [*SAMPLED_TINY, '--game=annotators',
                                '--feature_dim=0'], 'feature_dim', []),
    ('policy', [*SAMPLED_TINY, '--policy=transformer'], 'policy',
     ['transformer']),
    ('policy_exact', ['--policy=loglinear'], 'policy', ['--mode=sampled']),
    ('sampled_nash_mp', ['--mode=sampled', '--algorithm=nash_mp'], 'mode',
     ['nash_mp']),
    ('exact_nash_prox', ['--algorithm=nash_prox'], 'mode', ['nash_prox']),
    ('mode', ['--mode=batched'], 'mode', ['batched']),
    ('hidden_sizes_letters', [*SAMPLED_TINY, '--hidden_sizes=a,b'],
     'hidden_sizes', []),
    ('hidden_sizes_zero', [*SAMPLED_TINY, '--policy=mlp',
                           '--hidden_sizes=8,0'], 'hidden_sizes', []),
    ('outcome', [*SAMPLED_TINY, '--outcome=human'], 'outcome', ['human']),
    ('oracle', [*SAMPLED_TINY, '--oracle=human'], 'oracle', ['human']),
    ('mixture', ['--mode=sampled', '--algorithm=nash_md_pg',
                 '--mixture=1.5'], 'mixture', []),
    ('max_grad_norm', [*SAMPLED_TINY, '--max_grad_norm=0'], 'max_grad_norm',
     []),
    ('schedule', [*SAMPLED_TINY, '--schedule=linear'], 'schedule', []),
    ('decay_steps', [*SAMPLED_TINY, '--schedule=cosine', '--decay_steps=0'],
     'decay_steps', []),
    ('inner_steps', ['--mode=sampled', '--algorithm=approx_nash_mp',
                     '--inner_steps=0'], 'inner_steps', []),
    ('file_without_features', [*SAMPLED_TINY, '--policy=loglinear',
                               '--game=file',
                               '--game_file={data}/game.npz'], 'policy',
     ['features']),
]


@pytest.mark.parametrize('name,args,flag,fragments', SAMPLED_REFUSED,
                         ids=[c[0] for c in SAMPLED_REFUSED])
def test_sampled_bad_input_is_refused(runner, tmp_path, name, args, flag,
                                      fragments):
  out = tmp_path / 'out'
  run = runner.run(MATRIX_GAME, [f'--output_dir={out}', *MG_TINY,
                                 *_fill(args, runner.data)])
  check_refused(run, out, must_contain=fragments)
  lines = [line for line in run.stderr.splitlines()
           if line.strip() and not ABSL_LOG_LINE.match(line)]
  assert lines[0].startswith(f'error: --{flag}:'), run.describe()


# --------------------------------------------------------------------------
# Bad input.


def _write_bad_files(data: Path):
  """Game files that must be refused; name -> file name."""
  good = np.full((4, 4), 0.5)
  bad = {}

  def save(name, array=None, **arrays):
    path = data / name
    if arrays:
      np.savez(path, **arrays)
    else:
      np.save(path, array)
    bad[name] = name

  (data / 'a_directory').mkdir()
  (data / 'garbage.npy').write_bytes(bytes(range(256)) * 4)
  (data / 'empty.npy').write_bytes(b'')
  (data / 'truncated.npy').write_bytes(
      (data / 'game.npy').read_bytes()[:100])
  save('non_square.npy', np.full((3, 4), 0.5))
  save('one_axis.npy', np.full(4, 0.5))
  save('one_response.npy', np.full((1, 1), 0.5))
  nan = good.copy()
  nan[0, 1] = np.nan
  save('nan.npy', nan)
  outside = good.copy()
  outside[0, 1], outside[1, 0] = 1.5, -0.5
  save('outside_unit.npy', outside)
  asym = good.copy()
  asym[0, 1] += 1e-3
  save('antisymmetry.npy', asym)
  save('complex.npy', good.astype(np.complex128))
  save('pickled.npy', np.array([good, None], dtype=object))
  save('no_preferences.npz', ref_policy=np.full(4, 0.25))
  save('unknown_array.npz', preferences=good, extra=np.ones(2))
  save('ref_shape.npz', preferences=good, ref_policy=np.full(3, 1 / 3))
  save('ref_sum.npz', preferences=good, ref_policy=np.full(4, 0.3))
  save('ref_zero.npz', preferences=good,
       ref_policy=np.array([0.5, 0.5, 0.0, 0.0]))
  save('weights_sum.npz', preferences=np.stack([good, good]),
       context_weights=np.array([0.5, 0.6]))
  (data / 'regular_file').write_text('not a directory\n')


# Tiny settings in the shapes of planned runs, whose compiled programs are
# cached by the time a (buggy) refused run gets to compile anything.
MG_TINY = ['--num_actions=6', '--num_seeds=1', '--seed=5', '--num_steps=10',
           '--eval_every=10']
COMPARE_TINY = ['--num_actions=6', '--num_seeds=2', '--eval_every=5',
                '--query_budget=10']

# (id, binary, flags, what the error line must contain). Our own checks:
# exit status 2 and one 'error:' line.
REFUSED = [
    ('algorithm', MATRIX_GAME, ['--algorithm=foo'], ['--algorithm', 'foo']),
    ('game', MATRIX_GAME, ['--game=foo'], ['--game', 'foo']),
    ('beta_negative', MATRIX_GAME, ['--beta=-1'], ['--beta']),
    ('beta_nan', MATRIX_GAME, ['--beta=nan'], ['--beta']),
    ('beta_inf', MATRIX_GAME, ['--beta=inf'], ['--beta']),
    ('eta_zero', MATRIX_GAME, ['--eta=0'], ['--eta']),
    ('eta_negative', MATRIX_GAME, ['--eta=-1'], ['--eta']),
    ('eta_nan', MATRIX_GAME, ['--algorithm=omwu', '--eta=nan'], ['--eta']),
    ('num_actions', MATRIX_GAME, ['--num_actions=1'], ['--num_actions']),
    ('num_contexts', MATRIX_GAME, ['--num_contexts=0'], ['--num_contexts']),
    ('num_steps', MATRIX_GAME, ['--num_steps=0'], ['--num_steps']),
    ('eval_every', MATRIX_GAME, ['--eval_every=0'], ['--eval_every']),
    ('num_seeds', MATRIX_GAME, ['--num_seeds=0'], ['--num_seeds']),
    ('seed_block', MATRIX_GAME, ['--seed_block=0'], ['--seed_block']),
    ('seed', MATRIX_GAME, ['--seed=-1'], ['--seed']),
    ('game_seed', MATRIX_GAME, ['--game_seed=-1'], ['--game_seed']),
    ('dtype', MATRIX_GAME, ['--dtype=float16'], ['--dtype', 'float16']),
    ('ref_policy', MATRIX_GAME, ['--ref_policy=foo'], ['--ref_policy']),
    ('omd_eta_beta', MATRIX_GAME, ['--algorithm=omd', '--beta=0.5',
                                   '--eta=10'], ['--eta', 'eta * beta']),
    ('nash_mp_beta0', MATRIX_GAME, ['--algorithm=nash_mp', '--beta=0'],
     ['--beta', 'nash_mp']),
    ('online_ipo_beta0', MATRIX_GAME, ['--algorithm=online_ipo', '--beta=0'],
     ['--beta', 'online_ipo']),
    ('proximal_point_beta0', MATRIX_GAME,
     ['--algorithm=proximal_point', '--beta=0'], ['--beta']),
    ('learning_rate', MATRIX_GAME, ['--algorithm=self_play_pg',
                                    '--learning_rate=0'], ['--learning_rate']),
    ('optimizer', MATRIX_GAME, ['--algorithm=self_play_pg',
                                '--optimizer=rmsprop'], ['--optimizer']),
    ('init', MATRIX_GAME, ['--init=foo'], ['--init', 'foo']),
    ('init_scale', MATRIX_GAME, ['--init=random', '--init_scale=-1'],
     ['--init_scale']),
    ('inner_steps', MATRIX_GAME, ['--algorithm=proximal_point',
                                  '--inner_steps=-1'], ['--inner_steps']),
    ('inner_tolerance', MATRIX_GAME, ['--algorithm=proximal_point',
                                      '--inner_tolerance=0'],
     ['--inner_tolerance']),
    ('inner_eta', MATRIX_GAME, ['--algorithm=proximal_point',
                                '--inner_eta=100'], ['--inner_eta']),
    ('game_file_missing', MATRIX_GAME, ['--game=file'], ['--game_file']),
    ('game_file_unused', MATRIX_GAME, ['--game_file={data}/game.npy'],
     ['--game_file']),
    ('positional', MATRIX_GAME, ['extra'], ['unexpected arguments', 'extra']),
    ('output_dir_empty', MATRIX_GAME, ['--output_dir='], ['--output_dir']),
    ('output_dir_file', MATRIX_GAME, ['--output_dir={data}/regular_file'],
     ['--output_dir', 'regular_file']),
    ('compare_algorithm', COMPARE, ['--algorithms=nash_mp,foo'],
     ['--algorithm', 'foo']),
    ('compare_no_algorithm', COMPARE, ['--algorithms='], ['--algorithms']),
    ('compare_query_budget', COMPARE, ['--query_budget=0'],
     ['--query_budget']),
    ('compare_beta0', COMPARE, ['--algorithms=omd,nash_mp', '--beta=0'],
     ['--beta', 'nash_mp']),
    ('compare_positional', COMPARE, ['extra'], ['unexpected arguments']),
    ('compare_game_file', COMPARE, ['--game=file',
                                    '--game_file={data}/nan.npy'],
     ['{data}/nan.npy', 'NaN']),
    ('pg_beta_quarter', MATRIX_GAME,
     ['--algorithm=self_play_pg', '--beta=-0.25'], ['--beta']),
    ('seed_too_large', MATRIX_GAME, [f'--seed={2 ** 64}'], ['--seed']),
    ('game_seed_too_large', MATRIX_GAME, [f'--game_seed={2 ** 64}'],
     ['--game_seed']),
    ('output_dir_under_file', MATRIX_GAME,
     ['--output_dir={data}/regular_file/sub'], ['--output_dir']),
    ('compare_output_dir_file', COMPARE,
     ['--output_dir={data}/regular_file', '--algorithms=nash_mp'],
     ['--output_dir']),
]

BAD_FILES = [
    ('missing.npy', ['does not exist']), ('a_directory', ['directory']),
    ('garbage.npy', ['cannot be read']), ('empty.npy', ['cannot be read']),
    ('truncated.npy', ['cannot be read']), ('non_square.npy', ['square']),
    ('one_axis.npy', ['shape']), ('one_response.npy', ['2 responses']),
    ('nan.npy', ['NaN']), ('outside_unit.npy', ['[0, 1]']),
    ('antisymmetry.npy', ['P + P^T']), ('complex.npy', ['real']),
    ('pickled.npy', ['cannot be read']),
    ('no_preferences.npz', ['preferences']),
    ('unknown_array.npz', ['extra']), ('ref_shape.npz', ['ref_policy']),
    ('ref_sum.npz', ['ref_policy', 'sum to 1']),
    ('ref_zero.npz', ['ref_policy', 'positive']),
    ('weights_sum.npz', ['context_weights', 'sum to 1']),
]

# Flag-parse errors: one `error: --flag: ...` line and exit status 2.
ABSL_REFUSED = [
    ('not_an_int', ['--num_steps=abc'], '--num_steps: must be an integer'),
    ('huge', ['--num_steps=1e308'], '--num_steps: must be an integer'),
    ('not_a_float', ['--beta=x'], '--beta: must be a number'),
    ('fraction', ['--num_seeds=1.5'], '--num_seeds: must be an integer'),
    ('unknown_flag', ['--no_such_flag=1'], '--no_such_flag: unknown flag'),
    ('no_value', ['--num_steps'], '--num_steps: needs a value'),
]


@pytest.fixture(scope='module')
def bad_files(runner):
  _write_bad_files(runner.data)
  return runner.data


def _fill(items, data):
  return [a.replace('{data}', str(data)) for a in items]


@pytest.mark.parametrize('name,module,args,fragments', REFUSED,
                         ids=[c.values[0] if hasattr(c, 'values') else c[0]
                              for c in REFUSED])
def test_bad_input_is_refused(runner, bad_files, tmp_path, name, module,
                              args, fragments):
  out = tmp_path / 'out'
  tiny = MG_TINY if module == MATRIX_GAME else COMPARE_TINY
  run = runner.run(module, [f'--output_dir={out}', *tiny,
                            *_fill(args, bad_files)])
  check_refused(run, out, must_contain=_fill(fragments, bad_files))
  if name == 'output_dir_file':
    assert (bad_files / 'regular_file').read_text() == 'not a directory\n'


@pytest.mark.parametrize('file_name,fragments', BAD_FILES,
                         ids=[c[0] for c in BAD_FILES])
def test_bad_game_file_is_refused(runner, bad_files, tmp_path, file_name,
                                  fragments):
  out = tmp_path / 'out'
  path = str(bad_files / file_name)
  run = runner.run(MATRIX_GAME, [f'--output_dir={out}', *MG_TINY,
                                 '--game=file', f'--game_file={path}'])
  check_refused(run, out, must_contain=[f'game file {path}', *fragments])


@pytest.mark.parametrize('name,args,flag', ABSL_REFUSED,
                         ids=[c[0] for c in ABSL_REFUSED])
def test_unparsable_flags_are_refused(runner, tmp_path, name, args, flag):
  out = tmp_path / 'out'
  run = runner.run(MATRIX_GAME, [f'--output_dir={out}', *MG_TINY, *args])
  check_refused(run, out, must_contain=[f'error: {flag}'])


@uses(lambda: ['single/nash_mp'])
def test_bad_input_leaves_an_existing_result_alone(runner, tmp_path):
  """A refused run into the directory of an earlier result changes nothing."""
  _, done = runner.get('single/nash_mp')
  out = tmp_path / 'out'
  shutil.copytree(done, out)
  snapshot = lambda: {str(p.relative_to(out)): p.read_bytes()
                      for p in out.rglob('*') if p.is_file()}
  before = snapshot()
  run = runner.run(MATRIX_GAME, [f'--output_dir={out}', *MG_TINY,
                                 '--beta=-1'])
  assert run.returncode == 2, run.describe()
  assert run.stderr.count('error: --beta') == 1, run.describe()
  assert snapshot() == before
  empty = tmp_path / 'empty'
  empty.mkdir()
  run = runner.run(MATRIX_GAME, [f'--output_dir={empty}', *MG_TINY,
                                 '--game=foo'])
  assert run.returncode == 2 and not any(empty.iterdir()), run.describe()


# --------------------------------------------------------------------------
# Genuine `python -m` processes, against the forked runs.


@uses(lambda: ['single/nash_mp'])
@pytest.mark.slow
def test_real_process_matches_forked_run(runner, tmp_path):
  module, args = PLAN['single/nash_mp']
  forked_run, forked = runner.get('single/nash_mp')
  out = tmp_path / 'out'
  run = run_process(module, [*args, f'--output_dir={out}'], runner.env)
  assert run.returncode == 0 and 'Traceback' not in run.stderr, run.describe()
  real, other = check_layout(out), check_layout(forked)
  assert real.lines == other.lines
  assert np.array_equal(real.final_policy, other.final_policy)
  assert np.array_equal(real.equilibrium, other.equilibrium)
  assert real.config == dict(other.config, output_dir=str(out))
  strip = lambda text: [re.sub(r'\(\d+\.\d+s\)|\s*\d+(\.\d+)? steps/s +~\S+ left', '',
                               line)
                        for line in text.replace(str(out), 'OUT').replace(
                            str(forked), 'OUT').splitlines()]
  assert strip(run.stdout) == strip(forked_run.stdout)


@pytest.mark.slow
@pytest.mark.parametrize('module,args,fragment', [
    (MATRIX_GAME, ['--algorithm=foo'], '--algorithm'),
    (COMPARE, ['--algorithms=nash_mp,foo'], '--algorithm'),
], ids=['matrix_game', 'compare'])
def test_real_process_refuses_bad_input(tmp_path, module, args, fragment):
  out = tmp_path / 'out'
  run = run_process(module, [f'--output_dir={out}', *args])
  check_refused(run, out, must_contain=[fragment])
