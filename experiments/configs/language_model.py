"""Config of figure ``language_model`` (nash_jax/figures/language_model.py).

A small transformer (``experiments.lm``'s policy) on the listable token
game with the annotators' Condorcet cycles, adam, trained on the preference
probabilities (``oracle='probability'``), ``batch_size`` comparisons a
step, ``num_seeds`` seeds from the same random reference model
(``model_seed``, no SFT); every online run spends ``query_budget``
queries, evaluated about ``evaluations`` times.
``stability``: online IPO and Nash Prox over ``betas`` x
``learning_rates``; a seed has converged when its final exact KL to
pi*_beta is below ``kl_threshold``. ``comparison``: every online algorithm
and the reward-based baselines at one ``beta`` and learning rate (runs that
are cells of the grid are taken from it); the baselines get
``offline_pairs = query_budget`` comparisons of pi_ref.
"""


def get_config(scale: str) -> dict:
  config = {
      'vocab_size': 3, 'max_length': 3, 'num_prompts': 2,
      'd_model': 32, 'num_layers': 2, 'num_heads': 2, 'num_kv_heads': 1,
      'mlp_dim': 64, 'model_seed': 0, 'sft_steps': 0,
      'batch_size': 32, 'outcome': 'probability', 'num_seeds': 4, 'seed': 0,
      'optimizer': 'adam', 'query_budget': 12_800, 'evaluations': 8,
      'stability': {
          'algorithms': ['online_ipo', 'nash_prox'],
          'betas': [0.1, 0.03],
          'learning_rates': [0.001, 0.003, 0.01, 0.03, 0.1],
          'kl_threshold': 0.05,
      },
      'comparison': {
          'algorithms': ['online_ipo', 'self_play_pg', 'nash_prox',
                         'approx_nash_mp', 'nash_md_pg', 'dpo',
                         'offline_ipo', 'bt_rlhf'],
          'beta': 0.1,
          'learning_rate': 0.001,
      },
  }
  if scale == 'full':
    config.update(num_seeds=16, vocab_size=4, max_length=4, d_model=64,
                  mlp_dim=128, query_budget=64_000)
    config['stability'].update(betas=[0.3, 0.1, 0.03, 0.01],
                               learning_rates=[0.001, 0.003, 0.01, 0.03, 0.1,
                                               0.3])
  elif scale == 'test':
    config.update(vocab_size=2, max_length=2, d_model=8, num_layers=1,
                  mlp_dim=8, batch_size=8, num_seeds=2, query_budget=80,
                  evaluations=2)
    config['stability'].update(betas=[0.1], learning_rates=[0.01, 0.3])
    config['comparison'].update(algorithms=['online_ipo', 'nash_prox',
                                            'dpo'], learning_rate=0.01)
  return config
