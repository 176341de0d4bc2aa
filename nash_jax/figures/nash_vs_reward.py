"""Figure ``nash_vs_reward``: why a Nash policy and not a fitted reward.

Claim 6 of ALGORITHMS.md section 5 (its tabular core): against preferences
that are not transitive, a policy maximizing a fitted Bradley-Terry reward
can be exploited, the Nash policy cannot. Per game family we draw games and
compare four policies:

* ``nash``: a von Neumann winner (the ``beta = 0`` equilibrium, an LP);
* ``bt_greedy``: ``argmax_y r(y)`` of the maximum-likelihood BT reward ``r``
  (comparisons drawn from ``pi_ref x pi_ref``; ties split uniformly);
* ``nash_beta``: ``pi*_beta``;
* ``bt_matched``: ``pi ∝ pi_ref exp(r / beta')``, the KL-regularized reward
  maximizer with ``beta'`` set per game so that ``KL(pi || pi_ref) =
  KL(pi*_beta || pi_ref)``: as far from ``pi_ref`` as ``pi*_beta``. (At
  ``beta' = beta`` the two would not be comparable: ``r`` is on the
  log-odds scale, about ``4 (P - 1/2)``, the win rates ``g`` of ``pi*_beta``
  on the probability scale, so ``pi_ref exp(r / beta)`` is much sharper.)

Measured (exact): the exploitability ``E_x max_y g_pi(y|x) - 1/2`` of each,
their win rate against ``pi_ref``, the head-to-head win rates ``P(nash >
bt_greedy)`` and ``P(nash_beta > bt_matched)``, whether the game has a Condorcet
winner, and the BT misfit ``max |P - sigmoid(r_y - r_y')|`` (zero on a BT
game, where the fit recovers the true rewards up to a constant).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import bradley_terry, metrics, reference
from nash_jax import io as io_lib
from nash_jax.algorithms import ConfigError
from nash_jax.figures import common
from nash_jax.games import GENERATORS, REF_POLICIES, generate_game

CLAIM = ('claim 6 (tabular): a policy maximizing a fitted Bradley-Terry '
         'reward is exploitable on intransitive preferences, the Nash policy '
         'is not')
POLICIES = ('nash', 'bt_greedy', 'nash_beta', 'bt_matched')
POLICY_LABELS = {'nash': r'Nash ($\beta$=0, von Neumann winner)',
                 'bt_greedy': 'BT reward argmax',
                 'nash_beta': r'Nash $\pi^*_\beta$',
                 'bt_matched': r'BT reward, $\pi_{ref}e^{r/\beta\prime}$ at '
                 r'the KL of $\pi^*_\beta$'}
# Okabe-Ito: Nash policies in vermillion, reward policies in blue; the
# regularized ones lighter and hatched.
POLICY_STYLE = {'nash': ('#D55E00', ''), 'nash_beta': ('#E69F00', '//'),
                'bt_greedy': ('#0072B2', ''), 'bt_matched': ('#56B4E9', '//')}
HEAD_TO_HEAD = (('nash', 'bt_greedy'), ('nash_beta', 'bt_matched'))


def validate(config: dict, directory: str) -> None:
  """Refuses unknown game families or reference policies, ``beta <= 0``."""
  del directory
  for spec in config['games']:
    if spec['game'] not in GENERATORS:
      raise ConfigError('figures', f'nash_vs_reward: unknown game '
                        f'{spec["game"]!r}')
    if spec['ref_policy'] not in REF_POLICIES:
      raise ConfigError('figures', f'nash_vs_reward: unknown ref_policy '
                        f'{spec["ref_policy"]!r}')
  if not config['beta'] > 0:
    raise ConfigError('figures', 'nash_vs_reward: beta must be > 0')


def condorcet_winner(preferences) -> np.ndarray:
  """Per context, whether some response beats every other one
  (``P(y > y') > 1/2`` for all ``y' != y``), ``[X]`` bool."""
  p = np.asarray(preferences)
  beats = (p > 0.5) | np.eye(p.shape[-1], dtype=bool)
  return np.any(np.all(beats, axis=-1), axis=-1)


def policies(game, beta: float) -> tuple[dict, np.ndarray]:
  """The four policies of the module docstring, ``{name: [X, n]}``, and the
  fitted BT rewards ``[X, n]``."""
  prefs = np.asarray(game.preferences, np.float64)
  ref = np.asarray(game.ref_policy, np.float64)
  rewards = bradley_terry.fit_rewards(prefs, ref)
  nash_beta = reference.regularized_equilibrium(prefs, ref, beta)
  matched, _ = bradley_terry.matched_kl_policy(
      rewards, ref, bradley_terry.kl_to_ref(nash_beta, ref))
  return {
      'nash': reference.von_neumann_winner(prefs),
      'bt_greedy': bradley_terry.greedy_policy(rewards),
      'nash_beta': nash_beta,
      'bt_matched': matched,
  }, rewards


@jax.jit
def _measure(game, log_policies):
  """Exploitability and win rate against ``pi_ref`` of each policy
  (``log_policies`` ``[K, X, n]``), and each policy's win rate against each
  other, ``[K, K]``."""
  exploit = jax.vmap(metrics.exploitability, (0, None))(log_policies, game)
  vs_ref = jax.vmap(metrics.win_rate, (0, None, None))(
      log_policies, game.log_ref_policy, game)
  pairwise = jax.vmap(jax.vmap(metrics.win_rate, (None, 0, None)),
                      (0, None, None))(log_policies, log_policies, game)
  return exploit, vs_ref, pairwise


def evaluate_game(game, beta: float) -> dict:
  """One CSV row: every measurement of the module docstring on one game."""
  pols, rewards = policies(game, beta)
  game = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), game)
  with np.errstate(divide='ignore'):
    logs = jnp.asarray(np.log(np.stack([pols[k] for k in POLICIES])))
  exploit, vs_ref, pairwise = jax.device_get(_measure(game, logs))
  row = {'condorcet_winner': float(np.mean(condorcet_winner(
      game.preferences))),
         'bt_misfit': float(np.max(bradley_terry.misfit(
             rewards, np.asarray(game.preferences))))}
  for k, name in enumerate(POLICIES):
    row[f'exploitability_{name}'] = float(exploit[k])
  for k, name in enumerate(POLICIES):
    row[f'win_rate_vs_ref_{name}'] = float(vs_ref[k])
  for a, b in HEAD_TO_HEAD:
    row[f'win_rate_{a}_vs_{b}'] = float(
        pairwise[POLICIES.index(a), POLICIES.index(b)])
  return row


def draw_games(spec: dict, seeds):
  """Games ``seeds`` of a family: one context each, drawn by
  ``generate_game`` from ``PRNGKey(seed)``, in float64; a list."""
  gen = jax.jit(jax.vmap(lambda key: generate_game(
      key, spec['game'], 1, spec['num_actions'], spec['ref_policy'],
      jnp.float64)))
  games = jax.device_get(gen(jax.vmap(jax.random.PRNGKey)(
      jnp.asarray(seeds))))
  return [jax.tree.map(lambda a, i=i: a[i], games)
          for i in range(len(seeds))]


def compute(config: dict, directory: str, log) -> list[str]:
  """One CSV per game family (``nash_vs_reward_<name>.csv``, a row per
  game) and the summary ``nash_vs_reward.csv`` (mean and 95% CI half-width
  over games of every column)."""
  outputs, summary = ['nash_vs_reward.csv'], []
  for spec in config['games']:
    seeds = [config['seed'] + i for i in range(config['num_games'])]
    rows = [{'seed': seed, **evaluate_game(game, config['beta'])}
            for seed, game in zip(seeds, draw_games(spec, seeds))]
    name = f'nash_vs_reward_{spec["name"]}.csv'
    io_lib.write_records(os.path.join(directory, name), rows)
    outputs.append(name)
    for column in rows[0]:
      if column == 'seed':
        continue
      mean, half = common.mean_ci([r[column] for r in rows])
      summary.append({'game': spec['name'], 'family': spec['game'],
                      'num_actions': spec['num_actions'],
                      'ref_policy': spec['ref_policy'],
                      'beta': config['beta'], 'num_games': len(rows),
                      'quantity': column, 'mean': float(mean),
                      'ci95': float(half)})
    get = lambda q: [s['mean'] for s in summary
                     if s['game'] == spec['name'] and s['quantity'] == q][0]
    log(f'  nash_vs_reward: {spec["name"]:<20} exploitability nash '
        f'{get("exploitability_nash"):.3f} bt_greedy '
        f'{get("exploitability_bt_greedy"):.3f} nash_beta '
        f'{get("exploitability_nash_beta"):.3f} bt_matched '
        f'{get("exploitability_bt_matched"):.3f}; P(nash > bt_greedy) '
        f'{get("win_rate_nash_vs_bt_greedy"):.3f}')
  io_lib.write_records(os.path.join(directory, outputs[0]), summary)
  return outputs


def plot(directory: str) -> None:
  """Left: exploitability of the four policies per game family; right: the
  head-to-head win rates of the Nash policies against the reward
  policies. Bars are means over games, whiskers 95% CIs."""
  summary = common.read_csv(os.path.join(directory, 'nash_vs_reward.csv'))
  plt = common.pyplot()
  games = list(dict.fromkeys(s['game'] for s in summary))
  get = lambda game, q: [(s['mean'], s['ci95']) for s in summary
                         if s['game'] == game and s['quantity'] == q][0]
  labels = []
  for game in games:
    s = [s for s in summary if s['game'] == game][0]
    condorcet = get(game, 'condorcet_winner')[0]
    labels.append(f'{game}\nn={s["num_actions"]:.0f}, '
                  f'{"Dirichlet" if s["ref_policy"] == "random" else "uniform"}'
                  f' ' + r'$\pi_{ref}$' + f'\nCondorcet winner {condorcet:.0%}')
  x = np.arange(len(games))
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.9),
                                    constrained_layout=True,
                                    gridspec_kw={'width_ratios': [3, 2]})
  width = 0.2
  for j, name in enumerate(POLICIES):
    values = [get(g, f'exploitability_{name}') for g in games]
    colour, hatch = POLICY_STYLE[name]
    left.bar(x + (j - 1.5) * width, [v[0] for v in values], width,
             yerr=[v[1] for v in values], color=colour, hatch=hatch,
             edgecolor='k', lw=0.5, capsize=2, label=POLICY_LABELS[name])
  left.set_xticks(x, labels)
  left.set_ylabel(r'exploitability $\max_y P(y \succ \pi) - 1/2$')
  left.legend(loc='lower center', bbox_to_anchor=(0.5, 1.08), ncol=2)
  left.grid(True, axis='y', alpha=0.3)
  beta = summary[0]['beta']
  for j, (a, b) in enumerate(HEAD_TO_HEAD):
    values = [get(g, f'win_rate_{a}_vs_{b}') for g in games]
    colour, hatch = POLICY_STYLE[a]
    right.bar(x + (j - 0.5) * 0.35, [v[0] for v in values], 0.35,
              yerr=[v[1] for v in values], color=colour, hatch=hatch,
              edgecolor='k', lw=0.5, capsize=2,
              label=(r'$P$(Nash $\succ$ BT argmax)' if j == 0 else
                     rf'$P(\pi^*_\beta \succ$ BT at the same KL), '
                     rf'$\beta$={beta:g}'))
  right.axhline(0.5, color='k', lw=0.8, ls=':')
  right.set_xticks(x, [g for g in games], rotation=15)
  right.set_ylim(0.4, None)
  right.set_ylabel('head-to-head win rate')
  right.set_title('Nash policy against the reward policy')
  right.legend(loc='upper right')
  right.grid(True, axis='y', alpha=0.3)
  num_games = int(summary[0]['num_games'])
  fig.suptitle(f'Nash policy against a fitted Bradley-Terry reward: mean and '
               f'95% CI over {num_games} games per family')
  common.save(fig, directory, 'nash_vs_reward')

