"""Config of figure ``stability`` (nash_jax/figures/stability.py).

Random games with n = 20 responses and a uniform pi_ref, sampled mode
(tabular policy, sgd, Bernoulli oracle, batch 64); each algorithm runs every
``betas`` x ``learning_rates`` cell for ``num_seeds`` seeds (seed s plays
game s in every cell) until ``query_budget`` queries, evaluated
``evaluations`` times; a seed has converged when its final KL to pi*_beta is
below ``kl_threshold``. The learning rate is the sgd step of each
algorithm's loss; both are IPO-form losses, so the same rate moves the
logits by as much in both.
"""


def get_config(scale: str) -> dict:
  config = {
      'game': 'random',
      'num_actions': 20,
      'ref_policy': 'uniform',
      'algorithms': ['online_ipo', 'nash_prox'],
      'betas': [0.1, 0.03, 0.01],
      'learning_rates': [0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
      'batch_size': 64,
      'outcome': 'bernoulli',
      'num_seeds': 16,
      'seed': 0,
      'query_budget': 200_000,
      'evaluations': 10,
      'kl_threshold': 1e-2,
  }
  if scale == 'full':
    config.update(num_seeds=32,
                  betas=[0.3, 0.1, 0.03, 0.01, 0.003],
                  learning_rates=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                                  0.2, 0.5, 1.0])
  elif scale == 'test':
    config.update(num_actions=5, num_seeds=4, betas=[0.1, 0.01],
                  learning_rates=[0.03, 1.0], query_budget=3_200,
                  evaluations=5)
  return config
