"""The inputs of a tabular run (second stage of :mod:`nash_jax.experiment`):
per-seed keys, the games, their exact references (``pi*_beta``), and the
algorithm built from its config, policy class and environment.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import policies as policies_lib
from nash_jax import reference
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.environments import tokens as tokens_lib
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.experiment.config import (
  ExperimentConfig,
  hyperparameters,
  lm_hyperparameters,
  setup_note,
)
from nash_jax.games import Game, generate_game
from nash_jax.policies import PolicyConfig, sequence, transformer


def seed_keys(config: ExperimentConfig):
  """Per-seed ``(game_key, run_key)``: seed ``s`` uses ``PRNGKey(s)`` split."""
  seeds = np.arange(config.seed, config.seed + config.num_seeds)
  keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds)
  return keys[:, 0], keys[:, 1]


def shares_game(config: ExperimentConfig) -> bool:
  """All seeds play one game when it comes from a file or ``--game_seed``."""
  return config.game == 'file' or config.game_seed is not None


@functools.lru_cache(maxsize=32)
def _game_generator(game, num_contexts, num_actions, ref_policy, dtype,
                    feature_dim):
  """The jitted, vmapped generator of a game family and size (cached, so
  that runs on games of one kind compile it once)."""
  return jax.jit(jax.vmap(lambda key: generate_game(
      key, game, num_contexts, num_actions, ref_policy, jnp.dtype(dtype),
      feature_dim)))


def build_games(config: ExperimentConfig, file_game: Game | None):
  """The game(s): one shared :class:`Game`, or a batch ``[num_seeds, ...]``."""
  dtype = jnp.dtype(config.dtype)
  if file_game is not None:
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), file_game)
  gen = _game_generator(config.game, config.num_contexts, config.num_actions,
                        config.ref_policy, config.dtype, config.feature_dim)
  if config.game_seed is not None:
    return jax.tree.map(lambda x: x[0],
                        gen(jax.random.PRNGKey(config.game_seed)[None]))
  game_keys, _ = seed_keys(config)
  return gen(game_keys)


def equilibria(config: ExperimentConfig, games: Game, shared: bool):
  """The exact reference per game (float64 on the host): ``pi*_beta``, or a
  von Neumann winner when ``beta = 0``. Shape ``[X, n]`` or ``[S, X, n]``."""
  prefs = np.asarray(games.preferences, np.float64)
  refs = np.asarray(games.ref_policy, np.float64)
  solve = lambda p, r: reference.equilibrium(p, r, config.beta)
  if shared:
    return solve(prefs, refs)
  return np.stack([solve(p, r) for p, r in zip(prefs, refs)])


def prepare(config: ExperimentConfig, file_game: Game | None = None,
            log: Callable[[str], None] = lambda line: None):
  """The games of a run and their exact references: ``(games, equilibrium)``
  (``log`` gets a line first when the solves are long, see
  :func:`~nash_jax.experiment.config.setup_note`)."""
  games = build_games(config, file_game)
  note = setup_note(config)
  if note:
    log(note)
  return games, equilibria(config, games, shares_game(config))


@functools.lru_cache(maxsize=64)
def _maker(name: str, structure: AlgorithmConfig, policy: PolicyConfig,
           oracle: str):
  """``make(hyper) -> Algorithm`` for the config ``structure`` (whose swept
  fields are placeholders) with the swept values ``hyper`` (tracers), the
  policy class and the tabular environment with ``oracle``."""
  policy_fn = policies_lib.make_policy(policy)
  env = make_tabular_environment(oracle)
  return lambda hyper: algorithms_lib.make_algorithm(
      name, structure.replace(**hyper), policy_fn, env)


def algorithm_maker(config: ExperimentConfig):
  """The ``make`` function of ``config``'s algorithm (cached per structure,
  so that runs differing only in swept values share compilations)."""
  structure = config.algorithm_config().replace(
      **{k: 'swept' for k in hyperparameters(config)})
  return _maker(config.algorithm, structure, config.policy_config(),
                config.oracle)


# --------------------------------------------------------------------------
# Language-model runs: the reference transformer, the token environment, the
# induced exact game and its reference solutions.


def lm_policy(tconfig, max_length: int, temperature) -> policies_lib.Policy:
  """The transformer policy (``temperature`` may be traced), counting the
  tokens it generates (every sampled token through EOS) for the cost."""
  policy = sequence.make_sequence_policy(tconfig, max_length, temperature)
  return policy._replace(num_tokens=lambda y: jnp.sum(
      sequence.response_mask(y), dtype=jnp.int32))


def lm_environment(spec, oracle: str, tconfig, temperature):
  """The token environment; the reference model scores responses at the
  policy's ``temperature`` (pi_ref is the initial policy)."""
  return tokens_lib.make_token_environment(
      spec, lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y,
                                                temperature), oracle)


@functools.lru_cache(maxsize=16)
def _lm_maker(name: str, structure, spec, oracle: str, tconfig):
  def make(hyper):
    temperature = hyper['temperature']
    return algorithms_lib.make_algorithm(
        name, structure.replace(**{k: v for k, v in hyper.items()
                                   if k != 'temperature'}),
        lm_policy(tconfig, spec.max_length, temperature),
        lm_environment(spec, oracle, tconfig, temperature))
  return make


def lm_maker(config):
  """``make(hyper) -> Algorithm`` of an LM config: the sampled algorithm
  with the transformer policy and the token environment, the swept values
  and the temperature traced (cached per structure)."""
  swept = lm_hyperparameters(config)
  structure = config.algorithm_config().replace(
      **{k: 'swept' for k in swept if k != 'temperature'})
  return _lm_maker(config.algorithm, structure, config.spec(), config.oracle,
                   config.transformer_config())


def reference_params(config):
  """The reference model: the transformer initialized from
  ``model_seed`` (every seed starts from it)."""
  return transformer.init_params(jax.random.PRNGKey(config.model_seed),
                                 config.transformer_config())


def lm_env_params(config, reference=None):
  """The token environment's data with the reference model and its listed
  distribution ``log pi_ref [X, N]``."""
  reference = reference_params(config) if reference is None else reference
  tconfig = config.transformer_config()
  return tokens_lib.token_env_params(
      config.spec(), reference=reference,
      ref_log_prob_fn=lambda ref, x, y: sequence.log_prob(
          tconfig, ref, x, y, config.temperature),
      dtype=jnp.dtype(config.dtype))


def lm_equilibrium(game, beta) -> np.ndarray:
  """``pi*_beta [X, N]`` of the induced game (float64, on the host)."""
  return reference.equilibrium(np.asarray(game.preferences, np.float64),
                               np.asarray(game.ref_policy, np.float64), beta)
