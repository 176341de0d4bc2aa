"""The trainer: compiled chunks of steps, vmapped over seeds.

``make_chunk_runner`` returns one jitted function that advances every seed by
``chunk_steps`` steps (``lax.scan`` inside ``jit(vmap(...))``, as in PureJaxRL)
and evaluates the exact metrics at the chunk's end, so only evaluation points
ever leave the device. A Python loop between chunks logs progress (Stoix).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nash_jax import metrics as metrics_lib
from nash_jax.algorithms.base import Algorithm, PolicyState
from nash_jax.games.core import Game


def info_template(algorithm: Algorithm, state: PolicyState, game: Game):
  """Zeros shaped like the ``info`` dict that ``algorithm.step`` returns."""
  _, info = jax.eval_shape(algorithm.step, state, game)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), info)


def evaluate_state(algorithm: Algorithm, state: PolicyState, game: Game, beta,
                   log_equilibrium, info) -> dict:
  """Metrics row of one seed: counters, exact metrics and the last step info."""
  row = {'step': state.step, 'preference_queries': state.preference_queries}
  row.update(metrics_lib.evaluate(algorithm.log_policy(state), game, beta,
                                  log_equilibrium))
  row.update(info)
  return row


def run_chunk(algorithm: Algorithm, beta, chunk_steps: int, state: PolicyState,
              game: Game, log_equilibrium):
  """``chunk_steps`` steps of one seed, then its metrics row."""
  info0 = info_template(algorithm, state, game)

  def body(carry, _):
    state, _ = carry
    return algorithm.step(state, game), None

  (state, info), _ = jax.lax.scan(body, (state, info0), None,
                                  length=chunk_steps)
  return state, evaluate_state(algorithm, state, game, beta, log_equilibrium,
                               info)


def make_chunk_runner(algorithm: Algorithm, beta, chunk_steps: int,
                      shared_game: bool) -> Callable:
  """``jit(vmap(run_chunk))`` over seeds; the game is shared or per seed."""
  game_axis = None if shared_game else 0
  fn = lambda state, game, log_eq: run_chunk(algorithm, beta, chunk_steps,
                                             state, game, log_eq)
  return jax.jit(jax.vmap(fn, in_axes=(0, game_axis, game_axis)))


def make_initializer(algorithm: Algorithm, beta, shared_game: bool):
  """``jit(vmap(init))`` over seed keys, with the step-0 metrics row."""
  game_axis = None if shared_game else 0

  def init(key, game, log_eq):
    state = algorithm.init(key, game)
    info0 = info_template(algorithm, state, game)
    return state, evaluate_state(algorithm, state, game, beta, log_eq, info0)
  return jax.jit(jax.vmap(init, in_axes=(0, game_axis, game_axis)))


def train(algorithm: Algorithm, beta, keys, game: Game, log_equilibrium, *,
          num_steps: int, eval_every: int, shared_game: bool,
          on_eval: Callable[[dict], None] | None = None):
  """Runs every seed for ``num_steps`` steps, evaluating every ``eval_every``.

  Args:
    algorithm: the algorithm.
    beta: the game's regularization, for the metrics.
    keys: ``[S]`` PRNG keys, one per seed.
    game: one game (``shared_game``) or a batch ``[S, ...]``.
    log_equilibrium: ``[X, n]`` or ``[S, X, n]`` reference log-policy.
    num_steps: steps per seed.
    eval_every: steps between evaluations (the last chunk may be shorter).
    shared_game: whether all seeds play ``game``.
    on_eval: called with each host-side metrics row dict (arrays ``[S]``).

  Returns:
    ``(final_state, rows)``: the final batched state and the list of
    evaluation rows (step 0 first), each a dict of ``[S]`` NumPy arrays.
  """
  init = make_initializer(algorithm, beta, shared_game)
  state, row = init(keys, game, log_equilibrium)
  rows = [jax.device_get(row)]
  if on_eval:
    on_eval(rows[-1])
  runners = {}
  done = 0
  while done < num_steps:
    chunk = min(eval_every, num_steps - done)
    if chunk not in runners:
      runners[chunk] = make_chunk_runner(algorithm, beta, chunk, shared_game)
    state, row = runners[chunk](state, game, log_equilibrium)
    rows.append(jax.device_get(row))
    done += chunk
    if on_eval:
      on_eval(rows[-1])
  return state, rows
