"""Exact parameter-space methods on softmax logits, driven by optax.

``params`` are logits ``theta[x, y]`` with ``pi_theta = softmax(theta)``;
``extra`` is the optax state. Gradients are exact expectations over the
tabular game (ALGORITHMS.md section 4): 1 preference query a step (one
evaluation of ``g_pi``).

* ``self_play_pg``: ascend ``S(theta) = P(pi_theta > sg pi_theta) - beta KL``.
* ``online_ipo``: descend the online IPO loss; with learning rate ``gamma`` it
  follows the same direction as ``self_play_pg`` with ``4 gamma / beta``.
"""

from __future__ import annotations

import jax
import optax

from nash_jax import rules
from nash_jax.algorithms.base import (
  Algorithm,
  AlgorithmConfig,
  PolicyState,
  advance,
  make_optimizer,
  new_state,
)
from nash_jax.environments.tabular import all_contexts
from nash_jax.games.core import Game
from nash_jax.policies.core import Policy


def _make(name, config: AlgorithmConfig, policy: Policy,
          loss_fn) -> Algorithm:
  optimizer = make_optimizer(config)
  beta = config.beta

  def init(key, game: Game) -> PolicyState:
    init_key, key = jax.random.split(key)
    logits = policy.init(init_key, all_contexts(game), None)
    return new_state(key, logits, optimizer.init(logits))

  def step(state: PolicyState, game: Game):
    loss, grads = jax.value_and_grad(loss_fn)(
        state.params, game.preferences, game.log_ref_policy,
        game.context_weights, beta)
    updates, opt_state = optimizer.update(grads, state.extra, state.params)
    params = optax.apply_updates(state.params, updates)
    return advance(state, params, opt_state, 1), {'loss': loss}

  return Algorithm(name, init, step, policy)


def make_self_play_pg(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Self-play policy gradient: ascend ``rules.self_play_objective``."""
  return _make('self_play_pg', config, policy,
               lambda *args: -rules.self_play_objective(*args))


def make_online_ipo(config: AlgorithmConfig, policy: Policy) -> Algorithm:
  """Online IPO: descend ``rules.online_ipo_loss``."""
  return _make('online_ipo', config, policy, rules.online_ipo_loss)
