"""A kind of run, described once, and the settings every run has.

The run kit (:mod:`nash_jax.experiment`) knows nothing of games, tokens or
checkpoints. A kind of run (:mod:`nash_jax.tasks`) hands it a :class:`Task`:
its settings class, validation of its own settings and inputs, a
:class:`RunPlan` for the trainer, and how to turn the trained state into
results and files. The kit does the rest for every task: the shared
checks, sweeps, the chunk loop with checkpoints and preemption, result
files, the output lock.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable

from nash_jax import algorithms as algorithms_lib
from nash_jax.distributions import OUTCOMES
from nash_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class OutcomeConfig:
  """What a preference query returns (the sampled mode)."""

  outcome: str = setting('bernoulli', "Sampled mode: what a preference "
                         "query returns, " + ' or '.join(OUTCOMES) +
                         " (o ~ Bernoulli(P(y > y')), a label, or o = "
                         "P(y > y')). --oracle is its deprecated alias.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Seeds, steps, devices, precision and outputs of a run."""

  algorithm: str = setting('nash_mp', 'The algorithm.', flag=False)
  num_steps: int = setting(1000, 'Steps (outer steps for proximal_point) '
                           'per seed.', minimum=1)
  eval_every: int = setting(10, 'Steps between evaluations.', minimum=1)
  num_seeds: int = setting(1, 'Seeds run in one vmapped call: --seed, '
                           '--seed+1, ...', minimum=1)
  seed: int = setting(0, 'First seed.')
  seed_block: int | None = setting(
      None, 'Seeds vmapped together (blocks are mapped over in one compiled '
      'call); seed i is bit-identical across --num_seeds for a fixed block. '
      'Default: chosen by nash_jax.seed_blocks from the backend, the game '
      'kind (one game shared by all seeds with --game_seed or --game=file), '
      '--mode and --num_actions, never from --num_seeds; config.json '
      'records the block used.', int, minimum=1)
  num_devices: int | None = setting(None, 'Devices the seed axis is sharded '
                                    'over (default: all, on every host).',
                                    int)
  dtype: str = setting('float64', 'Floating point type (the choices depend '
                       'on the binary: float64, float32; language models '
                       'also bfloat16, for the transformer only).')
  output_dir: str = setting('results/matrix_game', 'Where results are '
                            'written.')
  checkpoint_every: int = setting(1000, 'Steps between checkpoints in '
                                  'OUTPUT_DIR/checkpoints (0: none). '
                                  'Rerunning the same command resumes.',
                                  minimum=0)
  keep_checkpoints: int = setting(3, 'Checkpoints kept (the newest).',
                                  minimum=1)
  overwrite: bool = setting(False, 'Delete checkpoints of a run with other '
                            'settings (or any checkpoints) and start over.')
  tensorboard: bool = setting(False, 'Also write TensorBoard event files, '
                              'one run per seed, in '
                              'OUTPUT_DIR/tensorboard/seed_<s> (needs '
                              'tensorboardX).')
  stop_on_divergence: bool = setting(
      False, 'Stop at the first evaluation where some seed has diverged '
      '(kl_to_equilibrium inf or NaN); the results end there.')


@dataclasses.dataclass
class RunPlan:
  """What a task hands the run skeleton (:func:`nash_jax.experiment.run`):
  the arguments of :func:`nash_jax.train.train` for every cell and seed,
  and what the task needs afterwards.

  Attributes:
    make: ``hyper -> Algorithm`` (the swept values traced).
    evaluate: the trainer's evaluation function.
    run_keys: ``[cells * seeds]`` PRNG keys.
    env_params: the environment data (shared, or one per run).
    eval_data: the evaluation's data (shared, or one per run), or None.
    hyper: runtime values ``{name: [cells * seeds]}``.
    shared: the trainer's ``shared`` (a bool, or a pair for the
      environment data and the evaluation data).
    group_size: the trainer's ``group_size`` (seeds per cell).
    context: what the task's ``collect`` reads (the games, the reference
      solutions, what was loaded).
  """

  make: Callable
  evaluate: Callable
  run_keys: Any
  env_params: Any
  eval_data: Any
  hyper: dict
  shared: Any
  group_size: int | None = None
  context: Any = None


@dataclasses.dataclass(frozen=True)
class Task:
  """One kind of run.

  Attributes:
    name: the run kind (:data:`nash_jax.algorithms.RUN_KINDS`); the
      algorithms whose registry entry lists it run here.
    what: what it runs on, for messages (``'a checkpoint'``).
    settings: the composed settings class (:func:`nash_jax.settings.
      compose`); its fields are the binary's flags.
    dtypes: the values ``--dtype`` may take.
    runtime: settings of the task's own (not the algorithm's) passed to the
      compiled step as runtime values (a language model's temperature); not
      swept unless listed in ``sweepable``.
    sweepable: the settings ``--sweep`` may vary; default: every
      algorithm's runtime settings (:meth:`algorithm_runtime`); ``()``: no
      ``--sweep`` flag.
    validate: ``config -> (config, inputs)``: the task's own checks (after
      the kit's shared ones, :func:`nash_jax.experiment.validate`), the
      input files read, the algorithm's defaults resolved.
    plan: ``(configs, inputs, log) -> RunPlan``.
    collect: ``(configs, plan, state, rows, start) -> [results]``, one
      per config (cell); ``start``: the run's ``time.time()`` at its start.
    write: ``(results, output_dir or None) -> None``: the result files.
    structure: ``config -> hashable``: what every cell of a sweep must
      share (one compiled program).
    check_sweep: ``cells -> None``: the task's checks of a whole sweep
      (its memory), or None.
  """

  name: str
  what: str
  settings: type
  dtypes: tuple[str, ...]
  validate: Callable[[Any], tuple[Any, Any]]
  plan: Callable[..., RunPlan]
  collect: Callable[..., list]
  write: Callable[..., None]
  structure: Callable[[Any], Hashable]
  runtime: tuple[str, ...] = ()
  sweepable: tuple[str, ...] | None = None
  check_sweep: Callable[[list], None] | None = None

  @property
  def algorithms(self) -> tuple[str, ...]:
    """The algorithms that run in this kind of run (registry order, the
    exact ones first)."""
    names = [n for registry in (algorithms_lib.ALGORITHMS,
                                algorithms_lib.SAMPLED_ALGORITHMS)
             for n, spec in registry.items() if self.name in spec.runs]
    return tuple(dict.fromkeys(names))

  def algorithm_runtime(self) -> tuple[str, ...]:
    """The algorithm settings passed to the compiled step as runtime
    values: every runtime setting of the algorithms of this kind of run
    (:attr:`nash_jax.algorithms.AlgorithmSpec.sweepable`), in
    :data:`nash_jax.algorithms.RUNTIME_SETTINGS` order."""
    read = set()
    for registry in (algorithms_lib.ALGORITHMS,
                     algorithms_lib.SAMPLED_ALGORITHMS):
      for spec in registry.values():
        if self.name in spec.runs:
          read |= set(spec.sweepable)
    return tuple(k for k in algorithms_lib.RUNTIME_SETTINGS if k in read)

  def sweep_names(self) -> tuple[str, ...]:
    """The settings ``--sweep`` may vary: :attr:`sweepable`, or
    :meth:`algorithm_runtime`."""
    if self.sweepable is not None:
      return self.sweepable
    return self.algorithm_runtime()

  def runtime_names(self, config) -> tuple[str, ...]:
    """The settings of ``config`` passed to its compiled step as runtime
    values (those that are set): :meth:`algorithm_runtime`, then the
    task's own (:attr:`runtime`). A single run and the matching cell of a
    sweep are then the same program."""
    names = self.algorithm_runtime() + tuple(
        k for k in self.runtime if k not in self.algorithm_runtime())
    return tuple(k for k in names if getattr(config, k, None) is not None)

  def hyperparameters(self, config) -> dict:
    """``{name: value}`` of :meth:`runtime_names`."""
    return {k: getattr(config, k) for k in self.runtime_names(config)}
