"""Figure ``language_model``: the claims with a transformer policy
(ALGORITHMS.md section 5, claims 1, 2 and 6).

Every run is ``experiments.lm``'s: a small transformer post-trained from its
reference model ``pi_ref`` (``model_seed``) on the listable token game, whose
annotator population has a Condorcet cycle for every prompt. All responses
of at most ``max_length`` tokens are listed, so ``KL_rho(pi*_beta || pi)``
of the whole transformer is exact, and so is every win rate below.

* ``language_model_stability.png`` (claims 1 and 2): online IPO against
  Nash Prox over learning rate x beta, the fraction of seeds whose final KL
  is below ``kl_threshold`` (:func:`nash_jax.stability.cell_summary`; all
  cells of an algorithm are one sweep).
* ``language_model.png``, left (claims 1, 2, 6): exact KL to ``pi*_beta``
  against preference queries for every online algorithm at one ``beta`` and
  learning rate (geometric mean over seeds and its 95% band), and for the
  reward-based baselines (``dpo``, ``offline_ipo``, ``bt_rlhf``), which ask
  all their queries up front: ``offline_pairs`` = the online budget.
* ``language_model.png``, right (claim 6): the exact cross-play win-rate
  matrix ``W[i, j] = sum_x rho(x) pi_i(.|x)^T P_x pi_j(.|x)`` among
  ``pi_ref`` and every trained policy (each the mixture of its seeds' final
  policies, so a cell is the win rate of a random seed of ``i`` against a
  random seed of ``j``), under the ground-truth annotators.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nash_jax import crossplay, experiment
from nash_jax import io as io_lib
from nash_jax import stability as study_lib
from nash_jax.figures import common
from nash_jax.tasks import token_game

CLAIM = ('claims 1, 2 and 6 with a transformer policy: online IPO has a '
         'stability limit that Nash Prox removes, and Nash policies beat '
         'reward-based ones under intransitive preferences')
OUTPUTS = ['lm_stability.csv', 'lm_kl.csv', 'lm_crossplay.csv']
BASELINES = ('dpo', 'offline_ipo', 'bt_rlhf')
REFERENCE = 'pi_ref'
# The model, game and run settings a config may set (TokenGameConfig
# fields).
MODEL_KEYS = ('vocab_size', 'max_length', 'num_prompts', 'd_model',
              'num_layers', 'num_heads', 'num_kv_heads', 'mlp_dim',
              'model_seed', 'sft_steps', 'batch_size', 'outcome', 'num_seeds',
              'seed', 'optimizer')


def _base(config: dict, directory: str):
  """The settings every run shares (an unvalidated ``TokenGameConfig``)."""
  return token_game.TokenGameConfig(
      checkpoint_every=0, num_samples=1,
      output_dir=os.path.join(directory, 'runs'),
      **{k: config[k] for k in MODEL_KEYS})


def _study(config: dict) -> study_lib.Study:
  s = config['stability']
  return study_lib.Study(
      algorithms=tuple(s['algorithms']),
      betas=tuple(float(b) for b in s['betas']),
      learning_rates=tuple(float(v) for v in s['learning_rates']),
      query_budget=int(config['query_budget']),
      kl_threshold=float(s['kl_threshold']))


def _schedule(config: dict) -> tuple[int, int]:
  """``(num_steps, eval_every)`` of every online run: ``query_budget``
  queries, ``batch_size`` a step, about ``evaluations`` evaluations."""
  return common.sampled_schedule(config['query_budget'], config['batch_size'],
                                 config['evaluations'])


def _stability_plan(config: dict, directory: str):
  """``{algorithm: validated cells}`` of the stability grid."""
  s, base = config['stability'], _base(config, directory)
  steps, every = _schedule(config)
  plan = {}
  for name in s['algorithms']:
    cell = base.replace(algorithm=name, num_steps=steps, eval_every=every,
                        output_dir=os.path.join(base.output_dir, 'stability',
                                                name))
    plan[name] = experiment.validate_sweep(
        token_game.TASK, cell, study_lib.grid(_study(config)))[0]
  return plan


def _comparison_plan(config: dict, directory: str):
  """``{algorithm: validated config}`` of the KL and cross-play panels:
  the online algorithms spend ``query_budget`` queries; the baselines
  learn from ``offline_pairs = query_budget`` comparisons of ``pi_ref``.
  Every run has the schedule of the stability grid, so that an online run
  whose ``(beta, learning_rate)`` is a cell of the grid is that cell."""
  c, base = config['comparison'], _base(config, directory)
  steps, every = _schedule(config)
  plan = {}
  for name in c['algorithms']:
    settings = dict(algorithm=name, beta=c['beta'],
                    learning_rate=c['learning_rate'], num_steps=steps,
                    eval_every=every, output_dir=os.path.join(
                        base.output_dir, 'comparison', name))
    if name in BASELINES:
      settings['offline_pairs'] = config['query_budget']
    plan[name] = experiment.validate(token_game.TASK,
                                     base.replace(**settings))[0]
  return plan


def validate(config: dict, directory: str) -> None:
  """Refuses a config that cannot run (raises ConfigError) before any
  work."""
  _stability_plan(config, directory)
  _comparison_plan(config, directory)


def kl_rows(name: str, results) -> list[dict]:
  """``lm_kl.csv`` rows of one run: per evaluation and seed, the queries
  used and the exact KL to ``pi*_beta``."""
  first = results.config.seed
  return [{'algorithm': name, 'seed': first + i, 'step': int(step),
           'preference_queries': int(q), 'kl_to_equilibrium': float(kl)}
          for row in results.rows
          for i, (step, q, kl) in enumerate(zip(row['step'],
                                                row['preference_queries'],
                                                row['kl_to_equilibrium']))]


def crossplay_rows(names: list[str], policies, game) -> list[dict]:
  """``lm_crossplay.csv`` rows: the exact win rate of each policy (rows)
  against each (columns); ``policies`` is ``[K, X, N]``."""
  w = crossplay.exact_win_rates(policies, game.preferences,
                                game.context_weights)
  return [{'row': a, 'column': b, 'win_rate': float(w[i, j])}
          for i, a in enumerate(names) for j, b in enumerate(names)]


def compute(config: dict, directory: str, log) -> list[str]:
  """Runs the stability grid and the comparison; writes the CSVs of
  :data:`OUTPUTS` and every run's result directory under ``runs/``."""
  say = lambda line: log(f'  language_model: {line}')
  study = _study(config)
  rows, done = [], {}
  for name, cells in _stability_plan(config, directory).items():
    say(f'stability: {name}, {len(cells)} cells x {config["num_seeds"]} '
        'seeds in one run')
    results = experiment.run_task(token_game.TASK, [c for _, c in cells],
                                  None, cells[0][1].output_dir, log=say)
    for res in results:
      token_game.write(res)
    for (values, _), res in zip(cells, results):
      done[name, values['beta'], values['learning_rate']] = res
      rows.append(study_lib.cell_summary(name, values, res, study))
      say(study_lib.format_row(rows[-1]))
  study_lib.write_csv(rows, os.path.join(directory, 'lm_stability.csv'))
  kl, names, finals, game = [], [REFERENCE], [], None
  for name, run_config in _comparison_plan(config, directory).items():
    # A cell of a sweep is bit-identical to its single run: reuse it.
    res = done.get((name, run_config.beta, run_config.learning_rate))
    say(f'comparison: {name}' + (' (the stability cell)' if res else ''))
    if res is None:
      res = experiment.run_task(token_game.TASK, [run_config], log=say)[0]
      token_game.write(res)
    kl += kl_rows(name, res)
    names.append(name)
    finals.append(np.mean(res.final_policy, axis=0))
    game = res.game
  io_lib.write_records(os.path.join(directory, 'lm_kl.csv'), kl)
  ref = np.asarray(game.ref_policy, np.float64)  # Stored in the run dtype.
  policies = np.stack([ref / ref.sum(-1, keepdims=True)] + finals)
  io_lib.write_records(os.path.join(directory, 'lm_crossplay.csv'),
                       crossplay_rows(names, policies, game))
  return OUTPUTS


def _config(directory: str) -> dict:
  path = os.path.join(directory, 'result.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)['config']


def plot(directory: str) -> None:
  """``language_model_stability.png`` (heatmaps) and ``language_model.png``
  (KL against queries; the cross-play matrix), each with a PDF."""
  c = _config(directory)
  model = (f'transformer d={c["d_model"]}, {c["num_layers"]} layers, token '
           f'game V={c["vocab_size"]}, L={c["max_length"]}, '
           f'{c["num_prompts"]} prompts, {c["num_seeds"]} seeds'
           if c else '')
  plt = common.pyplot()
  rows = study_lib.read_csv(os.path.join(directory, 'lm_stability.csv'))
  title = (f'{model}; converged: final KL < '
           f'{c["stability"]["kl_threshold"]:g}' if c else '')
  study_lib.plot(rows, os.path.join(directory,
                                    'language_model_stability.png'), title,
                 c.get('optimizer', 'adam'))
  kl = common.read_csv(os.path.join(directory, 'lm_kl.csv'))
  cross = common.read_csv(os.path.join(directory, 'lm_crossplay.csv'))
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
  for name in dict.fromkeys(r['algorithm'] for r in kl):
    steps = sorted(set(common.column(kl, 'step', algorithm=name)))
    values = np.stack([common.column(kl, 'kl_to_equilibrium',
                                     algorithm=name, step=s) for s in steps])
    queries = np.asarray([np.median(common.column(
        kl, 'preference_queries', algorithm=name, step=s)) for s in steps])
    low, centre, high = common.log_band(values, axis=1)
    if name in BASELINES:  # All queries up front: one point, its final KL.
      left.errorbar(queries[-1:], centre[-1:],
                    yerr=[centre[-1:] - low[-1:], high[-1:] - centre[-1:]],
                    fmt='s', capsize=3, label=f'{name} (final)')
    else:
      left.plot(queries, centre, label=name)
      left.fill_between(queries, low, high, alpha=0.2)
  left.set_yscale('log')
  left.set_xlabel('preference queries')
  left.set_ylabel(r'KL$_\rho$($\pi^*_\beta$ || $\pi$)')
  if c:
    left.set_title(f'beta={c["comparison"]["beta"]:g}, learning rate '
                   f'{c["comparison"]["learning_rate"]:g}')
  left.legend(fontsize=7)
  names = list(dict.fromkeys(r['row'] for r in cross))
  w = np.asarray([[common.column(cross, 'win_rate', row=a, column=b)[0]
                   for b in names] for a in names])
  # Colours centred on 1/2, scaled to the largest deviation.
  spread = max(float(np.max(np.abs(w - 0.5))), 1e-3)
  image = right.imshow(w, cmap='RdBu', vmin=0.5 - spread, vmax=0.5 + spread)
  for i in range(len(names)):
    for j in range(len(names)):
      right.text(j, i, f'{w[i, j]:.3f}'.lstrip('0'), ha='center',
                 va='center', fontsize=6)
  right.set_xticks(range(len(names)), names, rotation=45, ha='right')
  right.set_yticks(range(len(names)), names)
  right.set_title('exact win rate of row against column')
  fig.colorbar(image, ax=right, fraction=0.046)
  fig.suptitle(model)
  fig.tight_layout()
  common.save(fig, directory, 'language_model')
  plt.close(fig)
