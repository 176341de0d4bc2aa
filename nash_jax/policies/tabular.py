"""Tabular softmax policy: one logit per context and response.

``pi_theta(y|x) = softmax(theta[x])_y`` with ``theta [X, n]``; initialized at
``log pi_ref`` (or ``pi_ref`` times Gaussian noise with ``init='random'``),
like the exact-mode softmax algorithms.
"""

from __future__ import annotations

from nash_jax.games.core import Game
from nash_jax.policies.core import Policy, enumerable
from nash_jax.rules import normalize


def make_tabular(init_log_policy) -> Policy:
  """``init_log_policy(key, game) -> [X, n]`` gives the initial logits."""

  def log_probs(params, game: Game, contexts):
    del game
    return normalize(params[contexts])

  return enumerable('tabular', init_log_policy, log_probs)
