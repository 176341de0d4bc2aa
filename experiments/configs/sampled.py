"""Config of figure ``sampled`` (nash_jax/figures/sampled.py).

Policies panel: ``annotators`` games with X = 4 contexts, n = 5 responses
and d = 20 features (d = X n: the log-linear class holds pi*_beta), uniform
pi_ref, beta = 0.1; each algorithm x policy class with its default
hyperparameters (adam, lr 0.003 for log-linear and MLP policies), batch 64,
Bernoulli oracle, until ``query_budget`` queries, evaluated ``evaluations``
times; converged: final KL < ``kl_threshold``. Batch panel (``batch``, its
keys override the top level): ``algorithm`` with a ``policy`` policy on
random games, one run per batch size in ``batch_sizes``, same query budget.
"""


def get_config(scale: str) -> dict:
  config = {
      'game': 'annotators',
      'num_contexts': 4,
      'num_actions': 5,
      'feature_dim': 20,
      'ref_policy': 'uniform',
      'beta': 0.1,
      'algorithms': ['online_ipo', 'nash_prox', 'nash_md_pg',
                     'approx_nash_mp'],
      'policies': ['loglinear', 'mlp'],
      'batch_size': 64,
      'outcome': 'bernoulli',
      'num_seeds': 8,
      'seed': 0,
      'query_budget': 200_000,
      'evaluations': 50,
      'kl_threshold': 1e-2,
      'batch': {
          'game': 'random',
          'num_contexts': 1,
          'num_actions': 20,
          'algorithm': 'nash_prox',
          'policy': 'tabular',
          'batch_sizes': [4, 16, 64, 256],
          'query_budget': 200_000,
      },
  }
  if scale == 'full':
    config.update(num_seeds=32, query_budget=500_000)
    config['batch'].update(batch_sizes=[4, 16, 64, 256, 1024],
                           query_budget=1_000_000)
  elif scale == 'test':
    # Compilation is most of the time here: one program per algorithm x
    # policy and per batch size, so few of each.
    config.update(num_seeds=2, query_budget=640, evaluations=4,
                  algorithms=['nash_prox'], policies=['loglinear'])
    config['batch'].update(num_actions=5, batch_sizes=[16, 64],
                           query_budget=640)
  return config
