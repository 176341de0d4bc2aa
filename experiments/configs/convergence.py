"""Config of figure ``convergence`` (nash_jax/figures/convergence.py).

Random games with n = 100 responses and a uniform pi_ref, one per seed; at
each beta every algorithm runs until ``query_budget`` preference queries,
evaluated every ``eval_every`` steps; proximal point (evaluated every outer
step) runs ``proximal_point_outer_steps`` outer steps, each solving its prox
game to the default inner tolerance. Nash-MP's claimed bound reaches 1e-15
after about 2 ln(KL_0 / 1e-15) / ln(1 + 2 beta) queries: 340 at beta = 0.1,
3,400 at beta = 0.01; the budgets cover that.
"""

from nash_jax.algorithms import ALGORITHM_NAMES

# sppo ignores beta and does not aim at pi*_beta.
ALGORITHMS = [a for a in ALGORITHM_NAMES if a != 'sppo']


def get_config(scale: str) -> dict:
  config = {
      'game': 'random',
      'num_actions': 100,
      'ref_policy': 'uniform',
      'num_seeds': 10,
      'seed': 0,
      'algorithms': ALGORITHMS,
      'betas': [0.1, 0.01],
      'query_budgets': [400, 4000],
      'eval_every': [2, 10],
      'proximal_point_outer_steps': [12, 12],
  }
  if scale == 'full':
    config.update(num_seeds=30)
  elif scale == 'test':
    config.update(num_actions=10, num_seeds=3,
                  algorithms=['nash_mp', 'omd', 'proximal_point'],
                  betas=[0.1], query_budgets=[100], eval_every=[2],
                  proximal_point_outer_steps=[4])
  return config
