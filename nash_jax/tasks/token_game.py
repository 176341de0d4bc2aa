"""The listable token game with a transformer policy (``experiments.lm``).

The reference pi_ref is a transformer drawn from ``--model_seed`` (after
SFT on the writer's corpus, if asked); every seed starts from it and is
trained by a sampled algorithm against the token environment
(:mod:`nash_jax.environments.tokens`). Because every response of at most
``--max_length`` tokens is listed, the metrics are exact: KL to
``pi*_beta`` of the induced game, the duality gap, exploitability.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nash_jax import evaluation, oracles, reference, sft
from nash_jax import io as io_lib
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.algorithms.reward_based import table_reward_model
from nash_jax.environments import tokens as tokens_lib
from nash_jax.environments.tokens import TokenEnvSpec
from nash_jax.errors import ConfigError
from nash_jax.experiment import checks
from nash_jax.experiment import run as experiment_run
from nash_jax.experiment.results import (
  Results,
  write_results,
  write_samples,
)
from nash_jax.experiment.run import (
  run_cost,
  seed_keys,
  static_settings,
  tile,
)
from nash_jax.experiment.task import OutcomeConfig, RunConfig, RunPlan, Task
from nash_jax.policies import sequence, transformer
from nash_jax.policies.transformer import (
  TransformerConfig,
  validate_transformer_config,
)
from nash_jax.settings import Group, compose, group_of, setting
from nash_jax.tasks import language_model as lm
from nash_jax.tasks import oracles as oracles_registry


@dataclasses.dataclass(frozen=True)
class ModelSeedConfig:
  """Where the reference transformer comes from."""

  model_seed: int = setting(0, 'Seed of the reference model\'s random '
                            'initialization (the policy starts there).',
                            minimum=0)


@dataclasses.dataclass(frozen=True)
class TrainOracleConfig:
  """Which oracle answers training queries (:mod:`nash_jax.oracles`);
  evaluation always uses the ground-truth annotators."""

  train_oracle: str = setting(
      'annotators', 'Oracle of the training queries (nash_jax.tasks.oracles):'
      ' ' + '; '.join(f'{name}: {oracles_registry.ORACLES[name].help}'
                      for name in oracles_registry.oracle_names(
                          'token_game')) +
      '. Evaluation always uses the ground truth.')
  oracle_pairs: int = setting(2048, 'learned: ground-truth comparisons it '
                              'is fitted to (one preference query each).',
                              minimum=1)
  oracle_held_out: int = setting(512, 'learned: held-out ground-truth '
                                 'comparisons its accuracy is measured on.',
                                 minimum=0)
  oracle_steps: int = setting(1000, 'learned: adam steps of its fit.',
                              minimum=0)
  oracle_batch_size: int = setting(64, 'learned: comparisons per fit step.',
                                   minimum=1)
  oracle_learning_rate: float = setting(3e-3, 'learned: adam step size.')
  oracle_d_model: int = setting(32, 'learned, judge: transformer width.',
                                minimum=2)
  oracle_num_layers: int = setting(1, 'learned, judge: transformer blocks.',
                                   minimum=1)
  oracle_seed: int = setting(0, 'learned, judge: seed of the model\'s '
                             'initialization and of its data.', minimum=0)


TokenGameConfig = compose(
    'TokenGameConfig', (
        Group(TokenEnvSpec, names={'seed': 'prompt_seed'}), OutcomeConfig,
        (AlgorithmConfig, lm.EXACT_ONLY), TransformerConfig,
        ModelSeedConfig, lm.SamplingConfig, lm.SFTConfig,
        Group(sft.Writer, names={'stop': 'corpus_stop',
                                 'topic': 'corpus_topic'}),
        TrainOracleConfig, lm.SampleLogConfig, RunConfig, lm.ParallelConfig),
    """Every setting of a token-game run (``experiments.lm``): the flat
    composition of :class:`~nash_jax.environments.tokens.TokenEnvSpec`
    (``seed`` is ``--prompt_seed``), the outcome kind,
    :class:`~nash_jax.algorithms.AlgorithmConfig` (sampled mode), the
    transformer's :class:`~nash_jax.policies.transformer.TransformerConfig`
    and its seed, the temperature, SFT and its corpus writer
    (:class:`nash_jax.sft.Writer`, ``--corpus_stop``, ``--corpus_topic``),
    the training oracle, the samples, the run and its parallel splits.
    ``dtype``: the transformer's parameters and activations (``bfloat16``
    allowed); hyperparameters, the optimizer's state, log-probabilities and
    the exact evaluation stay in at least float32
    (:func:`nash_jax.tasks.language_model.compute_dtype`).""",
    {'algorithm_config': lambda self: group_of(self, AlgorithmConfig),
     'writer': lambda self: group_of(self, sft.Writer),
     'spec': lambda self: group_of(self, TokenEnvSpec),
     'transformer_config': lambda self: group_of(
         self, TransformerConfig,
         vocab_size=tokens_lib.model_vocab_size(self.vocab_size),
         param_dtype=self.dtype),
     '__module__': __name__},
    defaults={'mode': 'sampled', 'algorithm': 'nash_prox', 'num_steps': 2000,
              'eval_every': 100, 'dtype': 'float32', 'num_seeds': 1,
              'output_dir': 'results/lm', 'checkpoint_every': 500,
              'd_model': 64, 'mlp_dim': 128})


# --------------------------------------------------------------- validation


def validate(config):
  """The token game's checks (after the kit's shared ones); returns
  ``(config, None)``.

  Raises:
    ConfigError: naming the flag.
  """
  config = lm.check_language_model(config)
  sft.check_writer(config.writer(), config.vocab_size)
  checks.check_choice(config, 'train_oracle',
                      oracles_registry.oracle_names('token_game'), 'oracle')
  checks.check_positive_number(config, 'oracle_learning_rate')
  if config.train_oracle != 'annotators' and config.oracle_d_model % 4:
    raise ConfigError('oracle_d_model', f'must be a multiple of 4 (2 heads '
                      f'of even size), got {config.oracle_d_model}')
  tokens_lib.check_spec(config.spec())
  validate_transformer_config(config.transformer_config())
  lm.check_model_parallel(config, config.transformer_config())
  if config.model_parallel == 1:
    config = config.replace(model_parallel=None)
  alg_config = checks.resolve_algorithm(config, config.num_prompts, 1,
                                        'transformer')
  # A transformer policy: 1 on every backend (the rule does not read n).
  config = checks.resolve_seed_block(config, True, None, language_model=True)
  return checks.resolve_run(config, alg_config), None


# ------------------------------------------------------------------ inputs


def environment(spec, outcome: str, tconfig, temperature):
  """The token environment; the reference model scores responses at the
  policy's ``temperature`` (pi_ref is the initial policy)."""
  return tokens_lib.make_token_environment(
      spec, lambda ref, x, y: sequence.log_prob(tconfig, ref, x, y,
                                                temperature), outcome)


def reward_model(spec):
  """``bt_rlhf``'s reward model in the token game: a table over the listed
  responses (the most expressive Bradley-Terry model)."""
  return table_reward_model(
      tokens_lib.num_responses(spec.vocab_size, spec.max_length),
      lambda y: tokens_lib.response_index(y, spec.vocab_size,
                                          spec.max_length))


@functools.lru_cache(maxsize=16)
def _components(spec, outcome: str, tconfig, oracle):
  """``hyper -> (policy, environment, reward model, values)``: the
  transformer at the traced temperature and the token environment, whose
  training queries ``oracle`` answers (its parameters in the environment
  data, ``TokenEnvParams.oracle``; None: the annotators)."""

  def components(hyper):
    values, temperature = lm.split_hyper(hyper)
    env = environment(spec, outcome, tconfig, temperature)
    if oracle is not None:
      env = oracles.with_oracle(env, oracle, outcome)
    return (lm.sequence_policy(tconfig, spec.max_length, temperature), env,
            reward_model(spec), values)
  return components


def algorithm_maker(config, oracle: oracles.PreferenceOracle | None = None):
  """``make(hyper) -> Algorithm`` of a token-game config: the sampled
  algorithm with the transformer policy and the token environment, the
  runtime values and the temperature traced (cached per structure).
  ``oracle``: the oracle that answers the training queries; None: the
  annotators."""
  return experiment_run.algorithm_maker(
      config.algorithm, static_settings(config.algorithm_config(),
                                        TASK.runtime_names(config)),
      _components(config.spec(), config.outcome, config.transformer_config(),
                  oracle))


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
  env = tokens_lib.token_env_params(spec, dtype=lm.compute_dtype(config))
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


def env_params_of(config, reference_params=None):
  """The token environment's data with the reference model and its listed
  distribution ``log pi_ref [X, N]``."""
  if reference_params is None:
    reference_params = reference_model(config)[0]
  tconfig = config.transformer_config()
  return tokens_lib.token_env_params(
      config.spec(), reference=reference_params,
      ref_log_prob_fn=lambda ref, x, y: sequence.log_prob(
          tconfig, ref, x, y, config.temperature),
      dtype=lm.compute_dtype(config))


def equilibrium(game, beta) -> np.ndarray:
  """``pi*_beta [X, N]`` of the induced game (float64, on the host)."""
  return reference.equilibrium(np.asarray(game.preferences, np.float64),
                               np.asarray(game.ref_policy, np.float64), beta)


@functools.lru_cache(maxsize=16)
def _env_of(spec, outcome, tconfig):
  return lambda hyper: environment(spec, outcome, tconfig,
                                   hyper['temperature'])


@functools.lru_cache(maxsize=16)
def _final_log_policy(make, env_of, shared: bool):
  """Jitted ``log pi [S, X, N]`` of every run's final state."""
  def one(hyper, state, env_params):
    return env_of(hyper).log_policy(make(hyper).policy, state.params,
                                    env_params)
  return jax.jit(jax.vmap(one, in_axes=(0, 0, None if shared else 0)))


# --------------------------------------------------------------------- run


@dataclasses.dataclass
class TokenGameResults(Results):
  """A token-game run: :class:`~nash_jax.experiment.results.Results`
  (``final_policy [S, X, N]`` over the listed responses) plus the induced
  exact game, the listed responses ``[N, L]`` and the prompts ``[X, P]``
  (with their mask)."""

  game: Any = None
  reference_report: dict | None = None
  oracle_report: dict | None = None
  responses: np.ndarray | None = None
  prompts: np.ndarray | None = None
  prompt_mask: np.ndarray | None = None


def plan(configs, inputs, log) -> RunPlan:
  """The reference model (``model_seed``), its listed distribution and the
  induced exact game are built once; ``pi*_beta`` is solved once per
  ``beta`` by the reference solver; the training oracle is built (or
  fitted); then the trainer's arguments."""
  del inputs
  config = configs[0]
  num_cells, num_seeds = len(configs), config.num_seeds
  spec = config.spec()
  log(f'[{config.algorithm}] token game: {spec.num_prompts} prompts, '
      f'{tokens_lib.num_responses(spec.vocab_size, spec.max_length)} '
      f'responses each; listing the reference model')
  reference_params, reference_report = reference_model(config, log)
  env_params = env_params_of(config, reference_params)
  game = jax.tree.map(lambda a: np.asarray(a, np.float64),
                      tokens_lib.game_of(env_params))
  solved = {}
  for c in configs:
    if c.beta not in solved:
      log(f'[{config.algorithm}] solving pi*_beta at beta={c.beta:g}')
      solved[c.beta] = equilibrium(game, c.beta)
  # Hyperparameters and the exact evaluation in at least float32 (a
  # bfloat16 run has only its transformer in bfloat16).
  dtype = lm.compute_dtype(config)
  eval_game = jax.tree.map(lambda a: jnp.asarray(a, dtype), game)
  shared = len(solved) == 1
  with np.errstate(divide='ignore'):
    log_eq = {b: np.log(e) for b, e in solved.items()}
  if shared:
    eval_data = evaluation.ListedEval(eval_game, jnp.asarray(
        log_eq[config.beta], dtype))
  else:
    eval_data = evaluation.ListedEval(
        jax.tree.map(lambda a: np.broadcast_to(
            np.asarray(a), (num_cells * num_seeds,) + a.shape), eval_game),
        np.repeat(np.stack([log_eq[c.beta] for c in configs]), num_seeds,
                  axis=0).astype(dtype))
    env_params = jax.tree.map(lambda a: np.broadcast_to(
        np.asarray(a), (num_cells * num_seeds,) + np.shape(a)), env_params)
  trained_oracle = oracles_registry.build(
      config.train_oracle, 'token_game', config, env_params,
      reference_params, log)
  if trained_oracle is not None:
    # The oracle's parameters travel in the environment data, one copy for
    # every run (the trainer maps over runs where the data is per run).
    params = trained_oracle.params
    if not shared:
      params = jax.tree.map(lambda a: np.broadcast_to(
          np.asarray(a), (num_cells * num_seeds,) + np.shape(a)), params)
    env_params = env_params.replace(oracle=params)
  make = algorithm_maker(config, None if trained_oracle is None
                         else trained_oracle.oracle)
  hyper = {k: np.repeat(np.asarray([TASK.hyperparameters(c)[k]
                                    for c in configs], dtype), num_seeds)
           for k in TASK.hyperparameters(config)}
  _, run_keys = seed_keys(config)
  env_of = _env_of(spec, config.outcome, config.transformer_config())
  evaluate = evaluation.listed_evaluator(make, env_of, config.num_samples)
  return RunPlan(make, evaluate, tile(run_keys, num_cells), env_params,
                 eval_data, hyper, shared=shared,
                 context=dict(env_of=env_of, game=game, solved=solved,
                              reference_report=reference_report,
                              oracle=trained_oracle))


def collect(configs, plan_: RunPlan, state, rows, start: float):
  """One :class:`TokenGameResults` per cell."""
  config, ctx = configs[0], plan_.context
  spec = config.spec()
  final = _final_log_policy(plan_.make, ctx['env_of'], plan_.shared)(
      plan_.hyper, state, plan_.env_params)
  final_policy = np.exp(np.asarray(final, np.float64))
  final_policy /= final_policy.sum(-1, keepdims=True)
  wall = time.time() - start
  cost = run_cost(plan_.make, plan_.hyper, state, plan_.env_params,
                  plan_.shared, config.num_steps, wall)
  prompts, prompt_mask = tokens_lib.make_prompts(spec)
  responses = np.asarray(tokens_lib.list_responses(
      spec.vocab_size, spec.max_length, spec.max_responses))
  num_seeds = config.num_seeds
  results = []
  for i, c in enumerate(configs):
    cut = slice(i * num_seeds, (i + 1) * num_seeds)
    solved = ctx['solved'][c.beta]
    results.append(TokenGameResults(
        c, [{k: v[cut] for k, v in row.items()} for row in rows],
        final_policy[cut],
        np.asarray(np.broadcast_to(solved, (num_seeds,) + solved.shape)),
        wall, cost, game=ctx['game'], responses=responses,
        reference_report=ctx['reference_report'],
        oracle_report=None if ctx['oracle'] is None else ctx['oracle'].report,
        prompts=np.asarray(prompts), prompt_mask=np.asarray(prompt_mask)))
  return results


# ------------------------------------------------------------------ results


def decode(tokens, mask=None) -> str:
  """Readable text of token ids: content token ``3 + i`` is the letter
  ``'a' + i``, BOS ``<s>``, EOS ``</s>`` (and nothing after it), padding
  (or masked tokens) skipped."""
  words = []
  for i, t in enumerate(np.asarray(tokens).tolist()):
    if mask is not None and not mask[i]:
      continue
    if t == tokens_lib.PAD:
      continue
    if t == tokens_lib.BOS:
      words.append('<s>')
    elif t == tokens_lib.EOS:
      words.append('</s>')
      break
    else:
      words.append(chr(ord('a') + t - tokens_lib.FIRST_CONTENT))
  return ' '.join(words)


def sample_records(results: TokenGameResults):
  """One ``samples.jsonl`` record per evaluation, seed and sample: the
  step, seed, prompt (index and text), response text, its length in
  content tokens, whether it ended with EOS and its log-probability."""
  config = results.config
  for row in results.rows:
    if 'samples' not in row:
      continue
    step = int(row['step'][0])
    for i in range(config.num_seeds):
      for j, (y, lp) in enumerate(zip(row['samples'][i],
                                      row['sample_log_prob'][i])):
        x = j // config.num_samples
        tokens = np.asarray(y).tolist()
        length = next((k for k, t in enumerate(tokens)
                       if t < tokens_lib.FIRST_CONTENT), len(tokens))
        yield {'step': step, 'seed': config.seed + i, 'prompt_index': x,
               'prompt': decode(results.prompts[x], results.prompt_mask[x]),
               'response': decode(y), 'length': length,
               'eos': length < len(tokens) and tokens[length] ==
               tokens_lib.EOS, 'log_prob': float(lp)}


def write(results: TokenGameResults, output_dir: str | None = None):
  """Writes a token-game run: the files of :func:`~nash_jax.experiment.
  results.write_results` (``final_policy.npy`` and ``equilibrium.npy`` are
  ``[S, X, N]`` over the listed responses) and samples.jsonl,
  responses.npy ``[N, L]``, game.npz (the induced game in the game-file
  format: ``preferences``, ``ref_policy``, ``context_weights``), after SFT
  of the reference reference.json (:func:`reference_model`) and, with a
  learned oracle or a judge, oracle.json (:mod:`nash_jax.tasks.oracles`)."""

  def write_game(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, preferences=np.asarray(results.game.preferences,
                                         np.float64),
               ref_policy=np.asarray(results.game.ref_policy, np.float64),
               context_weights=np.asarray(results.game.context_weights,
                                          np.float64))

  def extra(join):
    write_samples(join('samples.jsonl'), sample_records(results))
    io_lib.write_npy(join('responses.npy'), results.responses)
    io_lib.atomic_write(join('game.npz'), write_game)
    if results.reference_report is not None:
      io_lib.write_json(join('reference.json'), results.reference_report)
    if results.oracle_report is not None:
      io_lib.write_json(join('oracle.json'), results.oracle_report)

  write_results(results, output_dir, extra)


def structure(config):
  """What the cells of a sweep share: the algorithm's maker."""
  return algorithm_maker(config)


TASK = Task(name='token_game', what='the token game',
            settings=TokenGameConfig, dtypes=lm.DTYPES, validate=validate,
            plan=plan, collect=collect, write=write, structure=structure,
            runtime=('temperature',))
