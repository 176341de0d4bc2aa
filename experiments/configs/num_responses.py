"""Config of figure ``num_responses`` (nash_jax/figures/num_responses.py).

Random games with a uniform pi_ref; per n (``sizes``) ``num_seeds`` games;
each algorithm runs until ``query_budgets`` queries (evaluated every
``eval_every`` steps: a resolution of 2 or 4 queries) and we record the
queries to reach KL < ``threshold``. n = 10,000 is only in
the ``full`` scale: its reference is certified by the span residual (Newton
would take about 40 minutes a game), and each of its games is an 800 MB
float64 matrix, run one seed at a time (``newton_max_actions``).
"""


def get_config(scale: str) -> dict:
  config = {
      'game': 'random',
      'ref_policy': 'uniform',
      'sizes': [10, 100, 1000],
      'num_seeds': [10, 10, 10],
      'seed': 0,
      'betas': [0.1, 0.01],
      'query_budgets': [300, 1500],
      'eval_every': 2,
      'algorithms': ['nash_mp', 'extragradient', 'omwu'],
      'threshold': 1e-6,
      'newton_max_actions': 1000,
  }
  if scale == 'full':
    config.update(sizes=[10, 100, 1000, 10_000], num_seeds=[30, 30, 30, 3])
  elif scale == 'test':
    config.update(sizes=[5, 20], num_seeds=[3, 3], betas=[0.1],
                  query_budgets=[200], eval_every=1, algorithms=['nash_mp'],
                  newton_max_actions=10)
  return config
