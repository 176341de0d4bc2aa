"""The listable token environment (nash_jax/environments/tokens/): the
listing, the oracle's exact antisymmetry and Condorcet cycle, the tensor
against per-pair calls, sampled outcomes and contexts against their
probabilities (with negative controls), listed log-probabilities of stand-in
policies, and pi*_beta of the induced game."""

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from nash_jax import reference
from nash_jax.environments import tokens as T
from nash_jax.errors import ConfigError
from nash_jax.games.files import load_game

SPEC = T.TokenEnvSpec()
V, L = SPEC.vocab_size, SPEC.max_length
Z = 5.0  # tolerance in standard errors (fixed seeds: no flakiness)


# ------------------------------------------------------ stand-in policies


@jax.jit
def tabular_log_prob(params, x, y):
  """A softmax over the listed responses, indexed by ``response_index``."""
  log_pi = jax.nn.log_softmax(params, axis=-1)
  return log_pi[x.index, T.response_index(y, V, L)]


@jax.jit
def unigram_log_prob(params, x, y):
  """Per-prompt, per-position token model: ``params [X, L, V + 1]`` logits
  over (EOS, content...); the sum runs over content tokens and the EOS
  (none for a response cut at L): ALGORITHMS.md section 6's convention."""
  log_p = jax.nn.log_softmax(params[x.index], axis=-1)  # [B, L, V + 1]
  valid = T.content_mask(y)
  k = jnp.sum(valid, axis=-1)
  cls = jnp.where(valid, y - (T.FIRST_CONTENT - 1), 0)
  per_token = jnp.take_along_axis(log_p, cls[..., None], axis=-1)[..., 0]
  counted = jnp.arange(y.shape[-1])[None, :] <= k[:, None]
  return jnp.sum(jnp.where(counted, per_token, 0.0), axis=-1)


def unigram_params(seed=0, spec=SPEC):
  shape = (spec.num_prompts, spec.max_length, spec.vocab_size + 1)
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def stand_in_policy(log_prob):
  return type('StandIn', (), {'log_prob': staticmethod(log_prob)})()


@pytest.fixture(scope='module')
def params():
  return T.token_env_params(SPEC, reference=unigram_params(),
                            ref_log_prob_fn=unigram_log_prob)


@pytest.fixture(scope='module')
def prefs(params):
  return np.asarray(T.preference_tensor(params))


# ---------------------------------------------------------------- listing


@pytest.mark.parametrize('vocab_size,max_length',
                         [(1, 1), (1, 5), (2, 3), (3, 4), (4, 4), (5, 3)])
def test_listing_is_complete_distinct_valid_and_indexed(vocab_size,
                                                        max_length):
  ys = T.list_responses(vocab_size, max_length)
  n = sum(vocab_size ** k for k in range(max_length + 1))
  assert ys.shape == (n, max_length) == (T.num_responses(vocab_size,
                                                         max_length),
                                         max_length)
  assert ys.dtype == np.int32
  assert len({tuple(y) for y in ys}) == n
  content = [tuple(c for c in y if c >= T.FIRST_CONTENT) for y in ys]
  for y, c in zip(ys, content):  # content, then EOS (if room), then PAD
    expect = list(c) + ([T.EOS] if len(c) < max_length else [])
    expect += [T.PAD] * (max_length - len(expect))
    assert list(y) == expect
    assert all(T.FIRST_CONTENT <= t < T.FIRST_CONTENT + vocab_size
               for t in c)
  # Canonical order: by length, then lexicographic.
  assert content == sorted(content, key=lambda c: (len(c), c))
  index = jax.jit(T.response_index, static_argnums=(1, 2))(
      jnp.asarray(ys), vocab_size, max_length)
  np.testing.assert_array_equal(index, np.arange(n))
  assert index.dtype == jnp.int32


def test_response_index_batches_and_ignores_what_follows_eos():
  ys = T.list_responses(V, L)
  index = T.response_index(jnp.asarray(ys).reshape(11, 31, L), V, L)
  np.testing.assert_array_equal(index, np.arange(len(ys)).reshape(11, 31))
  junk = np.where(ys == T.PAD, T.FIRST_CONTENT + 1, ys)  # content after EOS
  np.testing.assert_array_equal(T.response_index(jnp.asarray(junk), V, L),
                                np.arange(len(ys)))
  assert T.num_responses(4, 4) == 341
  assert T.model_vocab_size(4) == 7


def test_refusals_name_the_flag_and_n():
  with pytest.raises(ConfigError, match='--vocab_size'):
    T.list_responses(0, 4)
  with pytest.raises(ConfigError, match='--max_length'):
    T.list_responses(4, 0)
  with pytest.raises(ConfigError, match=r'--max_length.*N = 11,111.*5,000'):
    T.list_responses(10, 4)
  assert len(T.list_responses(10, 4, max_responses=20_000)) == 11_111
  with pytest.raises(ConfigError, match=r'N = ~10\^470'):
    T.check_listable(50_000, 100)
  with pytest.raises(ConfigError, match='--max_length'):
    T.token_env_params(T.TokenEnvSpec(vocab_size=8, max_length=5))
  bad = {'num_prompts': 0, 'prompt_length': 1, 'sharpness': (1.0, -1.0, 1.0),
         'annotator_weights': (0.0, 0.0, 0.0)}
  for flag, value in bad.items():
    with pytest.raises(ConfigError, match=f'--{flag}'):
      T.check_spec(T.TokenEnvSpec(**{flag: value}))
  with pytest.raises(ConfigError, match='--sharpness'):
    T.check_spec(T.TokenEnvSpec(sharpness=(1.0, 1.0)))
  with pytest.raises(ConfigError, match='--outcome'):
    T.make_token_environment(SPEC, unigram_log_prob, outcome='judge')
  with pytest.raises(ConfigError, match='--vocab_size'):
    T.CONDORCET_STYLES['diverse'].build(T.TokenEnvSpec(vocab_size=3), 0)


# ----------------------------------------------------------------- prompts


def test_prompts_bos_topic_fillers_deterministic():
  tokens, mask = T.make_prompts(SPEC)
  assert tokens.shape == mask.shape == (SPEC.num_prompts, SPEC.prompt_length)
  assert mask.all() and np.all(tokens[:, 0] == T.BOS)
  assert np.all((tokens[:, 1:] >= T.FIRST_CONTENT) &
                (tokens[:, 1:] < T.FIRST_CONTENT + V))
  prompt_topic = jax.jit(T.prompt_topic)
  topics = np.asarray(prompt_topic(jnp.asarray(tokens), jnp.asarray(mask)))
  np.testing.assert_array_equal(topics, [3, 4, 5, 6])  # distinct
  np.testing.assert_array_equal(T.make_prompts(SPEC)[0], tokens)
  other = T.make_prompts(T.TokenEnvSpec(seed=1, prompt_length=8))[0]
  assert not np.array_equal(other[:, :3], tokens)
  np.testing.assert_array_equal(other[:, 1], topics)
  # Left padding: the topic is the token after BOS, wherever BOS sits.
  padded = jnp.array([[T.PAD, T.PAD, T.BOS, 5, 3], [T.BOS, 4, 4, 6, 3]])
  padded_mask = jnp.array([[False, False, True, True, True], [True] * 5])
  np.testing.assert_array_equal(prompt_topic(padded, padded_mask), [5, 4])


# ------------------------------------------------------------------ oracle


def _python_scores(topic, y):
  content = list(itertools.takewhile(lambda t: t >= T.FIRST_CONTENT, y))
  return (content.count(topic), -len(content),
          len({t for t in content if t != topic}))


def test_scores_by_hand_and_for_long_responses():
  topic = jnp.array([3, 3, 3, 4])
  y = jnp.array([[3, 3, 4, T.EOS], [4, T.EOS, 5, 6], [T.EOS, 0, 0, 0],
                 [3, 5, 6, 5]])
  np.testing.assert_array_equal(
      jax.jit(T.annotator_scores)(topic, y),
      [[2, -3, 1], [0, -1, 1], [0, 0, 0], [0, -4, 3]])
  # Any length (here L = 64, 9 content tokens), not just listable ones.
  rng = np.random.default_rng(0)
  long_y = rng.integers(T.FIRST_CONTENT, T.FIRST_CONTENT + 9, (50, 64))
  cut = rng.integers(0, 65, 50)
  for row, k in zip(long_y, cut):
    row[k:] = T.PAD
    if k < 64:
      row[k] = T.EOS
  long_topic = rng.integers(T.FIRST_CONTENT, T.FIRST_CONTENT + 9, 50)
  scores = jax.jit(T.annotator_scores)(jnp.asarray(long_topic),
                                       jnp.asarray(long_y))
  expect = [_python_scores(t, list(y)) for t, y in zip(long_topic, long_y)]
  np.testing.assert_array_equal(scores, expect)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float64])
def test_preference_is_exactly_antisymmetric(dtype):
  rng = np.random.default_rng(1)
  diff = jnp.asarray(rng.normal(0, 3, (20_000, 3)), dtype)
  diff = diff.at[:100].set(jnp.round(diff[:100]))
  link = jax.jit(T.population_preference)
  for sharpness in [(2.0, 2.0, 2.0), (0.1, 5.0, 40.0)]:
    for w in [(1 / 3, 1 / 3, 1 / 3), (0.2, 0.7, 0.1)]:
      sharp, weights = jnp.asarray(sharpness, dtype), jnp.asarray(w, dtype)
      forward = link(diff, sharp, weights)
      backward = link(-diff, sharp, weights)
      assert forward.dtype == dtype
      np.testing.assert_array_equal(forward + backward, 1.0)
      assert np.all((forward >= 0) & (forward <= 1))
      same = link(jnp.zeros_like(diff), sharp, weights)
      np.testing.assert_array_equal(same, 0.5)
      exact = np.sum(np.asarray(w) * scipy.special.expit(
          np.asarray(sharpness) * np.asarray(diff, np.float64)), axis=-1)
      np.testing.assert_allclose(forward, exact,
                                 atol=10 * jnp.finfo(dtype).eps)


def test_preference_tensor_is_exact_game(prefs):
  n = T.num_responses(V, L)
  assert prefs.shape == (SPEC.num_prompts, n, n)
  np.testing.assert_array_equal(prefs + np.swapaxes(prefs, -1, -2), 1.0)
  np.testing.assert_array_equal(np.diagonal(prefs, axis1=1, axis2=2), 0.5)
  assert prefs.min() >= 0 and prefs.max() <= 1


def test_tensor_equals_per_pair_oracle_calls(params, prefs):
  batch, n = 4096, params.num_responses
  key = jax.random.PRNGKey(0)
  x = T.sample_contexts(params, key, batch)
  iy, iz = np.random.default_rng(0).integers(0, n, (2, batch))
  per_pair = jax.jit(T.preference_probability)(
      params, x, params.responses[iy], params.responses[iz])
  np.testing.assert_array_equal(per_pair, prefs[x.index, iy, iz])
  env = T.make_token_environment(SPEC, unigram_log_prob, outcome='probability')
  np.testing.assert_array_equal(
      env.outcomes(params, key, x, params.responses[iy],
                   params.responses[iz]), prefs[x.index, iy, iz])


def test_condorcet_cycle_for_every_prompt(params):
  cycle = T.condorcet_cycle_probabilities(params, SPEC)
  assert cycle.shape == (SPEC.num_prompts, 3)
  assert np.all(cycle > 0.5)
  tau = SPEC.sharpness[0]
  closed_form = (scipy.special.expit(2 * tau) + scipy.special.expit(tau) +
                 scipy.special.expit(-3 * tau)) / 3
  np.testing.assert_allclose(cycle, closed_form, rtol=1e-12)  # 0.6218
  listed = {tuple(y) for y in np.asarray(params.responses)}
  for x in range(SPEC.num_prompts):
    for style in T.CONDORCET_STYLES.values():
      y = style.build(SPEC, x)
      assert y.shape == (L,) and y.dtype == np.int32
      assert tuple(y) in listed


def test_no_condorcet_winner_at_the_defaults(prefs):
  np.testing.assert_array_equal(T.condorcet_winners(prefs), -1)
  np.testing.assert_array_equal(T.condorcet_winners(prefs, weak=False), -1)
  # Negative control: the topic annotator alone is transitive, and its
  # winner is the topic repeated L times.
  alone = T.token_env_params(T.TokenEnvSpec(annotator_weights=(1, 0, 0)))
  winners = T.condorcet_winners(T.preference_tensor(alone), weak=False)
  topics = T.prompt_topics(SPEC.num_prompts, V)
  for x, w in enumerate(winners):
    np.testing.assert_array_equal(alone.responses[w], [topics[x]] * L)


# ---------------------------------------------------- sampled vs probability


def test_bernoulli_outcomes_match_probabilities(params, prefs):
  env = T.make_token_environment(SPEC, unigram_log_prob)
  pairs, draws = 200, 4000
  rng = np.random.default_rng(1)
  ix = rng.integers(0, SPEC.num_prompts, pairs)
  iy, iz = rng.integers(0, params.num_responses, (2, pairs))
  # All draws in one batch: pair i is sample i, i + pairs, i + 2 pairs, ...
  tile = lambda a: jnp.asarray(np.tile(a, draws))
  x = T.contexts_at(params, tile(ix))
  outcomes = jax.jit(env.outcomes)(
      params, jax.random.PRNGKey(1), x, params.responses[tile(iy)],
      params.responses[tile(iz)])
  outcomes = np.asarray(outcomes).reshape(draws, pairs)
  assert set(np.unique(outcomes)) <= {0.0, 1.0}
  freq = outcomes.mean(axis=0)
  prob = prefs[ix, iy, iz]
  assert np.ptp(prob) > 0.5  # pairs of every kind, not only ties
  stderr = np.sqrt(prob * (1 - prob) / draws) + 1e-12
  assert np.all(np.abs(freq - prob) <= Z * stderr + 1e-9)
  # Negative control: a slightly different oracle (sharpness 1.5) fails.
  other = T.token_env_params(T.TokenEnvSpec(sharpness=(1.5, 1.5, 1.5)))
  prob_other = np.asarray(T.preference_tensor(other))[ix, iy, iz]
  assert np.any(np.abs(freq - prob_other) > Z * stderr)


def test_contexts_follow_rho(params):
  rho = jnp.array([0.1, 0.2, 0.3, 0.4])
  skewed = params.replace(context_weights=rho)
  draws = 4096
  x = T.sample_contexts(skewed, jax.random.PRNGKey(2), draws)
  np.testing.assert_array_equal(x.tokens, params.prompts[x.index])
  np.testing.assert_array_equal(x.mask, params.prompt_mask[x.index])
  counts = np.bincount(np.asarray(x.index), minlength=4)
  limit = scipy.stats.chi2.ppf(1 - 1e-6, df=3)
  assert scipy.stats.chisquare(counts, draws * np.asarray(rho)).statistic < (
      limit)
  # Negative control: the same draws are far from uniform.
  assert scipy.stats.chisquare(counts, np.full(4, draws / 4)).statistic > (
      limit)
  # Uniform rho by default.
  np.testing.assert_allclose(params.context_weights, 0.25)


# ------------------------------------------------------- environment, game


def test_log_policy_of_stand_in_policies(params):
  env = T.make_token_environment(SPEC, unigram_log_prob)
  logits = jnp.asarray(np.random.default_rng(3).normal(
      size=(SPEC.num_prompts, 341)))
  log_pi = jax.jit(env.log_policy, static_argnums=0)(
      stand_in_policy(tabular_log_prob), logits, params)
  np.testing.assert_allclose(log_pi, jax.nn.log_softmax(logits), atol=1e-12)
  # The unigram model sums to 1 over the listing (EOS convention), chunked
  # or not.
  unigram = stand_in_policy(unigram_log_prob)
  whole = env.log_policy(unigram, unigram_params(5), params)
  np.testing.assert_allclose(jax.scipy.special.logsumexp(whole, axis=-1), 0,
                             atol=1e-12)
  chunked_env = T.make_token_environment(SPEC, unigram_log_prob,
                                         chunk_size=100)
  chunked = jax.jit(chunked_env.log_policy, static_argnums=0)(
      unigram, unigram_params(5), params)
  np.testing.assert_allclose(chunked, whole, atol=1e-12)


def test_environment_functions(params, prefs):
  env = T.make_token_environment(SPEC, unigram_log_prob)
  assert env.name == 'tokens'
  assert env.reference(params) is params.reference
  everyone = env.all_contexts(params)
  np.testing.assert_array_equal(everyone.index, np.arange(4))
  np.testing.assert_array_equal(everyone.tokens, params.prompts)
  # The reference scored through the injected function matches the listed
  # pi_ref, which sums to 1.
  x = env.contexts(params, jax.random.PRNGKey(4), 4096)
  iy = np.random.default_rng(5).integers(0, 341, 4096)
  np.testing.assert_allclose(
      env.ref_log_prob(params, x, params.responses[iy]),
      params.ref_log_policy[x.index, iy], atol=1e-12)
  game = env.game(params)
  np.testing.assert_array_equal(game.preferences, prefs)
  np.testing.assert_allclose(game.ref_policy.sum(-1), 1, atol=1e-12)
  np.testing.assert_allclose(np.log(game.ref_policy),
                             params.ref_log_policy, atol=1e-12)
  # Uniform pi_ref without a reference; refusal of a reference without a
  # way to score it.
  uniform = T.token_env_params(SPEC)
  np.testing.assert_allclose(uniform.ref_log_policy, -np.log(341))
  with pytest.raises(ValueError, match='ref_log_prob_fn'):
    T.token_env_params(SPEC, reference=unigram_params())


def test_induced_game_round_trips_through_a_game_file(params, tmp_path):
  game = T.induced_game(SPEC, params.ref_log_policy)
  path = tmp_path / 'tokens.npz'
  np.savez(path, preferences=np.asarray(game.preferences),
           ref_policy=np.asarray(game.ref_policy),
           context_weights=np.asarray(game.context_weights))
  loaded = load_game(str(path))
  np.testing.assert_array_equal(loaded.preferences, game.preferences)
  np.testing.assert_allclose(loaded.ref_policy, game.ref_policy)


def test_equilibrium_of_the_induced_game_is_fast_and_moves(params):
  game = T.game_of(params)
  beta = 0.1
  start = time.perf_counter()
  pi = reference.equilibrium(np.asarray(game.preferences),
                             np.asarray(game.ref_policy), beta)
  elapsed = time.perf_counter() - start
  assert elapsed < 60, f'pi*_beta took {elapsed:.1f} s'
  residual = reference.fixed_point_residual(
      np.log(pi), np.asarray(game.preferences), np.log(game.ref_policy), beta)
  assert np.max(np.ptp(residual, axis=-1)) < 1e-8
  kl = np.sum(pi * (np.log(pi) - np.log(game.ref_policy)), axis=-1)
  assert np.all(kl > 0.05), kl
