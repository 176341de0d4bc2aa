"""The kinds of run and the run kit's registries: each task's algorithms and
runtime settings come from the algorithm registry, settings are declared
once (in the library's own dataclasses), declared minimums are refused,
the oracle registry serves both language-model tasks, and unused settings
are named from what each algorithm declares it reads."""

import dataclasses

import pytest

from nash_jax import algorithms, experiment, sft
from nash_jax.environments.tokens import TokenEnvSpec
from nash_jax.errors import ConfigError
from nash_jax.policies import POLICY_CLASSES, PolicyConfig
from nash_jax.policies.transformer import TransformerConfig
from nash_jax.settings import check_minimums, settings_of
from nash_jax.tasks import TASKS, oracles, post_train, tabular, token_game


def test_every_kind_of_run_is_a_task():
  assert set(TASKS) == set(algorithms.RUN_KINDS)
  for name, task in TASKS.items():
    assert task.name == name
    assert task.settings().algorithm in task.algorithms


def test_each_task_runs_the_algorithms_whose_entry_lists_it():
  assert tabular.TASK.algorithms == algorithms.ALL_ALGORITHM_NAMES
  assert token_game.TASK.algorithms == tuple(algorithms.SAMPLED_ALGORITHMS)
  # bt_rlhf needs a reward model, which a checkpoint run does not have.
  assert 'bt_rlhf' not in post_train.TASK.algorithms
  assert set(post_train.TASK.algorithms) == (
      set(algorithms.SAMPLED_ALGORITHMS) - {'bt_rlhf'})
  with pytest.raises(ConfigError, match="^--algorithm: 'omd' does not run "
                     'on the token game'):
    experiment.validate(token_game.TASK, token_game.TokenGameConfig(
        algorithm='omd', output_dir='unused'))
  with pytest.raises(ConfigError, match="^--algorithm: unknown algorithm"):
    experiment.validate(tabular.TASK, tabular.TabularConfig(algorithm='x'))


def test_runtime_settings_come_from_what_the_algorithms_read():
  for spec in {**algorithms.ALGORITHMS,
               **algorithms.SAMPLED_ALGORITHMS}.values():
    assert set(spec.sweepable) <= spec.reads
    assert set(spec.sweepable) <= set(algorithms.RUNTIME_SETTINGS)
  assert tabular.TASK.sweep_names() == algorithms.RUNTIME_SETTINGS
  # inner_eta is read by proximal_point only, an exact algorithm.
  assert token_game.TASK.sweep_names() == ('beta', 'eta', 'learning_rate',
                                           'anchor_tau', 'mixture')
  # A checkpoint run has no sweep, but its step takes the same runtime
  # values (and the temperature) as the token game's.
  assert post_train.TASK.sweep_names() == ()
  config = post_train.PostTrainConfig(eta=1.0, learning_rate=0.1)
  assert post_train.TASK.runtime_names(config) == (
      'beta', 'eta', 'learning_rate', 'anchor_tau', 'mixture', 'temperature')


def test_settings_are_declared_once_in_the_library_dataclasses():
  fields = {f.name: f for f in dataclasses.fields(token_game.TokenGameConfig)}
  # The help text is the library field's own (one declaration).
  for library, names in ((TokenEnvSpec, {'seed': 'prompt_seed'}),
                         (TransformerConfig, {}),
                         (sft.Writer, {'stop': 'corpus_stop',
                                       'topic': 'corpus_topic'})):
    for f in settings_of(library):
      flat = names.get(f.name, f.name)
      assert fields[flat].metadata['help'] == f.metadata['help'], flat
  config = token_game.TokenGameConfig(prompt_seed=5, corpus_stop=0.4,
                                      d_model=16, num_layers=3)
  assert config.spec() == TokenEnvSpec(seed=5)
  assert config.writer() == sft.Writer(stop=0.4)
  tconfig = config.transformer_config()
  assert (tconfig.d_model, tconfig.num_layers, tconfig.vocab_size) == (
      16, 3, TokenEnvSpec().vocab_size + 3)
  # The binary's own defaults (given at composition) differ from the
  # library's.
  assert token_game.TokenGameConfig().d_model == 64
  assert TransformerConfig(vocab_size=7).d_model == 32
  # TransformerConfig's fields that are not settings are fixed by the
  # composition (the vocabulary comes from the game, the dtype from
  # --dtype); vocab_size is the token game's.
  assert fields['vocab_size'].metadata['help'] == TokenEnvSpec.\
      __dataclass_fields__['vocab_size'].metadata['help']
  assert 'param_dtype' not in fields and 'rope_scaling' not in fields


def test_declared_minimums_are_refused():
  check_minimums(tabular.TabularConfig())
  for name, value in (('num_steps', 0), ('num_actions', 1),
                      ('checkpoint_every', -1), ('seed_block', 0)):
    with pytest.raises(ConfigError, match=f'^--{name}: must be >= '):
      check_minimums(tabular.TabularConfig(**{name: value}))
  # A composition's own bound: a checkpoint run samples at least once.
  check_minimums(token_game.TokenGameConfig(num_samples=0))
  with pytest.raises(ConfigError, match='^--num_samples: must be >= 1'):
    check_minimums(post_train.PostTrainConfig(num_samples=0))


def test_unused_settings_follow_what_each_algorithm_reads():
  base = tabular.TabularConfig()
  assert experiment.unused_by(base, 'outcome') == '--mode=exact'
  sampled = base.replace(mode='sampled')
  for name, spec in algorithms.SAMPLED_ALGORITHMS.items():
    config = sampled.replace(algorithm=name)
    assert experiment.unused_by(config, 'outcome') is None
    for setting in ('anchor', 'mixture', 'offline_pairs', 'reward_steps'):
      who = experiment.unused_by(config, setting)
      assert (who is None) == (setting in spec.reads), (name, setting)


def test_policy_classes_declare_their_defaults():
  assert PolicyConfig().policy in POLICY_CLASSES
  for name, policy in POLICY_CLASSES.items():
    config = algorithms.AlgorithmConfig(mode='sampled')
    optimizer = 'adam' if policy.shared_parameters else 'sgd'
    resolved = algorithms.resolve_config('nash_prox', config, 2, 4, name)
    assert resolved.optimizer == optimizer, name
    if optimizer == 'adam':
      assert resolved.learning_rate == policy.adam_learning_rate


def test_the_oracle_registry_serves_both_language_model_runs(tmp_path):
  assert oracles.oracle_names('token_game') == ('annotators', 'learned',
                                                'judge')
  assert oracles.oracle_names('post_train') == ('judge',)
  # The flag's help lists the registry's oracles.
  help_text = token_game.TokenGameConfig.__dataclass_fields__[
      'train_oracle'].metadata['help']
  for name in oracles.oracle_names('token_game'):
    assert f'{name}: {oracles.ORACLES[name].help}' in help_text
  with pytest.raises(ConfigError, match="^--train_oracle: unknown oracle"):
    experiment.validate(token_game.TASK, token_game.TokenGameConfig(
        train_oracle='reward_model', output_dir=str(tmp_path / 'out')))
  # The annotators are the environment's own ground truth: no oracle.
  assert oracles.build('annotators', 'token_game', None, None, None,
                       None) is None
