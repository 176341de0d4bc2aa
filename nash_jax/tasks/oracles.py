"""The registry of preference oracles: who answers a run's training queries.

Every entry is an :class:`OracleKind`: its name (the value of the setting
that chooses it), what it is, and one builder per kind of run that offers
it. A builder returns a :class:`BuiltOracle`, a
:class:`~nash_jax.oracles.PreferenceOracle` (a pure function of its
parameters) with its parameters and a report, or ``None`` where the
environment's own ground truth answers. The parameters always travel in
the environment data (``env_params.oracle``, see
:func:`nash_jax.oracles.with_oracle` and :mod:`nash_jax.environments.text`):
arguments of the compiled step, never constants, in every kind of run.

Builders by kind of run:

* ``token_game``: ``(config, env_params, reference_params, log)``: the
  token environment's data (with the listed reference), the reference
  model and a log;
* ``post_train``: ``(config, loaded, log)``: what validation read from disk
  (:class:`nash_jax.tasks.post_train.Loaded`).

Adding an oracle: its model in :mod:`nash_jax.oracles`, one entry here with
a builder for each kind of run that offers it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax

from nash_jax import oracles as oracles_lib
from nash_jax.environments import tokens as tokens_lib
from nash_jax.policies import transformer
from nash_jax.policies.transformer import TransformerConfig
from nash_jax.tasks import language_model as lm


class BuiltOracle(NamedTuple):
  """An oracle ready for a run: the pure function, its parameters (the
  environment data's ``oracle``) and what building it cost and measured
  (``oracle.json``)."""

  oracle: oracles_lib.PreferenceOracle
  params: Any
  report: dict


@dataclasses.dataclass(frozen=True)
class OracleKind:
  """One oracle of the registry.

  Attributes:
    name: the setting's value that chooses it.
    help: what it is, for ``--help`` and the README.
    build: ``{run kind: builder}`` (see the module docstring).
  """

  name: str
  help: str
  build: dict[str, Callable]

  @property
  def runs(self) -> tuple[str, ...]:
    """The kinds of run that offer it."""
    return tuple(self.build)


def oracle_transformer_config(config) -> TransformerConfig:
  """The token game's learned preference model's or judge's architecture:
  width ``oracle_d_model``, ``oracle_num_layers`` blocks, 2 heads, SwiGLU
  width ``2 oracle_d_model``, the policy's vocabulary and dtype."""
  return TransformerConfig(
      vocab_size=tokens_lib.model_vocab_size(config.vocab_size),
      d_model=config.oracle_d_model, num_layers=config.oracle_num_layers,
      num_heads=2, num_kv_heads=2, mlp_dim=2 * config.oracle_d_model,
      param_dtype=config.dtype)


def _oracle_keys(config):
  """``(init, data, fit)`` keys from ``oracle_seed``."""
  return jax.random.split(jax.random.PRNGKey(config.oracle_seed), 3)


def _token_annotators(config, env_params, reference_params, log):
  """The token game's ground truth answers (no oracle of its own)."""
  del config, env_params, reference_params, log
  return None


def _token_learned(config, env_params, reference_params, log) -> BuiltOracle:
  """A pairwise preference model (:func:`nash_jax.oracles.
  make_pairwise_model`) fitted to ``oracle_pairs`` ground-truth comparisons
  of two pi_ref samples per prompt (labels as ``--outcome`` says: Bernoulli
  or the probability), its accuracy and log-loss measured on
  ``oracle_held_out`` more (:func:`~nash_jax.oracles.evaluate_fit`); both
  cost ground-truth queries, which the report counts."""
  ocfg = oracle_transformer_config(config)
  init_key, data_key, fit_key = _oracle_keys(config)
  log(f'[{config.algorithm}] fitting the learned preference model to '
      f'{config.oracle_pairs} ground-truth comparisons')
  spec = config.spec()
  policy = lm.sequence_policy(config.transformer_config(), spec.max_length,
                              config.temperature)
  truth = oracles_lib.annotator_oracle()
  train, held = oracles_lib.make_comparisons(
      data_key, functools.partial(tokens_lib.sample_contexts, env_params),
      lambda k, x: policy.sample(k, reference_params, x), truth,
      oracles_lib.annotator_params(env_params), config.oracle_pairs,
      config.oracle_held_out, config.outcome)
  model = oracles_lib.make_pairwise_model(ocfg)
  params = oracles_lib.fit(
      fit_key, model, model.init(init_key), train.pairs, train.labels,
      config.oracle_steps, config.oracle_batch_size,
      config.oracle_learning_rate)
  report = {'train_oracle': 'learned', 'model': 'pairwise',
            'ground_truth_queries': config.oracle_pairs +
            config.oracle_held_out, 'oracle_pairs': config.oracle_pairs,
            'oracle_held_out': config.oracle_held_out,
            'oracle_steps': config.oracle_steps}
  if config.oracle_held_out:
    fitted = oracles_lib.evaluate_fit(model.oracle(), params, held.pairs,
                                      held.probabilities)
    report['held_out'] = {k: float(v) for k, v in fitted.items()}
    log(f'[{config.algorithm}] learned preference model: held-out '
        f'accuracy {report["held_out"]["accuracy"]:.3f}, excess log-loss '
        f'{report["held_out"]["excess_log_loss"]:.4f}')
  return BuiltOracle(model.oracle(), params, report)


def _token_judge(config, env_params, reference_params, log) -> BuiltOracle:
  """:func:`~nash_jax.oracles.make_judge` with a random transformer from
  ``oracle_seed`` and the synthetic template (mechanics only: an untrained
  judge says about 1/2)."""
  del env_params, reference_params, log
  ocfg = oracle_transformer_config(config)
  init_key, _, _ = _oracle_keys(config)
  params = transformer.init_params(init_key, ocfg)
  oracle = oracles_lib.make_judge(
      ocfg, oracles_lib.synthetic_judge_template(config.vocab_size))
  return BuiltOracle(oracle, params, {
      'train_oracle': 'judge', 'ground_truth_queries': 0,
      'oracle_seed': config.oracle_seed})


def _checkpoint_judge(config, loaded, log) -> BuiltOracle:
  """The judge read from disk (``--judge_dir``, default the checkpoint
  itself) with its template; its parameters are the loaded weights (a
  judge that is the checkpoint shares their buffers)."""
  del log
  ids, judge = loaded.info.token_ids, loaded.judge
  oracle = oracles_lib.make_judge(judge.config, judge.template,
                                  eos_id=ids.eos, pad_id=ids.pad)
  return BuiltOracle(oracle, judge.params, {
      'oracle': 'judge', 'judge_dir': judge.model_dir,
      'template_file': config.judge_template,
      'template_ids': judge.template._asdict(), 'outcome': config.outcome})


ORACLES: dict[str, OracleKind] = {
    'annotators': OracleKind(
        'annotators', 'the token game\'s annotator population, the ground '
        'truth', {'token_game': _token_annotators}),
    'learned': OracleKind(
        'learned', 'a pairwise preference model fitted to --oracle_pairs '
        'ground-truth comparisons of pi_ref samples',
        {'token_game': _token_learned}),
    'judge': OracleKind(
        'judge', 'a language model asked which response is better (the '
        'token game: a random transformer from --oracle_seed, which '
        'exercises the mechanics only; a checkpoint run: --judge_dir)',
        {'token_game': _token_judge, 'post_train': _checkpoint_judge}),
}


def oracle_names(run: str) -> tuple[str, ...]:
  """The oracles a kind of run offers, in registry order."""
  return tuple(name for name, kind in ORACLES.items() if run in kind.runs)


def build(name: str, run: str, *args) -> BuiltOracle | None:
  """The oracle ``name`` built for a ``run`` kind (its builder's
  arguments ``args``)."""
  return ORACLES[name].build[run](*args)
