"""Flags shared by the tabular experiment binaries, and their error handling."""

from __future__ import annotations

import csv
import os
import sys

import jax
from absl import flags

from nash_jax import algorithms
from nash_jax.algorithms import ConfigError
from nash_jax.experiment import DTYPES, GAMES, ExperimentConfig
from nash_jax.games import REF_POLICIES, GameFileError

_D = ExperimentConfig()


def define_flags(output_dir: str, num_steps: int, eval_every: int,
                 num_actions: int, num_seeds: int, mode: str = _D.mode,
                 seed_block: int = _D.seed_block) -> None:
  """Defines the flags of :class:`ExperimentConfig` (except ``algorithm``)."""
  flags.DEFINE_string('game', _D.game, f'Game family: {", ".join(GAMES)}.')
  flags.DEFINE_string('game_file', None, 'With --game=file: a .npy of '
                      'preferences ([n, n] or [X, n, n]) or an .npz with '
                      '"preferences" and optional "ref_policy", '
                      '"context_weights".')
  flags.DEFINE_integer('game_seed', None, 'Draw one game from this seed for '
                       'all seeds (default: each seed draws its own game).')
  flags.DEFINE_integer('num_actions', num_actions, 'Responses per context, n.')
  flags.DEFINE_integer('num_contexts', _D.num_contexts, 'Contexts, X.')
  flags.DEFINE_string('ref_policy', _D.ref_policy, 'Reference policy of '
                      f'generated games: {", ".join(REF_POLICIES)} '
                      '(Dirichlet(1)).')
  flags.DEFINE_float('beta', _D.beta, 'KL regularization towards pi_ref, >= 0'
                     ' (0: the unregularized game, metrics against a von '
                     'Neumann winner).')
  flags.DEFINE_float('eta', None, 'Step size (policy-space methods) or prox '
                     'strength (proximal_point, nash_mp, nash_prox, '
                     'approx_nash_mp); default per algorithm.')
  flags.DEFINE_float('learning_rate', None, 'optax learning rate of the '
                     'parameter-space methods (self_play_pg, online_ipo and '
                     'every sampled algorithm); default per algorithm.')
  flags.DEFINE_string('optimizer', None, 'optax optimizer of the '
                      'parameter-space methods: sgd, adam (default: adam '
                      'for loglinear and mlp policies, else sgd).')
  flags.DEFINE_integer('inner_steps', None, 'proximal_point: inner '
                       'self-play steps per outer step, 0 (its default) '
                       'solves each inner game to --inner_tolerance; '
                       'approx_nash_mp: policy-gradient steps per half step '
                       '(default 10).')
  flags.DEFINE_float('inner_tolerance', _D.inner_tolerance, 'proximal_point: '
                     'span residual of a solved inner game.')
  flags.DEFINE_integer('max_inner_steps', _D.max_inner_steps,
                       'proximal_point: cap on inner steps per outer step.')
  flags.DEFINE_float('inner_eta', None, 'proximal_point: inner mirror-descent '
                     'step; default from the prox game strength.')
  flags.DEFINE_string('mode', mode, 'exact: expectations over the tabular '
                      'game (1 query = one evaluation of g_pi); sampled: '
                      'sampled responses and preference outcomes with a '
                      'parametrized --policy (online_ipo, self_play_pg, '
                      'nash_prox, approx_nash_mp, nash_md_pg).')
  flags.DEFINE_string('policy', _D.policy, 'Policy class (sampled mode): '
                      'tabular, loglinear (pi ∝ pi_ref exp(theta . phi)), '
                      'mlp (Flax MLP over context and response features).')
  flags.DEFINE_integer('batch_size', _D.batch_size, 'Sampled mode: '
                       'comparisons per step, one preference query each.')
  flags.DEFINE_string('oracle', _D.oracle, 'Sampled mode: bernoulli (o ~ '
                      'Bernoulli(P(y > y\'))) or probability (o = P(y > '
                      'y\')).')
  flags.DEFINE_string('anchor', _D.anchor, 'nash_prox: copy (theta_k <- '
                      'theta every --anchor_every steps) or ema (rate '
                      '--anchor_tau).')
  flags.DEFINE_integer('anchor_every', _D.anchor_every, 'nash_prox: steps '
                       'between anchor copies, M.')
  flags.DEFINE_float('anchor_tau', _D.anchor_tau, 'nash_prox: EMA rate of '
                     'the anchor, in (0, 1].')
  flags.DEFINE_float('mixture', _D.mixture, 'nash_md_pg: mixture '
                     'coefficient c of pi_ref in the opponent (0: self-play).')
  flags.DEFINE_float('max_grad_norm', None, 'Clip gradients to this global '
                     'norm (parameter-space methods; default: no clipping).')
  flags.DEFINE_string('schedule', _D.schedule, 'Learning-rate schedule: '
                      'constant, cosine (to 0 over --decay_steps).')
  flags.DEFINE_integer('decay_steps', None, 'Steps of the cosine decay '
                       '(default: --num_steps).')
  flags.DEFINE_list('hidden_sizes', [str(h) for h in _D.hidden_sizes],
                    'mlp policy: hidden layer widths.')
  flags.DEFINE_integer('feature_dim', _D.feature_dim, 'Dimension d of the '
                       'generated games\' response and context features '
                       '(used by loglinear and mlp policies; the annotators '
                       'game draws preferences from them).')
  flags.DEFINE_string('init', _D.init, 'Initial policy: ref (pi_ref) or '
                      'random (pi_ref times exp of Gaussian logits, per seed).')
  flags.DEFINE_float('init_scale', _D.init_scale, 'Std of the random initial '
                     'logits with --init=random.')
  flags.DEFINE_integer('num_steps', num_steps, 'Steps (outer steps for '
                       'proximal_point) per seed.')
  flags.DEFINE_integer('eval_every', eval_every, 'Steps between evaluations.')
  flags.DEFINE_integer('num_seeds', num_seeds, 'Seeds run in one vmapped '
                       'call: --seed, --seed+1, ...')
  flags.DEFINE_integer('seed', _D.seed, 'First seed.')
  flags.DEFINE_integer('seed_block', seed_block, 'Seeds vmapped together '
                       '(blocks are mapped over in one compiled call); seed '
                       'i is bit-identical across --num_seeds for a fixed '
                       'block. Use a large block (e.g. 256) on GPU/TPU.')
  flags.DEFINE_string('dtype', _D.dtype, f'Floating point type: '
                      f'{", ".join(DTYPES)}.')
  flags.DEFINE_string('output_dir', output_dir, 'Where results are written.')
  flags.DEFINE_integer('num_devices', None, 'Devices the seed axis is '
                       'sharded over (default: all, on every host).')
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize '
                    'first: with no other flag it detects Slurm, Open MPI '
                    'or a TPU pod from the environment; otherwise give '
                    '--coordinator_address, --num_processes, --process_id. '
                    'Only process 0 writes files and logs.')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 '
                      '(with --distributed).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run (with '
                       '--distributed).')
  flags.DEFINE_integer('process_id', None, 'This process (with '
                       '--distributed).')
  flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every, 'Steps '
                       'between checkpoints in OUTPUT_DIR/checkpoints (0: '
                       'none). Rerunning the same command resumes.')
  flags.DEFINE_integer('keep_checkpoints', _D.keep_checkpoints,
                       'Checkpoints kept (the newest).')
  flags.DEFINE_bool('tensorboard', _D.tensorboard, 'Also write TensorBoard '
                    'event files, one run per seed, in '
                    'OUTPUT_DIR/tensorboard/seed_<s> (needs tensorboardX).')
  flags.DEFINE_bool('overwrite', _D.overwrite, 'Delete checkpoints of a run '
                    'with other settings (or any checkpoints) and start over.')


def config_from_flags(**overrides) -> ExperimentConfig:
  """An :class:`ExperimentConfig` from the parsed flags."""
  values = {name: flags.FLAGS[name].value
            for name in ExperimentConfig.__dataclass_fields__
            if name in flags.FLAGS}
  values.update(overrides)
  hidden = values.get('hidden_sizes', _D.hidden_sizes)
  try:
    values['hidden_sizes'] = tuple(int(h) for h in hidden)
  except ValueError:
    raise ConfigError('hidden_sizes', f'must be integers, got '
                      f'{",".join(hidden)}') from None
  return ExperimentConfig(**values)


def start_jax(dtype: str) -> None:
  """Configures JAX before any array exists: float64 needs x64 mode, and
  ``--distributed`` joins the other processes (CPU hosts talk through gloo)."""
  jax.config.update('jax_enable_x64', dtype == 'float64')
  f = flags.FLAGS
  if 'distributed' not in f:
    return  # A binary without the multi-host flags.
  if not f.distributed:
    for name in ('coordinator_address', 'num_processes', 'process_id'):
      if f[name].value is not None:
        fail(f'--{name}: only used with --distributed')
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes,
                               process_id=f.process_id)
  except (RuntimeError, ValueError) as e:
    fail(f'--distributed: jax.distributed.initialize failed: '
         f'{" ".join(str(e).split())[:300]}')


def quiet_logs() -> None:
  """Only warnings and errors from absl logging (JAX, orbax) on stderr."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)


def table_line(cells, width: int) -> str:
  """One right-aligned line of a benchmark table (floats to 4 digits)."""
  return ' '.join(f'{v:>{width}.4g}' if isinstance(v, float) else
                  f'{v:>{width}}' for v in cells)


def write_table(path: str, header: list[str], rows: list[list]) -> None:
  """Writes a benchmark table as CSV (creating the directory)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w', newline='') as out:
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)


def fail(message: str) -> None:
  """One line on stderr and exit status 2: the refusal of bad input."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


USER_ERRORS = (ConfigError, GameFileError)
ALGORITHM_NAMES = algorithms.ALGORITHM_NAMES
SAMPLED_ALGORITHM_NAMES = algorithms.SAMPLED_ALGORITHM_NAMES
