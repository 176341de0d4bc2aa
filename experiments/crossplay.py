r"""Cross-play win rates among pi_ref and trained policies, with costs.

  python -m experiments.crossplay --runs=results/lm_prox,results/lm_ipo,\
results/lm_dpo --output_dir=results/crossplay

Reads finished runs of one game (experiments.lm, or experiments.matrix_game
on a shared --game file) and writes the matrix of win rates W[i, j] =
P(pi_i > pi_j) under the ground-truth preferences, pi_ref first:

* exact, from the listed policies (final_policy.npy) and the game (the
  first run's game.npz, or --game);
* sampled, as a user without listable responses would measure it:
  --comparisons comparisons per cell (x ~ rho, y ~ pi_i, y' ~ pi_j, the
  oracle's outcome), with a 95% normal interval.

Each policy is one seed of its run (--seed_index) and carries its cost
from the run's summary.json: preference queries, generated tokens,
training FLOPs, wall time, peak memory. Writes crossplay.json and
crossplay.csv (long format: row, column, exact, mean, low, high,
comparisons) into --output_dir. Every flag and input file is checked
before any work; a bad one stops with one ``error:`` line and exit
status 2.
"""

import json
import os

import jax
import numpy as np
from absl import app, flags

from experiments import common
from nash_jax import crossplay, experiment
from nash_jax import io as io_lib
from nash_jax.distributions import OUTCOMES
from nash_jax.games import GameFileError, load_game

flags.DEFINE_list('runs', [], 'Result directories of finished runs on one '
                  'game (each with summary.json, config.json and '
                  'final_policy.npy [S, X, N]).')
flags.DEFINE_string('game', None, 'Game file (.npz with preferences, '
                    'ref_policy, context_weights); default: the first '
                    'run\'s game.npz.')
flags.DEFINE_integer('seed_index', 0, 'Which seed of each run plays (0: '
                     'the run\'s first seed).')
flags.DEFINE_integer('comparisons', 2000, 'Sampled comparisons per cell '
                     '(one preference query each).')
flags.DEFINE_string('outcome', 'bernoulli', 'Sampled outcomes: bernoulli '
                    '(labels) or probability (P itself).')
flags.DEFINE_integer('sample_seed', 0, 'PRNG seed of the sampled matrix.')
flags.DEFINE_string('output_dir', 'results/crossplay', 'Where crossplay.json '
                    'and crossplay.csv are written.')

COST_KEYS = ('preference_queries', 'generated_tokens', 'training_flops',
             'wall_time_s', 'peak_memory_bytes')


def _read_json(path, flag='runs'):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    common.fail(f'--{flag}: {path} cannot be read ({e})')


def load_run(path: str, seed_index: int, shape) -> dict:
  """One run's policy (seed ``seed_index``), name and costs; refuses
  unfinished runs and mismatched shapes."""
  summary_path = os.path.join(path, 'summary.json')
  if not os.path.isdir(path):
    common.fail(f'--runs: {path} is not a directory')
  if not os.path.exists(summary_path):
    common.fail(f'--runs: {path} has no summary.json (not a finished run)')
  summary = _read_json(summary_path)
  config = _read_json(os.path.join(path, 'config.json'))
  try:
    policy = np.load(os.path.join(path, 'final_policy.npy'),
                     allow_pickle=False)
  except (OSError, ValueError) as e:
    common.fail(f'--runs: {path}/final_policy.npy cannot be read ({e})')
  if policy.ndim != 3 or policy.shape[1:] != tuple(shape):
    common.fail(f'--runs: {path}/final_policy.npy has shape '
                f'{list(policy.shape)}, expected [S, {shape[0]}, '
                f'{shape[1]}] (the game\'s contexts and responses)')
  if not 0 <= seed_index < policy.shape[0]:
    common.fail(f'--seed_index: {seed_index} is out of range for {path} '
                f'({policy.shape[0]} seeds)')
  final = summary.get('final', [{}])[seed_index]
  cost = dict(summary.get('cost', {}))
  cost.update({k: final[k] for k in ('preference_queries',
                                     'generated_tokens') if k in final})
  cost.setdefault('wall_time_s', summary.get('wall_time_s'))
  return {'name': config.get('algorithm', os.path.basename(path)),
          'dir': path, 'seed': config.get('seed', 0) + seed_index,
          'policy': policy[seed_index],
          'cost': {k: cost.get(k) for k in COST_KEYS}}


def _unique(names):
  seen, out = {}, []
  for n in names:
    seen[n] = seen.get(n, 0) + 1
    out.append(n if seen[n] == 1 else f'{n}#{seen[n]}')
  return out


def main(argv):
  if len(argv) > 1:
    common.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  common.quiet_logs()
  f = flags.FLAGS
  if not f.runs:
    common.fail('--runs: must name at least one result directory')
  if f.comparisons < 2:
    common.fail(f'--comparisons: must be >= 2, got {f.comparisons}')
  if f.outcome not in OUTCOMES:
    common.fail(f'--outcome: must be {" or ".join(OUTCOMES)}, got '
                f'{f.outcome!r}')
  game_path = f.game or os.path.join(f.runs[0], 'game.npz')
  try:
    game = load_game(game_path)
  except GameFileError as e:
    common.fail(f'--game: {e}')
  try:
    experiment.check_output_dir(f.output_dir)
  except common.USER_ERRORS as e:
    common.fail(str(e))
  prefs = np.asarray(game.preferences, np.float64)
  shape = prefs.shape[:2]
  runs = [load_run(p, f.seed_index, shape) for p in f.runs]
  names = _unique(['pi_ref'] + [r['name'] for r in runs])
  policies = np.stack([np.asarray(game.ref_policy, np.float64)] +
                      [r['policy'] for r in runs])
  exact = crossplay.exact_win_rates(policies, prefs, game.context_weights)
  sampled = crossplay.sampled_win_rates(
      jax.random.PRNGKey(f.sample_seed), policies, prefs,
      game.context_weights, f.comparisons, f.outcome)
  entries = [{'name': names[0], 'dir': None, 'seed': None,
              'cost': {k: None for k in COST_KEYS}}]
  entries += [{k: r[k] for k in ('dir', 'seed', 'cost')} | {'name': n}
              for n, r in zip(names[1:], runs)]
  record = {'policies': entries, 'game': game_path,
            'exact': exact.tolist(),
            'sampled': {k: np.asarray(v).tolist() for k, v in
                        sampled.items()},
            'outcome': f.outcome}
  os.makedirs(f.output_dir, exist_ok=True)
  rows = []
  for i, a in enumerate(names):
    for j, b in enumerate(names):
      rows.append([a, b, exact[i, j], sampled['mean'][i, j],
                   sampled['low'][i, j], sampled['high'][i, j],
                   f.comparisons])
  io_lib.write_csv(os.path.join(f.output_dir, 'crossplay.csv'),
                   ['row', 'column', 'exact', 'mean', 'low', 'high',
                    'comparisons'], rows)
  io_lib.write_json(os.path.join(f.output_dir, 'crossplay.json'), record)
  width = max(len(n) for n in names) + 2
  print('exact win rate of row against column (sampled mean [95% CI], '
        f'{f.comparisons} comparisons per cell)')
  print(' ' * width + ''.join(n.rjust(width) for n in names))
  for i, a in enumerate(names):
    print(a.ljust(width) + ''.join(f'{exact[i, j]:.3f}'.rjust(width)
                                   for j in range(len(names))))
  print(f'wrote {f.output_dir}')


if __name__ == '__main__':
  app.run(main, flags_parser=common.parse_flags)
