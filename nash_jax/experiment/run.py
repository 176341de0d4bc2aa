"""Running a tabular experiment (last stage of :mod:`nash_jax.experiment`):
games and references in, every seed (and every cell of a sweep) trained in
one compiled call per evaluation chunk, with progress lines, streamed
metrics, checkpoints and bit-exact resume.
"""

from __future__ import annotations

import functools
import resource
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import checkpoint as checkpoint_lib
from nash_jax import evaluation
from nash_jax import train as train_lib
from nash_jax.environments import tokens as tokens_lib
from nash_jax.experiment.config import (
  ExperimentConfig,
  data_parallel_of,
  hyperparameters,
  lm_compute_dtype,
  lm_hyperparameters,
  model_parallel_of,
  setup_note,
)
from nash_jax.experiment.inputs import (
  algorithm_maker,
  build_games,
  equilibria,
  lm_env_params,
  lm_environment,
  lm_equilibrium,
  lm_maker,
  reference_model,
  seed_keys,
  shares_game,
  training_oracle,
)
from nash_jax.experiment.results import (
  LMResults,
  MetricsStream,
  Results,
  TensorBoard,
  diverged,
  divergence_note,
)
from nash_jax.experiment.sweep import sweep_checkpoint_config
from nash_jax.games import Game
from nash_jax.policies import sequence


@functools.lru_cache(maxsize=64)
def _final_log_policy(make, shared: bool):
  """Jitted ``log pi`` of every run's final state (compiled once per
  algorithm structure, not once per run)."""
  return jax.jit(jax.vmap(lambda h, state, game: evaluation.log_policy(
      evaluation.TABULAR, make(h), state, game),
      in_axes=(0, 0, None if shared else 0)))


def run(config: ExperimentConfig, file_game: Game | None = None,
        log: Callable[[str], None] = print,
        query_budget: int | None = None, prepared=None) -> Results:
  """Runs a validated, resolved config; see the module docstring.

  Args:
    config: a config returned by :func:`validate`.
    file_game: the game read by :func:`validate` for ``--game=file``.
    log: where progress lines go.
    query_budget: if set, stop at the first evaluation where every seed has
      used at least this many preference queries (``num_steps`` stays the
      cap).
    prepared: ``(games, equilibrium)`` from :func:`prepare`, to share the
      games and their exact solutions between several algorithms.
  """
  return run_sweep([config], config.output_dir, file_game, log, query_budget,
                   prepared)[0]


def _tile(tree, times: int):
  """Repeats the leading (seed) axis: ``[S, ...] -> [times * S, ...]``."""
  return jax.tree.map(lambda x: np.concatenate([np.asarray(x)] * times),
                      tree)


SIGNAL_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT'}


class Preemption:
  """Notes SIGTERM (what clusters and TPU preemption send) and SIGINT
  (Ctrl-C) during training, to be acted on at the next chunk boundary: a
  context manager that installs the handlers (main thread only) and
  restores the previous ones. A second signal stops at once."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None:  # Asked twice: stop now.
      sys.exit(128 + signum)
    self.signum = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNAL_NAMES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def stop_line(algorithm: str, signum: int, done: int,
              path: str | None) -> str:
  """The one line printed when a signal stops a run at a chunk boundary."""
  where = (f'checkpoint of step {done} in {path}; rerun the same command to '
           'resume' if path else 'no checkpoint (--checkpoint_every=0)')
  return (f'[{algorithm}] {SIGNAL_NAMES[signum]}: stopped at step {done}, '
          f'{where}')


def stopping_rule(query_budget: int | None, stop_on_divergence: bool):
  """The trainer's ``until``: every seed has used ``query_budget``
  preference queries, or (``stop_on_divergence``) some run has diverged;
  None when neither applies."""
  if query_budget is None and not stop_on_divergence:
    return None

  def until(row):
    spent = (query_budget is not None and
             np.min(row['preference_queries']) >= query_budget)
    return bool(spent or (stop_on_divergence and diverged(row)))
  return until


# The metrics of a progress line (means over seeds): the exact ones of a
# listed environment, or the sampled ones of a text environment.
PROGRESS_METRICS = ('kl_to_equilibrium', 'duality_gap', 'exploitability')
SAMPLED_PROGRESS_METRICS = ('win_rate_vs_ref', 'win_rate_vs_ref_se',
                            'kl_to_ref', 'response_length')


def train_recorded(config, make: Callable, evaluate: Callable, run_keys,
                   env_params, eval_data, hyper: dict, *, shared,
                   output_dir: str, checkpoint_config: dict,
                   checkpoint_every: int, stream: bool,
                   log: Callable[[str], None], start: float,
                   query_budget: int | None = None,
                   group_size: int | None = None):
  """:func:`nash_jax.train.train` with what a run records on the way, for
  any environment: a progress line per evaluation (``log``), ``metrics.csv``
  streamed (``stream``: a single run), TensorBoard (``config.tensorboard``)
  and orbax checkpoints of the whole batch every ``checkpoint_every`` steps
  in ``output_dir/checkpoints`` (checked against ``checkpoint_config``;
  resumed from when present, bit-exactly). ``shared`` and ``group_size``
  are the trainer's (a bool, or a pair for the environment data and the
  evaluation data). ``config`` gives the run's
  settings (:class:`~nash_jax.experiment.config.RunConfig` fields and
  ``algorithm``). Returns the trainer's ``(state, rows)``."""
  writer = (MetricsStream(config)
            if jax.process_index() == 0 and stream else None)
  checkpointer = None
  resume = None
  if checkpoint_every > 0:
    checkpointer = checkpoint_lib.Checkpointer(
        output_dir, checkpoint_config, config.keep_checkpoints)
    template = jax.eval_shape(
        jax.vmap(lambda h, k, e: make(h).init(k, e),
                 in_axes=(0, 0, None if train_lib.sharing(shared)[0] else 0)),
        hyper, run_keys, env_params)
    resume = checkpointer.restore(template)
    if resume is not None:
      log(f'[{config.algorithm}] resuming from step {resume[2]} '
          f'({checkpointer.path})')
  first_step = 0 if resume is None else resume[2]
  clock = {'t': time.time(), 'step': first_step}

  boards = TensorBoard(config) if (
      config.tensorboard and jax.process_index() == 0 and stream) else None

  def on_eval(row):
    step = int(row['step'][0])
    if boards:
      boards.add(row)
    now = time.time()
    rate = (step - clock['step']) / max(now - clock['t'], 1e-9)
    left = (f'~{(config.num_steps - step) / rate:.0f}s left' if rate > 0
            else '~?s left')
    names = (PROGRESS_METRICS if PROGRESS_METRICS[0] in row
             else SAMPLED_PROGRESS_METRICS)
    shown = ''.join(f'{name} {np.mean(row[name]):.3e}  ' for name in names)
    speed = f'{rate:8.0f}' if rate >= 10 else f'{rate:8.3f}'
    log(f'[{config.algorithm}] step {step:>7d}/{config.num_steps}  '
        f'queries {int(np.mean(row["preference_queries"])):>9d}  {shown}'
        f'{speed} steps/s  {left}  ({now - start:.1f}s)'
        + divergence_note(row))
    if config.stop_on_divergence and diverged(row):
      log(f'[{config.algorithm}] stopped at step {step}: a run diverged '
          '(--stop_on_divergence)')
    if writer:
      writer.append(row)

  saved = {'done': first_step}
  preemption = Preemption()

  def on_chunk(get_state, rows, done):
    period = checkpoint_every
    stop = preemption.signum
    if checkpointer and (stop or done // period > saved['done'] // period):
      if done != saved['done']:
        checkpointer.save(done, get_state(), rows)
      saved['done'] = done
    if stop:
      if writer:
        writer.close()
      if checkpointer:
        checkpointer.close()
      if jax.process_index() == 0:
        print(stop_line(config.algorithm, stop, done, checkpointer and
                        checkpointer.path), file=sys.stderr, flush=True)
      sys.exit(128 + stop)

  if writer:
    writer.start(resume[1] if resume else [])
  with preemption:
    state, rows = train_lib.train(
        make, evaluate, run_keys, env_params, eval_data,
        hyper=hyper, num_steps=config.num_steps,
        eval_every=config.eval_every, shared=shared, group_size=group_size,
        first_seed=config.seed,
        seed_block=config.seed_block, on_eval=on_eval, on_chunk=on_chunk,
        mesh=train_lib.seed_mesh(config.num_devices,
                                 data_parallel_of(config),
                                 model_parallel_of(config)),
        resume=resume,
        until=stopping_rule(query_budget, config.stop_on_divergence))
  if writer:
    writer.close()
  if boards:
    boards.close()
  if checkpointer:
    # The end of a run is always saved, so that rerunning it is instant.
    done = int(rows[-1]['step'][0])
    if done != saved['done']:
      checkpointer.save(done, state, rows)
    checkpointer.close()
  return state, rows


def run_sweep(configs: list[ExperimentConfig], output_dir: str,
              file_game: Game | None = None,
              log: Callable[[str], None] = print,
              query_budget: int | None = None,
              prepared=None, checkpoint_every: int | None = None
              ) -> list[Results]:
  """Runs several validated configs that differ only in :data:`SWEEPABLE`
  values (the cells of a sweep), every cell and seed in one compiled call.

  Each cell's seeds play the same games as a single run would; a cell's
  result equals the single run of its config bit for bit with the same
  ``seed_block`` (the default blocks included): each cell starts a block of
  its own, and a shared game stays shared. Checkpoints of the whole sweep go to
  ``output_dir/checkpoints`` every ``checkpoint_every`` steps (default: the
  first config's); ``metrics.csv`` is streamed only for a single config.
  Returns one :class:`Results` per config.
  """
  start = time.time()
  if jax.process_index() != 0:
    log = lambda line: None
  config = configs[0]
  num_cells, num_seeds = len(configs), config.num_seeds
  # One game for every seed stays one array (each block's win rates are then
  # one matrix product); each run always carries its cell's equilibrium, so
  # that a single run and a sweep cell run the same program.
  shared_game = shares_game(config)
  games = prepared[0] if prepared else build_games(config, file_game)
  solved = {}
  for c in configs:
    if c.beta not in solved:
      note = setup_note(c) if not (prepared and c is config) else None
      if note:
        log(note)
      solved[c.beta] = (prepared[1] if prepared and c is config else
                        equilibria(c, games, shared_game))
  if shared_game:
    solved = {b: np.broadcast_to(e, (num_seeds,) + e.shape)
              for b, e in solved.items()}
  dtype = jnp.dtype(config.dtype)
  equilibrium = np.concatenate([solved[c.beta] for c in configs])
  with np.errstate(divide='ignore'):
    log_eq = jnp.asarray(np.log(equilibrium), dtype)
  if not shared_game:
    games = _tile(games, num_cells)
  make = algorithm_maker(config)
  hyper = {k: np.repeat(np.asarray([hyperparameters(c)[k] for c in configs],
                                   dtype), num_seeds)
           for k in hyperparameters(config)}
  _, run_keys = seed_keys(config)
  run_keys = _tile(run_keys, num_cells)
  if checkpoint_every is None:
    checkpoint_every = config.checkpoint_every
  state, rows = train_recorded(
      config, make, evaluation.exact_evaluator(make), run_keys, games, log_eq,
      hyper, shared=(shared_game, False), group_size=num_seeds,
      output_dir=output_dir,
      checkpoint_config=sweep_checkpoint_config(configs),
      checkpoint_every=checkpoint_every, stream=num_cells == 1, log=log,
      start=start, query_budget=query_budget)
  final_policy = np.exp(np.asarray(
      _final_log_policy(make, shared_game)(hyper, state, games), np.float64))
  wall = time.time() - start
  results = []
  for i, c in enumerate(configs):
    cut = slice(i * num_seeds, (i + 1) * num_seeds)
    results.append(Results(
        c, [{k: v[cut] for k, v in row.items()} for row in rows],
        final_policy[cut], np.asarray(equilibrium[cut]), wall))
  return results


def lm_checkpoint_config(configs) -> dict:
  """What the checkpoints of a language-model run (or sweep) are checked
  against: every cell's config less the settings a resumed run may
  change."""
  return sweep_checkpoint_config(configs)


def run_lm(configs, output_dir: str | None = None,
           log: Callable[[str], None] = print,
           checkpoint_every: int | None = None) -> list[LMResults]:
  """Runs validated LM configs that differ only in swept values (one config:
  a single run), every cell and seed in one compiled call per chunk.

  The reference model (``model_seed``), its listed distribution and the
  induced exact game are built once; ``pi*_beta`` is solved once per
  ``beta`` by the reference solver; then the transformer policy is trained
  with the sampled algorithm against the token environment, with the exact
  metrics at every evaluation. Returns one :class:`LMResults` per config.
  """
  start = time.time()
  if jax.process_index() != 0:
    log = lambda line: None
  config = configs[0]
  output_dir = output_dir or config.output_dir
  num_cells, num_seeds = len(configs), config.num_seeds
  spec = config.spec()
  log(f'[{config.algorithm}] token game: {spec.num_prompts} prompts, '
      f'{tokens_lib.num_responses(spec.vocab_size, spec.max_length)} '
      f'responses each; listing the reference model')
  reference, reference_report = reference_model(config, log)
  env_params = lm_env_params(config, reference)
  game = jax.tree.map(lambda a: np.asarray(a, np.float64),
                      tokens_lib.game_of(env_params))
  equilibria = {}
  for c in configs:
    if c.beta not in equilibria:
      log(f'[{config.algorithm}] solving pi*_beta at beta={c.beta:g}')
      equilibria[c.beta] = lm_equilibrium(game, c.beta)
  # Hyperparameters and the exact evaluation in at least float32 (a
  # bfloat16 run has only its transformer in bfloat16).
  dtype = lm_compute_dtype(config)
  eval_game = jax.tree.map(lambda a: jnp.asarray(a, dtype), game)
  shared = len(equilibria) == 1
  with np.errstate(divide='ignore'):
    log_eq = {b: np.log(e) for b, e in equilibria.items()}
  if shared:
    eval_data = evaluation.ListedEval(eval_game, jnp.asarray(
        log_eq[config.beta], dtype))
  else:
    eval_data = evaluation.ListedEval(
        jax.tree.map(lambda a: np.broadcast_to(
            np.asarray(a), (num_cells * num_seeds,) + a.shape), eval_game),
        np.repeat(np.stack([log_eq[c.beta] for c in configs]), num_seeds,
                  axis=0).astype(dtype))
    env_params = jax.tree.map(lambda a: np.broadcast_to(
        np.asarray(a), (num_cells * num_seeds,) + np.shape(a)), env_params)
  trained_oracle = training_oracle(config, env_params, reference, log)
  make = lm_maker(config, trained_oracle)
  hyper = {k: np.repeat(np.asarray([lm_hyperparameters(c)[k]
                                    for c in configs], dtype), num_seeds)
           for k in lm_hyperparameters(config)}
  _, run_keys = seed_keys(config)
  run_keys = _tile(run_keys, num_cells)
  spec_key, oracle, tconfig = spec, config.oracle, config.transformer_config()
  env_of = _lm_env_of(spec_key, oracle, tconfig)
  evaluate = evaluation.listed_evaluator(make, env_of, config.num_samples)
  if checkpoint_every is None:
    checkpoint_every = config.checkpoint_every
  state, rows = train_recorded(
      config, make, evaluate, run_keys, env_params, eval_data, hyper,
      shared=shared, output_dir=output_dir,
      checkpoint_config=lm_checkpoint_config(configs),
      checkpoint_every=checkpoint_every, stream=num_cells == 1, log=log,
      start=start)
  final = _lm_final_log_policy(make, env_of, shared)(hyper, state,
                                                     env_params)
  final_policy = np.exp(np.asarray(final, np.float64))
  final_policy /= final_policy.sum(-1, keepdims=True)
  wall = time.time() - start
  cost = run_cost(make, hyper, state, env_params, shared, config.num_steps,
                  wall)
  results = []
  for i, c in enumerate(configs):
    cut = slice(i * num_seeds, (i + 1) * num_seeds)
    equilibrium = np.broadcast_to(equilibria[c.beta],
                                  (num_seeds,) + equilibria[c.beta].shape)
    results.append(LMResults(
        c, [{k: v[cut] for k, v in row.items()} for row in rows],
        final_policy[cut], np.asarray(equilibrium), wall, cost, game=game,
        responses=np.asarray(tokens_lib.list_responses(
            spec.vocab_size, spec.max_length, spec.max_responses)),
        reference_report=reference_report,
        oracle_report=(None if trained_oracle is None
                       else trained_oracle[2]),
        prompts=np.asarray(tokens_lib.make_prompts(spec)[0]),
        prompt_mask=np.asarray(tokens_lib.make_prompts(spec)[1])))
  return results


def step_flops(make: Callable, hyper: dict, state, env_params,
               shared: bool) -> float:
  """FLOPs of one step of one seed, from XLA's cost analysis of the lowered
  step (seed 0's hyperparameters, state and environment). XLA counts a
  loop body once: :func:`nash_jax.policies.sequence.generate` unrolls its
  token loop while :data:`~nash_jax.policies.sequence.COUNTING` is set, so
  that every generated token is counted."""
  first = lambda tree: jax.tree.map(lambda a: a[0], tree)
  one_env = env_params if shared else first(env_params)
  with sequence.counting_flops():
    lowered = jax.jit(lambda h, s, e: make(h).step(s, e)[0]).lower(
        first(hyper), first(state), one_env)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def peak_memory() -> dict:
  """Peak memory so far: the host process's resident set (bytes) and, where
  the backend reports it, the first device's peak allocation."""
  usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  stats = jax.local_devices()[0].memory_stats() or {}
  return {'peak_host_memory_bytes': int(usage),
          'peak_device_memory_bytes': stats.get('peak_bytes_in_use')}


def run_cost(make, hyper, state, env_params, shared, num_steps: int,
             wall_time: float) -> dict:
  """What a run cost, per seed: ``step_flops`` (:func:`step_flops`),
  ``training_flops = step_flops * num_steps`` (the steps only: the data
  collection, reward fit or SFT at init are not counted), the run's wall
  time and peak memory (:func:`peak_memory`; for all seeds together).
  Preference queries and generated tokens are metric columns."""
  flops = step_flops(make, hyper, state, env_params, shared)
  return {'step_flops': flops, 'training_flops': flops * num_steps,
          'wall_time_s': wall_time, **peak_memory()}


@functools.lru_cache(maxsize=16)
def _lm_env_of(spec, oracle, tconfig):
  return lambda hyper: lm_environment(spec, oracle, tconfig,
                                      hyper['temperature'])


@functools.lru_cache(maxsize=16)
def _lm_final_log_policy(make, env_of, shared: bool):
  """Jitted ``log pi [S, X, N]`` of every run's final state."""
  def one(hyper, state, env_params):
    return env_of(hyper).log_policy(make(hyper).policy, state.params,
                                    env_params)
  return jax.jit(jax.vmap(one, in_axes=(0, 0, None if shared else 0)))
