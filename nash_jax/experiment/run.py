"""The run skeleton of every kind of run: validated configs in, every seed
(and every cell of a sweep) trained in one compiled call per evaluation
chunk, with progress lines, streamed metrics, checkpoints, preemption and
bit-exact resume (:func:`run_task`, :func:`train_recorded`), and what a
run cost (:func:`run_cost`).
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import signal
import sys
import threading
import time
from typing import Callable

import jax
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import checkpoint as checkpoint_lib
from nash_jax import train as train_lib
from nash_jax.experiment.results import (
  MetricsStream,
  TensorBoard,
  diverged,
  divergence_note,
)
from nash_jax.experiment.sweep import sweep_checkpoint_config
from nash_jax.policies import sequence

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
  settings (:class:`~nash_jax.experiment.task.RunConfig` fields and
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
                                 getattr(config, 'data_parallel', None) or 1,
                                 getattr(config, 'model_parallel', None) or 1),
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


# --------------------------------------------------------------------------
# The run skeleton of every task.


def seed_keys(config):
  """Per-seed ``(game_key, run_key)``: seed ``s`` uses ``PRNGKey(s)`` split."""
  seeds = np.arange(config.seed, config.seed + config.num_seeds)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds)
  return keys[:, 0], keys[:, 1]


def tile(tree, times: int):
  """Repeats the leading (seed) axis: ``[S, ...] -> [times * S, ...]``."""
  return jax.tree.map(lambda x: np.concatenate([np.asarray(x)] * times),
                      tree)


def static_settings(alg_config, runtime) -> tuple:
  """The ``(name, value)`` pairs of an algorithm config less its runtime
  values (``runtime``: their names): the structure of a compiled step,
  hashable, so that runs differing only in runtime values share it."""
  return tuple((f.name, getattr(alg_config, f.name))
               for f in dataclasses.fields(alg_config)
               if f.name not in runtime)


def run_task(task, configs, inputs=None, output_dir: str | None = None,
             log: Callable[[str], None] = print,
             query_budget: int | None = None,
             checkpoint_every: int | None = None) -> list:
  """Runs validated configs of ``task`` (:class:`~nash_jax.experiment.task.
  Task`) that differ only in runtime values (one config: a single run;
  several: the cells of a sweep), every cell and seed in one compiled call
  per evaluation chunk, with progress lines, streamed metrics (a single
  run), checkpoints of the whole batch in ``output_dir/checkpoints``
  (default: the first config's directory and ``checkpoint_every``) and
  bit-exact resume.

  Args:
    task: the kind of run.
    configs: configs returned by the task's validation (one per cell).
    inputs: what validation read (the task's inputs).
    output_dir: where the checkpoints go (default: the config's).
    log: where progress lines go (process 0 only).
    query_budget: if set, stop at the first evaluation where every seed has
      used at least this many preference queries (``num_steps`` stays the
      cap).
    checkpoint_every: steps between checkpoints (default: the config's).

  Returns:
    The task's results, one per config.
  """
  start = time.time()
  if jax.process_index() != 0:
    log = lambda line: None
  config = configs[0]
  output_dir = output_dir or config.output_dir
  plan = task.plan(configs, inputs, log)
  if checkpoint_every is None:
    checkpoint_every = config.checkpoint_every
  state, rows = train_recorded(
      config, plan.make, plan.evaluate, plan.run_keys, plan.env_params,
      plan.eval_data, plan.hyper, shared=plan.shared,
      group_size=plan.group_size, output_dir=output_dir,
      checkpoint_config=sweep_checkpoint_config(configs),
      checkpoint_every=checkpoint_every, stream=len(configs) == 1, log=log,
      start=start, query_budget=query_budget)
  return task.collect(configs, plan, state, rows, start)


def run_one(task, config, inputs=None, **kwargs):
  """One run of ``task`` (:func:`run_task` with a single config); returns
  its results."""
  return run_task(task, [config], inputs, **kwargs)[0]


@functools.lru_cache(maxsize=128)
def algorithm_maker(name: str, static: tuple, components: Callable
                    ) -> Callable:
  """The one ``make(hyper) -> Algorithm`` of every kind of run.

  Args:
    name: the algorithm (a registry name).
    static: the algorithm settings that are not runtime values
      (:func:`static_settings`).
    components: ``hyper -> (policy, environment, reward_model, values)``,
      the task's policy and environment for the runtime values ``hyper``
      (tracers) and the algorithm's own runtime values among them. A task
      caches it per structure, so that runs differing only in runtime
      values share ``make`` and its compilations.
  """

  def make(hyper):
    policy, env, reward_model, values = components(hyper)
    return algorithms_lib.make_algorithm(
        name, algorithms_lib.AlgorithmConfig(**dict(static), **values),
        policy, env, reward_model=reward_model)
  return make
