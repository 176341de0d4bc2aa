"""The sampled algorithms on a transformer policy in the listable token
game: one implementation of each algorithm, exact gradients over
the listed responses, and the ``experiments.lm`` binary end to end.

* Unbiasedness: each algorithm's per-batch gradient on the transformer's
  parameters (one sgd step with learning rate 1, differenced) averages to
  the exact gradient of the objective it estimates, computed from the
  policy's whole listed distribution and the exact preference tensor, with
  negative controls (as tests/test_sampled.py does for tabular policies).
* Nash Prox with the anchor refreshed every step is online IPO with step
  ``kappa * lr``.
* The binary end to end is in tests/test_lm_binary.py.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  assert_unbiased,
  exact_nash_prox,
  exact_online_ipo,
  exact_prox_pg,
  exact_self_play,
  kl_rho,
  play,
)

from nash_jax import algorithms as algorithms_lib
from nash_jax.algorithms import AlgorithmConfig
from nash_jax.environments import TokenContexts, tokens
from nash_jax.policies import sequence, transformer
from nash_jax.tasks.language_model import sequence_policy as lm_policy
from nash_jax.tasks.token_game import environment as lm_environment

ROOT = Path(__file__).resolve().parents[1]
BETA, ETA = 0.3, 0.5
SPEC = tokens.TokenEnvSpec(vocab_size=2, max_length=2, num_prompts=2,
                           prompt_length=2)
TCONFIG = transformer.TransformerConfig(
    vocab_size=tokens.model_vocab_size(SPEC.vocab_size), d_model=8,
    num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=8,
    param_dtype='float64')
TEMPERATURE = 1.3
NUM_BATCHES = 3000
BATCH = 32


def _env_params(seed=0):
  ref = transformer.init_params(jax.random.PRNGKey(seed), TCONFIG)
  return tokens.token_env_params(
      SPEC, reference=ref, dtype=jnp.float64,
      ref_log_prob_fn=lambda r, x, y: sequence.log_prob(TCONFIG, r, x, y,
                                                        TEMPERATURE))


def _perturbed(params, seed, scale=0.5):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      a + scale * jax.random.normal(k, a.shape, a.dtype)
      for a, k in zip(leaves, keys)])


def _algorithm(name, **kwargs):
  config = AlgorithmConfig(mode='sampled', beta=BETA, learning_rate=1.0,
                           optimizer='sgd', batch_size=BATCH, **kwargs)
  return algorithms_lib.make_algorithm(
      name, config, lm_policy(TCONFIG, SPEC.max_length, TEMPERATURE),
      lm_environment(SPEC, 'bernoulli', TCONFIG, TEMPERATURE))


def _listed(params, env_params):
  """``log pi [X, N]`` of transformer params over the listed responses."""
  policy = lm_policy(TCONFIG, SPEC.max_length, TEMPERATURE)
  return tokens.listed_log_probs(policy.log_prob, params, env_params)


def _param_gradient(logit_gradient, params, env_params):
  """The chain rule through the listed log-policy: ``J^T g``."""
  _, vjp = jax.vjp(lambda p: _listed(p, env_params), params)
  return _flat(vjp(logit_gradient)[0])


def _flat(tree):
  return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def _batch_gradients(algorithm, state, env_params):
  def gradient(key):
    new, _ = algorithm.step(state.replace(key=key), env_params)
    return jax.tree.map(lambda a, b: a - b, state.params, new.params)

  keys = jax.random.split(jax.random.PRNGKey(42), NUM_BATCHES)
  grads = jax.jit(jax.vmap(gradient))(keys)
  return np.concatenate([np.asarray(a).reshape(NUM_BATCHES, -1)
                         for a in jax.tree.leaves(grads)], axis=1)


def _setup(name, **kwargs):
  env_params = _env_params()
  game = tokens.game_of(env_params)
  algorithm = _algorithm(name, **kwargs)
  state = algorithm.init(jax.random.PRNGKey(0), env_params)
  params = _perturbed(state.params, 1)
  return env_params, game, algorithm, state.replace(params=params), params


@pytest.fixture(scope='module')
def online_ipo_case():
  env_params, game, algorithm, state, params = _setup('online_ipo')
  return env_params, game, params, _batch_gradients(algorithm, state,
                                                    env_params)


def test_listed_transformer_distribution_sums_to_one():
  env_params = _env_params()
  log_pi = _listed(_perturbed(env_params.reference, 3), env_params)
  assert log_pi.shape == (SPEC.num_prompts, tokens.num_responses(2, 2))
  np.testing.assert_allclose(np.exp(log_pi).sum(-1), 1, rtol=1e-12)


@pytest.mark.slow
def test_online_ipo_gradient_on_transformer_is_unbiased(online_ipo_case):
  env_params, game, params, samples = online_ipo_case
  log_pi = _listed(params, env_params)
  exact = _param_gradient(exact_online_ipo(log_pi, game, BETA), params,
                          env_params)
  assert_unbiased(samples, exact)
  # Negative control: self-play PG's direction is a different scale.
  with pytest.raises(AssertionError):
    assert_unbiased(samples, _param_gradient(
        exact_self_play(log_pi, game, BETA), params, env_params))


@pytest.mark.slow
def test_self_play_pg_gradient_on_transformer_is_unbiased():
  env_params, game, algorithm, state, params = _setup('self_play_pg')
  samples = _batch_gradients(algorithm, state, env_params)
  log_pi = _listed(params, env_params)
  assert_unbiased(samples, _param_gradient(
      exact_self_play(log_pi, game, BETA), params, env_params))
  with pytest.raises(AssertionError):
    assert_unbiased(samples, _param_gradient(
        exact_self_play(log_pi, game, 3 * BETA), params, env_params))


@pytest.mark.slow
def test_nash_prox_gradient_on_transformer_is_unbiased():
  env_params, game, algorithm, state, params = _setup('nash_prox', eta=ETA)
  anchor = _perturbed(params, 2, 0.3)
  samples = _batch_gradients(algorithm, state.replace(anchor=anchor),
                             env_params)
  log_pi = _listed(params, env_params)
  log_anchor = _listed(anchor, env_params)
  assert_unbiased(samples, _param_gradient(
      exact_nash_prox(log_pi, log_anchor, game, BETA, ETA), params,
      env_params))
  with pytest.raises(AssertionError):  # The anchor matters.
    assert_unbiased(samples, _param_gradient(
        exact_nash_prox(log_pi, log_pi, game, BETA, ETA), params,
        env_params))


@pytest.mark.slow
def test_approx_nash_mp_gradient_on_transformer_is_unbiased():
  inner = 2
  env_params, game, algorithm, state, params = _setup(
      'approx_nash_mp', eta=ETA, inner_steps=inner)
  anchor, half = _perturbed(params, 4, 0.3), _perturbed(params, 5, 0.6)
  # Step 2K + K: the second half, playing against the half-step policy.
  state = state.replace(anchor=anchor, half=half,
                        step=jnp.asarray(3 * inner, jnp.int32))
  samples = _batch_gradients(algorithm, state, env_params)
  log_pi, log_anchor, log_half = (_listed(p, env_params)
                                  for p in (params, anchor, half))
  assert_unbiased(samples, _param_gradient(
      exact_prox_pg(log_pi, log_half, log_anchor, game, BETA, ETA), params,
      env_params))
  # Negative control: the prox centre left out. (Playing the anchor instead
  # of the half-step policy moves the exact gradient by only ~3 standard
  # errors here, below the Z = 5 bound: the transformer's opponents are too
  # alike for that control to have teeth at this batch count.)
  with pytest.raises(AssertionError):
    assert_unbiased(samples, _param_gradient(
        exact_prox_pg(log_pi, log_half, log_pi, game, BETA, ETA), params,
        env_params))


def _token_mixture_log_policy(params, ref, env_params, c):
  """``log pi^c [X, N]`` of the PER-TOKEN geometric mixture
  ``pi^c(y_t|.) ∝ pi(y_t|.)^(1-c) pi_ref(y_t|.)^c`` over the listed
  responses, from teacher-forced logits (ALGORITHMS.md section 6)."""

  def log_prob(_, x, y):
    lp = sequence.token_log_probs(sequence.teacher_forced_logits(
        TCONFIG, params, x, y), TEMPERATURE)
    lr = sequence.token_log_probs(sequence.teacher_forced_logits(
        TCONFIG, ref, x, y), TEMPERATURE)
    mix = jax.nn.log_softmax((1 - c) * lp + c * lr, axis=-1)
    index = jnp.clip(y - sequence.EOS_ID, 0, mix.shape[-1] - 1)
    picked = jnp.take_along_axis(mix, index[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(sequence.response_mask(y), picked, 0.0), -1)

  return tokens.listed_log_probs(log_prob, None, env_params)


@pytest.mark.slow
def test_nash_md_pg_gradient_on_transformer_is_unbiased():
  mixture = 0.6
  env_params, game, algorithm, state, params = _setup('nash_md_pg',
                                                      mixture=mixture)
  samples = _batch_gradients(algorithm, state, env_params)
  log_mix = _token_mixture_log_policy(params, env_params.reference,
                                      env_params, mixture)
  np.testing.assert_allclose(np.exp(log_mix).sum(-1), 1, rtol=1e-12)

  def exact(log_opponent):
    def objective(p):
      log_pi = _listed(p, env_params)
      return (play(log_pi, log_opponent, game) -
              BETA * kl_rho(log_pi, game.log_ref_policy, game))
    return -_flat(jax.grad(objective)(params))

  assert_unbiased(samples, exact(log_mix))
  # Negative controls: the sequence-level geometric mixture (a different
  # distribution) and no mixture at all.
  log_pi = _listed(params, env_params)
  sequence_level = jax.nn.log_softmax(
      (1 - mixture) * log_pi + mixture * game.log_ref_policy, axis=-1)
  assert np.max(np.abs(sequence_level - log_mix)) > 1e-2
  with pytest.raises(AssertionError):
    assert_unbiased(samples, exact(log_pi))


@pytest.mark.slow
def test_nash_prox_with_anchor_every_step_is_online_ipo_on_transformer():
  env_params = _env_params()
  lr = 0.05
  kappa = ETA / (1 + ETA)

  def make(name, **kwargs):
    config = AlgorithmConfig(mode='sampled', beta=BETA, optimizer='sgd',
                             batch_size=8, **kwargs)
    return algorithms_lib.make_algorithm(
        name, config, lm_policy(TCONFIG, SPEC.max_length, TEMPERATURE),
        lm_environment(SPEC, 'bernoulli', TCONFIG, TEMPERATURE))

  prox = make('nash_prox', eta=ETA, learning_rate=lr, anchor='copy',
              anchor_every=1)
  ipo = make('online_ipo', learning_rate=kappa * lr)
  lagging = make('nash_prox', eta=ETA, learning_rate=lr, anchor='copy',
                 anchor_every=3)

  def run(algorithm):
    state = algorithm.init(jax.random.PRNGKey(7), env_params)
    return jax.lax.fori_loop(
        0, 12, lambda _, s: algorithm.step(s, env_params)[0], state)

  a, b, c = (jax.jit(lambda alg=alg: run(alg))()
             for alg in (prox, ipo, lagging))
  np.testing.assert_allclose(_flat(a.params), _flat(b.params), rtol=0,
                             atol=1e-12)
  np.testing.assert_array_equal(a.key, b.key)
  assert int(a.generated_tokens) == int(b.generated_tokens) > 0
  moved = np.max(np.abs(_flat(a.params) - _flat(env_params.reference)))
  assert moved > 1e-3
  assert np.max(np.abs(_flat(c.params) - _flat(b.params))) > 1e-8


def test_transformer_defaults_to_adam_at_1e_4():
  for name in ('online_ipo', 'nash_prox', 'nash_md_pg'):
    config = algorithms_lib.resolve_config(
        name, AlgorithmConfig(mode='sampled'), 4, 1, 'transformer')
    assert (config.optimizer, config.learning_rate) == ('adam', 1e-4)


def test_generation_flops_are_counted_for_every_token():
  """XLA's cost analysis counts a loop body once; with counting_flops the
  token loop is unrolled, so every token is counted."""
  config = transformer.TransformerConfig(vocab_size=8, d_model=16,
                                         num_layers=1, num_heads=2,
                                         num_kv_heads=1, mlp_dim=16)
  params = transformer.init_params(jax.random.PRNGKey(0), config)
  x = TokenContexts(index=jnp.zeros(4, jnp.int32),
                    tokens=jnp.ones((4, 3), jnp.int32),
                    mask=jnp.ones((4, 3), bool))

  def flops(length, counting):
    fn = lambda p: sequence.generate(jax.random.PRNGKey(1), p, x, length,
                                     config)[0]
    if counting:
      with sequence.counting_flops():
        return jax.jit(fn).lower(params).cost_analysis()['flops']
    return jax.jit(fn).lower(params).cost_analysis()['flops']

  counted = [flops(n, True) for n in (3, 5, 7)]
  # At least linear in the length (each token's attention also reads a
  # longer cache).
  assert counted[2] - counted[1] >= counted[1] - counted[0] > 0
  # Negative control: the rolled loop counts far less per token.
  rolled = [flops(n, False) for n in (3, 5)]
  assert rolled[1] - rolled[0] < 0.5 * (counted[1] - counted[0])
