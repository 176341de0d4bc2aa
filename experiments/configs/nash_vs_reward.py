"""Config of figure ``nash_vs_reward`` (nash_jax/figures/nash_vs_reward.py).

Game families (one context each, ``num_games`` games per family):

* ``rock_paper_scissors``: the cyclic family with n = 3 (rock-paper-scissors
  with random strengths) and a Dirichlet pi_ref, from which the BT fit's
  comparisons are drawn. (With a uniform pi_ref the circulant symmetry makes
  the fitted reward flat, and both the greedy and the regularized BT policy
  are then the uniform Nash policy.)
* ``cyclic``: the same family with n = 9.
* ``population``: the mean of 3 annotators' BT preferences, n = 10, uniform
  pi_ref: often intransitive.
* ``bradley_terry``: transitive, n = 10, uniform pi_ref: the BT fit is
  exact and the greedy BT policy is the Condorcet winner, the von Neumann
  winner.
"""


def get_config(scale: str) -> dict:
  config = {
      'games': [
          {'name': 'rock_paper_scissors', 'game': 'cyclic', 'num_actions': 3,
           'ref_policy': 'random'},
          {'name': 'cyclic', 'game': 'cyclic', 'num_actions': 9,
           'ref_policy': 'random'},
          {'name': 'population', 'game': 'population', 'num_actions': 10,
           'ref_policy': 'uniform'},
          {'name': 'bradley_terry', 'game': 'bradley_terry',
           'num_actions': 10, 'ref_policy': 'uniform'},
      ],
      'num_games': 50,
      'seed': 0,
      'beta': 0.1,
  }
  if scale == 'full':
    config.update(num_games=500)
  elif scale == 'test':
    config.update(num_games=4)
  return config
