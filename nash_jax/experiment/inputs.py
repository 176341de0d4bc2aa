"""The inputs of a tabular run (second stage of :mod:`nash_jax.experiment`):
per-seed keys, the games, their exact references (``pi*_beta``), and the
algorithm built from its config, policy class and environment.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import algorithms as algorithms_lib
from nash_jax import policies as policies_lib
from nash_jax import preference_models, reference, sft
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.algorithms.reward_based import table_reward_model
from nash_jax.environments import tokens as tokens_lib
from nash_jax.environments.tabular import make_tabular_environment
from nash_jax.experiment.config import (
  ExperimentConfig,
  hyperparameters,
  lm_compute_dtype,
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
      name, structure.replace(**hyper), policy_fn, env,
      reward_model=table_reward_model())


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


def lm_policy(tconfig, max_length: int, temperature,
              ids: sequence.TokenIds | None = None) -> policies_lib.Policy:
  """The transformer policy (``temperature`` may be traced) with the special
  token ids ``ids`` (``None``: the synthetic ones), counting the tokens it
  generates (every sampled token through the end token) for the cost."""
  policy = sequence.make_sequence_policy(tconfig, max_length, temperature,
                                         ids)
  mask_ids = sequence.SYNTHETIC_IDS if ids is None else ids
  return policy._replace(num_tokens=lambda y: jnp.sum(
      sequence.response_mask(y, mask_ids), dtype=jnp.int32))


def lm_environment(spec, oracle: str, tconfig, temperature):
  """The token environment; the reference model scores responses at the
  policy's ``temperature`` (pi_ref is the initial policy)."""
  return tokens_lib.make_token_environment(
      spec, lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y,
                                                temperature), oracle)


def lm_reward_model(spec):
  """``bt_rlhf``'s reward model in the token game: a table over the listed
  responses (the most expressive Bradley-Terry model)."""
  return table_reward_model(
      tokens_lib.num_responses(spec.vocab_size, spec.max_length),
      lambda y: tokens_lib.response_index(y, spec.vocab_size,
                                          spec.max_length))


def oracle_transformer_config(config) -> transformer.TransformerConfig:
  """The learned preference model's or the judge's architecture: width
  ``oracle_d_model``, ``oracle_num_layers`` blocks, 2 heads, SwiGLU width
  ``2 oracle_d_model``, the policy's vocabulary and dtype."""
  return transformer.TransformerConfig(
      vocab_size=tokens_lib.model_vocab_size(config.vocab_size),
      d_model=config.oracle_d_model, num_layers=config.oracle_num_layers,
      num_heads=2, num_kv_heads=2, mlp_dim=2 * config.oracle_d_model,
      param_dtype=config.dtype)


def training_oracle(config, env_params, reference,
                    log: Callable[[str], None] = lambda line: None):
  """The oracle that answers training queries, or ``None`` for the
  ground-truth annotators (``train_oracle``). Returns ``(oracle, params,
  report)``.

  ``learned``: a pairwise preference model (:func:`nash_jax.
  preference_models.make_pairwise_model`) fitted to ``oracle_pairs``
  ground-truth comparisons of two pi_ref samples per prompt (labels as
  ``--oracle`` says: Bernoulli or the probability), its accuracy and
  log-loss measured on ``oracle_held_out`` more (:func:`~nash_jax.
  preference_models.evaluate_fit`); both cost ground-truth queries, which
  the report counts. ``judge``: :func:`~nash_jax.preference_models.
  make_judge` with a random transformer from ``oracle_seed`` and the
  synthetic template (mechanics only: an untrained judge says about 1/2).
  """
  if config.train_oracle == 'annotators':
    return None
  ocfg = oracle_transformer_config(config)
  key = jax.random.PRNGKey(config.oracle_seed)
  init_key, data_key, fit_key = jax.random.split(key, 3)
  if config.train_oracle == 'judge':
    params = transformer.init_params(init_key, ocfg)
    oracle = preference_models.make_judge(
        ocfg, preference_models.synthetic_judge_template(config.vocab_size))
    return oracle, params, {'train_oracle': 'judge', 'ground_truth_queries':
                            0, 'oracle_seed': config.oracle_seed}
  log(f'[{config.algorithm}] fitting the learned preference model to '
      f'{config.oracle_pairs} ground-truth comparisons')
  spec = config.spec()
  policy = lm_policy(config.transformer_config(), spec.max_length,
                     config.temperature)
  truth = preference_models.annotator_oracle()
  train, held = preference_models.make_comparisons(
      data_key, functools.partial(tokens_lib.sample_contexts, env_params),
      lambda k, x: policy.sample(k, reference, x), truth,
      preference_models.annotator_params(env_params), config.oracle_pairs,
      config.oracle_held_out, config.oracle)
  model = preference_models.make_pairwise_model(ocfg)
  params = preference_models.fit(
      fit_key, model, model.init(init_key), train.pairs, train.labels,
      config.oracle_steps, config.oracle_batch_size,
      config.oracle_learning_rate)
  report = {'train_oracle': 'learned', 'model': 'pairwise',
            'ground_truth_queries': config.oracle_pairs +
            config.oracle_held_out, 'oracle_pairs': config.oracle_pairs,
            'oracle_held_out': config.oracle_held_out,
            'oracle_steps': config.oracle_steps}
  if config.oracle_held_out:
    fitted = preference_models.evaluate_fit(model.oracle(), params,
                                            held.pairs, held.probabilities)
    report['held_out'] = {k: float(v) for k, v in fitted.items()}
    log(f'[{config.algorithm}] learned preference model: held-out '
        f'accuracy {report["held_out"]["accuracy"]:.3f}, excess log-loss '
        f'{report["held_out"]["excess_log_loss"]:.4f}')
  return model.oracle(), params, report


@functools.lru_cache(maxsize=16)
def _lm_maker(name: str, structure, spec, oracle: str, tconfig):
  def make(hyper):
    temperature = hyper['temperature']
    return algorithms_lib.make_algorithm(
        name, structure.replace(**{k: v for k, v in hyper.items()
                                   if k != 'temperature'}),
        lm_policy(tconfig, spec.max_length, temperature),
        lm_environment(spec, oracle, tconfig, temperature),
        reward_model=lm_reward_model(spec))
  return make


def lm_maker(config, oracle=None):
  """``make(hyper) -> Algorithm`` of an LM config: the sampled algorithm
  with the transformer policy and the token environment, the swept values
  and the temperature traced (cached per structure). ``oracle``: the
  ``(oracle, params, report)`` of :func:`training_oracle`, which then
  answers the training queries (not cached)."""
  swept = lm_hyperparameters(config)
  structure = config.algorithm_config().replace(
      **{k: 'swept' for k in swept if k != 'temperature'})
  make = _lm_maker(config.algorithm, structure, config.spec(), config.oracle,
                   config.transformer_config())
  if oracle is None:
    return make
  spec, tconfig = config.spec(), config.transformer_config()

  def make_with_oracle(hyper):
    temperature = hyper['temperature']
    env = preference_models.with_oracle(
        lm_environment(spec, config.oracle, tconfig, temperature),
        oracle[0], oracle[1], config.oracle)
    return algorithms_lib.make_algorithm(
        config.algorithm, structure.replace(**{
            k: v for k, v in hyper.items() if k != 'temperature'}),
        lm_policy(tconfig, spec.max_length, temperature), env,
        reward_model=lm_reward_model(spec))
  return make_with_oracle


def reference_params(config):
  """The reference model (every seed starts from it): the transformer
  initialized from ``model_seed``, then fine-tuned for ``sft_steps`` on the
  writer's corpus (:func:`reference_model`)."""
  return reference_model(config)[0]


def reference_model(config, log: Callable[[str], None] = lambda line: None):
  """``(params, report)``: the reference model and, after SFT, what it
  achieved (``None`` without SFT).

  The transformer is initialized from ``PRNGKey(model_seed)``; with
  ``sft_steps > 0`` it is fine-tuned (:func:`nash_jax.sft.fit`, batches
  from ``fold_in(PRNGKey(model_seed), 1)``) on the writer's corpus at the
  policy's temperature, so that the tempered pi_ref fits the corpus. The
  report holds the settings, the corpus entropy ``H(q)``, the exact
  ``KL(q || pi_ref)`` before and after (listed responses, averaged under
  ``rho``) and the loss curve (at most 100 points, each a mean over its
  steps).
  """
  tconfig = config.transformer_config()
  key = jax.random.PRNGKey(config.model_seed)
  params = transformer.init_params(key, tconfig)
  if config.sft_steps == 0:
    return params, None
  spec, writer = config.spec(), config.writer()
  log(f'[{config.algorithm}] supervised fine-tuning of the reference: '
      f'{config.sft_steps} steps of {config.sft_batch_size} corpus responses')
  env = tokens_lib.token_env_params(spec, dtype=lm_compute_dtype(config))
  temperature = config.temperature
  log_prob = lambda p, x, y: sequence.log_prob(tconfig, p, x, y, temperature)
  sample = sft.writer_sampler(writer, env, spec.max_length, spec.vocab_size)
  tuned, losses = sft.fit(jax.random.fold_in(key, 1), log_prob, params,
                          sample, config.sft_steps, config.sft_batch_size,
                          config.sft_learning_rate)
  log_q = sft.writer_log_policy(writer, env, spec.vocab_size)

  def kl(p):
    log_pi = tokens_lib.listed_log_probs(log_prob, p, env)
    return float(sft.corpus_kl(log_q, log_pi, env.context_weights))

  report = {
      'sft_steps': config.sft_steps, 'sft_batch_size': config.sft_batch_size,
      'sft_learning_rate': config.sft_learning_rate,
      'corpus': dataclasses.asdict(writer),
      'corpus_entropy': -float(jnp.sum(env.context_weights * jnp.sum(
          jnp.where(log_q > -jnp.inf, jnp.exp(log_q) * log_q, 0.0), -1))),
      'kl_corpus_to_reference_before': kl(params),
      'kl_corpus_to_reference_after': kl(tuned),
      'loss': sft.loss_curve(losses)}
  log(f'[{config.algorithm}] SFT: KL(corpus || pi_ref) '
      f'{report["kl_corpus_to_reference_before"]:.4f} -> '
      f'{report["kl_corpus_to_reference_after"]:.4f} (corpus entropy '
      f'{report["corpus_entropy"]:.4f})')
  return tuned, report


def lm_env_params(config, reference=None):
  """The token environment's data with the reference model and its listed
  distribution ``log pi_ref [X, N]``."""
  reference = reference_params(config) if reference is None else reference
  tconfig = config.transformer_config()
  return tokens_lib.token_env_params(
      config.spec(), reference=reference,
      ref_log_prob_fn=lambda ref, x, y: sequence.log_prob(
          tconfig, ref, x, y, config.temperature),
      dtype=lm_compute_dtype(config))


def lm_equilibrium(game, beta) -> np.ndarray:
  """``pi*_beta [X, N]`` of the induced game (float64, on the host)."""
  return reference.equilibrium(np.asarray(game.preferences, np.float64),
                               np.asarray(game.ref_policy, np.float64), beta)
