"""The transformer policy over token sequences: the decoder against
independent NumPy formulas (RoPE, grouped-query attention), the KV cache
against a full forward, and the sequence policy's sampling against its
teacher-forced log-probabilities, its listed distribution and its per-token
geometric mixture (frequencies, with a negative control)."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies import sequence as seq
from nash_jax.policies import transformer as tf

LENGTH = 3        # max_response_length
VOCAB = 6         # PAD, BOS, EOS and 3 content tokens
CONFIG = tf.TransformerConfig(vocab_size=VOCAB, d_model=16, num_layers=2,
                              num_heads=4, num_kv_heads=2, mlp_dim=32,
                              param_dtype='float64')
# Left-padded prompts of lengths 4, 3 and 1.
PROMPTS = np.array([[1, 3, 4, 5], [0, 1, 5, 3], [0, 0, 0, 1]], np.int32)
REPEATS = 1000    # samples per prompt in the sampling tests
TEMPERATURE = 0.8


# Without and with jit (chex.variants-style).
_VARIANTS = (lambda f: f, jax.jit)


def _contexts(repeats=1):
  tokens = np.repeat(PROMPTS, repeats, axis=0)
  return TokenContexts(jnp.asarray(np.repeat(np.arange(3), repeats)),
                       jnp.asarray(tokens), jnp.asarray(tokens > 0))


@functools.lru_cache
def _params(seed, cfg=CONFIG):
  return tf.init_params(jax.random.PRNGKey(seed), cfg)


def list_responses(num_content=VOCAB - seq.FIRST_CONTENT_ID, length=LENGTH):
  """Every response: ``l < L`` content tokens, EOS, PAD; or ``L`` content
  tokens (cut, no EOS). ``sum_{l<L} V^l + V^L`` rows of ``L`` tokens."""
  content = range(seq.FIRST_CONTENT_ID, seq.FIRST_CONTENT_ID + num_content)
  rows = []
  for size in range(length + 1):
    for tokens in itertools.product(content, repeat=size):
      row = list(tokens) + ([seq.EOS_ID] if size < length else [])
      rows.append(row + [seq.PAD_ID] * (length - len(row)))
  return np.array(rows, np.int32)


def _codes(y):
  """An integer per response row (for matching samples to the listing)."""
  y = np.asarray(y, np.int64)
  return np.sum(y * VOCAB ** np.arange(y.shape[-1]), axis=-1)


# One compiled function per role, shared by the tests (few compilations).
_generate = jax.jit(
    lambda key, params, x, temperature, mixture, reference: seq.generate(
        key, params, x, LENGTH, CONFIG, temperature, mixture, reference))
_forward = jax.jit(
    lambda cfg, params, tokens, positions, mask: tf.apply(
        cfg, params, tokens, positions, mask)[0], static_argnums=0)
_token_log_probs = jax.jit(
    lambda params, x, y, temperature: seq.response_log_probs(
        CONFIG, params, x, y, temperature))


@jax.jit
def _listed_log_probs(params, reference, c, x, y):
  """``log pi^c(y|x)`` ``[B]`` of given responses from per-token mixtures
  of teacher-forced logits (``log pi`` at ``c = 0``)."""
  lp, lr = (seq.token_log_probs(seq.teacher_forced_logits(CONFIG, p, x, y),
                                TEMPERATURE) for p in (params, reference))
  mixed = jax.nn.log_softmax((1 - c) * lp + c * lr, axis=-1)
  index = jnp.clip(y - seq.EOS_ID, 0)[..., None]
  picked = jnp.take_along_axis(mixed, index, axis=-1)[..., 0]
  return jnp.sum(jnp.where(seq.response_mask(y), picked, 0.0), axis=1)


@pytest.fixture(scope='module')
def big_contexts():
  return _contexts(REPEATS)


@pytest.fixture(scope='module')
def listing():
  """Every response for every prompt: ``(x [3 n], y [3 n, L], n)``."""
  responses = list_responses()
  n = len(responses)
  x = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), _contexts())
  return x, jnp.asarray(np.tile(responses, (3, 1))), n


# --- configuration ---------------------------------------------------------

@pytest.mark.parametrize('changes, flag', [
    (dict(d_model=0), 'd_model'),
    (dict(num_layers=0), 'num_layers'),
    (dict(num_heads=3, num_kv_heads=1), 'num_heads'),  # 16 % 3 != 0
    (dict(num_kv_heads=3), 'num_kv_heads'),    # does not divide num_heads
    (dict(num_kv_heads=0), 'num_kv_heads'),
    (dict(vocab_size=0), 'vocab_size'),
    (dict(rope_theta=0.0), 'rope_theta'),
    (dict(rope_theta=float('inf')), 'rope_theta'),
    (dict(head_dim=3), 'head_dim'),            # RoPE needs an even size
    (dict(mlp_dim=2.5), 'mlp_dim'),
    (dict(norm_eps=-1.0), 'norm_eps'),
    (dict(param_dtype='int8'), 'param_dtype'),
])
def test_impossible_configs_name_their_flag(changes, flag):
  cfg = dataclasses.replace(CONFIG, **changes)
  with pytest.raises(ConfigError, match=f'--{flag}:'):
    tf.validate_transformer_config(cfg)


def test_sequence_policy_refusals():
  tf.validate_transformer_config(CONFIG)
  small = dataclasses.replace(CONFIG, vocab_size=3)
  for args, flag in [((small, LENGTH), 'vocab_size'),
                     ((CONFIG, 0), 'max_response_length'),
                     ((CONFIG, LENGTH, 0.0), 'temperature')]:
    with pytest.raises(ConfigError, match=f'--{flag}:'):
      seq.make_sequence_policy(*args)


# --- the decoder -----------------------------------------------------------

@pytest.mark.parametrize('tie', [True, False])
def test_params_are_a_plain_dict_tied_or_untied(tie):
  cfg = dataclasses.replace(CONFIG, tie_embeddings=tie)
  shapes = jax.eval_shape(lambda key: tf.init_params(key, cfg),
                          jax.random.PRNGKey(0))
  d, v, f = cfg.d_model, cfg.vocab_size, cfg.mlp_dim
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
  layer = {'attn_norm': {'scale': (d,)}, 'mlp_norm': {'scale': (d,)},
           'attn': {'q': {'w': (d, n, h)}, 'k': {'w': (d, k, h)},
                    'v': {'w': (d, k, h)}, 'o': {'w': (n, h, d)}},
           'mlp': {'gate': {'w': (d, f)}, 'up': {'w': (d, f)},
                   'down': {'w': (f, d)}}}
  expected = {'embedder': {'embedding': (v, d)}, 'layer_0': layer,
              'layer_1': layer, 'final_norm': {'scale': (d,)}}
  if not tie:
    expected['head'] = {'w': (d, v)}
  assert jax.tree.map(lambda a: a.shape, shapes) == expected
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype('float64')}


def test_bfloat16_params_and_wide_log_probs():
  cfg = dataclasses.replace(CONFIG, param_dtype='bfloat16')
  x = _contexts()
  params = jax.eval_shape(lambda key: tf.init_params(key, cfg),
                          jax.random.PRNGKey(0))
  logits = jax.eval_shape(
      lambda p: seq.teacher_forced_logits(cfg, p, x, x.tokens[:, :LENGTH]),
      params)
  assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype('bfloat16')}
  assert logits.dtype == jnp.bfloat16
  lp = jax.eval_shape(lambda z: seq.token_log_probs(z, 1.0), logits)
  assert lp.shape == (3, LENGTH, VOCAB - seq.EOS_ID)
  assert lp.dtype == jnp.float32


def _numpy_rope(z, position, theta):
  """Rotate ``(z_i, z_{i + H/2})`` by ``position * theta^(-2i/H)``."""
  h = z.shape[-1]
  out = np.array(z, np.float64)
  for i in range(h // 2):
    angle = position * theta ** (-2.0 * i / h)
    a, b = z[..., i], z[..., i + h // 2]
    out[..., i] = a * np.cos(angle) - b * np.sin(angle)
    out[..., i + h // 2] = b * np.cos(angle) + a * np.sin(angle)
  return out


def test_rope_golden_rotation_and_relative_positions():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(1, 1, 1, 8))
  for theta in (10_000.0, 500.0):
    got = tf.apply_rope(jnp.asarray(z), jnp.array([[7]]), theta)
    np.testing.assert_allclose(got, _numpy_rope(z, 7, theta), atol=1e-13)
  # q'_p . k'_s depends on p - s only.
  q, k = rng.normal(size=(2, 1, 1, 1, 8))
  dots = [np.sum(_numpy_rope(q, p, 100.0) * _numpy_rope(k, p - 3, 100.0))
          for p in (3, 10, 50)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-12)


def _prompts_and_two_tokens():
  """``[3, 6]`` tokens (prompts, then two response tokens, EOS, PAD), their
  mask and positions."""
  tokens = np.concatenate([PROMPTS, [[3, 2], [4, 5], [2, 0]]], axis=1)
  mask = tokens > 0
  return (jnp.asarray(tokens), seq.prompt_positions(jnp.asarray(mask)),
          jnp.asarray(mask))


def test_rope_theta_matters_and_only_relative_positions_count():
  params = _params(0)
  tokens, positions, mask = _prompts_and_two_tokens()
  logits = _forward(CONFIG, params, tokens, positions, mask)
  other = dataclasses.replace(CONFIG, rope_theta=7.0)
  changed = np.abs(np.asarray(
      _forward(other, params, tokens, positions, mask) - logits)).max(-1)
  # The first real token of a prompt attends to itself only: no rotation
  # matters there; later tokens see other positions, and theta changes them.
  valid = np.asarray(mask)
  first = np.asarray(positions == 0) & valid
  assert changed[first].max() < 1e-12
  assert changed[valid & ~first].min() > 1e-3
  # Shifting every position leaves the logits unchanged.
  np.testing.assert_allclose(
      _forward(CONFIG, params, tokens, positions + 11, mask)[valid],
      logits[valid], atol=1e-12)


def _numpy_attention(x, wq, wk, wv, wo, positions, mask, theta):
  """Multi-head attention with each key-value head repeated ``N / K``
  times (query head ``n`` reads key-value head ``n // G``)."""
  q = np.einsum('btd,dnh->btnh', x, wq)
  k = np.einsum('btd,dkh->btkh', x, wk)
  v = np.einsum('btd,dkh->btkh', x, wv)
  for b, t in np.ndindex(*positions.shape):
    q[b, t] = _numpy_rope(q[b, t], positions[b, t], theta)
    k[b, t] = _numpy_rope(k[b, t], positions[b, t], theta)
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[:, None], scores, -1e30)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum('bnts,bsnh->btnh', weights, v)
  return np.einsum('btnh,nhd->btd', out, wo)


@pytest.mark.parametrize('kv_heads', [1, 2])
def test_grouped_query_attention_equals_repeated_heads(kv_heads):
  cfg = dataclasses.replace(CONFIG, num_kv_heads=kv_heads, rope_theta=50.0)
  normals = tf.Normals(jax.random.PRNGKey(3), 4 * 16 * 16, jnp.float64)
  attention = tf.Attention(cfg, normals)
  x = _contexts()
  positions = seq.prompt_positions(x.mask)
  hidden = np.random.default_rng(1).normal(size=x.tokens.shape + (16,))
  mask = tf.attention_mask(x.mask, jnp.zeros((), jnp.int32), 4)
  weights = [np.asarray(getattr(attention, name).w[...])
             for name in ('q', 'k', 'v', 'o')]
  want = _numpy_attention(hidden, *weights, np.asarray(positions),
                          np.asarray(mask), 50.0)
  valid = np.asarray(x.mask)  # padding queries read no key: never used
  rope = tf.rope_tables(positions, 4, 50.0, jnp.float64)
  got, _ = jax.jit(lambda h: attention(h, rope, mask))(jnp.asarray(hidden))
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-12)


def test_kv_cache_decode_equals_full_forward():
  """Prefill and one-token steps through the cache against one forward."""
  params = _params(0)
  tokens, positions, mask = _prompts_and_two_tokens()
  full = _forward(CONFIG, params, tokens, positions, mask)
  step = jax.jit(lambda t, p, m, c: tf.apply(CONFIG, params, t, p, m, c))
  cache = tf.init_cache(CONFIG, 3, tokens.shape[1])
  logits, cache = step(tokens[:, :4], positions[:, :4], mask, cache)
  decoded = [logits]
  for i in range(4, tokens.shape[1]):
    logits, cache = step(tokens[:, i:i + 1], positions[:, i:i + 1], mask,
                         cache)
    decoded.append(logits)
  decoded = np.concatenate(decoded, axis=1)
  valid = np.asarray(mask)
  assert int(cache.index) == tokens.shape[1]
  np.testing.assert_allclose(decoded[valid], np.asarray(full)[valid],
                             atol=1e-12)


# --- the sequence policy ---------------------------------------------------

def _check_sampled_consistency(y, lp, mask, teacher, atol):
  y, lp, mask = map(np.asarray, (y, lp, mask))
  np.testing.assert_array_equal(mask, seq.response_mask(jnp.asarray(y)))
  assert np.all(y[mask] >= seq.EOS_ID) and np.all(y[~mask] == seq.PAD_ID)
  np.testing.assert_allclose(lp, teacher, atol=atol)
  # Every kind of response occurs: EOS at each step, and cut at L.
  eos_at = np.argmax(y == seq.EOS_ID, axis=1)
  has_eos = np.any(y == seq.EOS_ID, axis=1)
  assert set(eos_at[has_eos]) == set(range(LENGTH)) and not has_eos.all()


def test_sampled_log_probs_equal_teacher_forced_float64(big_contexts):
  params = _params(0)
  y, lp, mask = _generate(jax.random.PRNGKey(5), params, big_contexts,
                          TEMPERATURE, 0.0, None)
  teacher = _token_log_probs(params, big_contexts, y, TEMPERATURE)
  _check_sampled_consistency(y, lp, mask, teacher, 1e-12)
  np.testing.assert_allclose(np.sum(teacher, 1), np.sum(lp, 1), atol=1e-12)


@pytest.mark.slow
def test_sampled_log_probs_equal_teacher_forced_float32_untied():
  """Also: log_prob's gradient reaches every parameter, finite."""
  cfg = dataclasses.replace(CONFIG, param_dtype='float32',
                            tie_embeddings=False)
  policy = seq.make_sequence_policy(cfg, LENGTH, 1.3)
  x = _contexts(200)

  def init_and_generate(key):
    params = policy.init(key, x, None)
    return params, seq.generate(jax.random.fold_in(key, 1), params, x,
                                LENGTH, cfg, 1.3)

  params, (y, lp, mask) = jax.jit(init_and_generate)(jax.random.PRNGKey(2))
  assert lp.dtype == jnp.float32 and y.dtype == jnp.int32

  def total(p):
    per_token = seq.response_log_probs(cfg, p, x, y, 1.3)
    return jnp.sum(per_token), per_token

  (_, teacher), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
      params)
  assert teacher.dtype == jnp.float32
  _check_sampled_consistency(y, lp, mask, teacher, 1e-5)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for leaf in jax.tree.leaves(grads):
    assert leaf.dtype == jnp.float32
    assert np.isfinite(leaf).all() and np.abs(leaf).max() > 0


def test_listed_responses_sum_to_one(listing):
  x, y, n = listing
  assert n == 1 + 3 + 9 + 27
  policy = seq.make_sequence_policy(CONFIG, LENGTH, TEMPERATURE)
  lp = jax.jit(policy.log_prob)(_params(0), x, y)
  totals = jax.nn.logsumexp(lp.reshape(3, n), axis=1)
  np.testing.assert_allclose(totals, 0.0, atol=1e-12)


def _exact_mixture_log_probs(listing, params, reference, c):
  """``log pi^c(y|x)`` of every listed response, ``[3, n]``."""
  x, y, n = listing
  return np.asarray(_listed_log_probs(params, reference, c, x, y)).reshape(
      3, n)


def _chi_square_p_value(counts, probs):
  """Pearson's test of ``counts`` against ``probs`` per row, cells with an
  expected count under 5 pooled; rows summed."""
  statistic, dof = 0.0, 0
  for observed, p in zip(counts, probs):
    expected = p * observed.sum()
    small = expected < 5
    if small.any():
      observed = np.append(observed[~small], observed[small].sum())
      expected = np.append(expected[~small], expected[small].sum())
    statistic += np.sum((observed - expected) ** 2 / expected)
    dof += len(expected) - 1
  return stats.chi2.sf(statistic, dof)


@pytest.mark.slow
def test_mixture_sampling_frequencies(big_contexts, listing):
  params, reference, c = _params(0), _params(1), 0.4
  y, lp, _ = _generate(jax.random.PRNGKey(9), params, big_contexts,
                       TEMPERATURE, c, reference)
  mixture = _exact_mixture_log_probs(listing, params, reference, c)
  plain = _exact_mixture_log_probs(listing, params, reference, 0.0)
  np.testing.assert_allclose(np.exp(mixture).sum(1), 1.0, atol=1e-12)
  # Each sample is a listed response, drawn with its mixture log-probability.
  listed = _codes(list_responses())
  order = np.argsort(listed)
  index = order[np.searchsorted(listed[order], _codes(y))]
  np.testing.assert_array_equal(listed[index], _codes(y))
  prompt = np.asarray(big_contexts.index)
  np.testing.assert_allclose(np.sum(lp, 1), mixture[prompt, index],
                             atol=1e-12)
  counts = np.zeros_like(mixture)
  np.add.at(counts, (prompt, index), 1)
  assert _chi_square_p_value(counts, np.exp(mixture)) > 1e-3
  # Negative control: the same samples are not pi's.
  assert _chi_square_p_value(counts, np.exp(plain)) < 1e-8


def test_mixture_zero_is_plain_sampling_bit_for_bit(big_contexts):
  params, reference = _params(0), _params(1)
  key = jax.random.PRNGKey(4)
  y, lp, _ = _generate(key, params, big_contexts, TEMPERATURE, 0.0, None)
  y0, lp0, _ = _generate(key, params, big_contexts, TEMPERATURE, 0.0,
                         reference)
  np.testing.assert_array_equal(y0, y)
  np.testing.assert_allclose(lp0, lp, atol=1e-12)
  # The policy starts at the reference.
  policy = seq.make_sequence_policy(CONFIG, LENGTH, TEMPERATURE)
  assert policy.init(key, big_contexts, reference) is reference


@pytest.mark.slow
def test_vmap_over_seeds_and_temperatures_equals_single_calls(big_contexts):
  """A sweep (seeds and temperatures on one axis) equals its single runs."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  temperatures = jnp.array([0.7, 1.0, 1.3])
  params = jax.jit(jax.vmap(lambda k: tf.init_params(k, CONFIG)))(keys)

  def run(key, params, temperature):
    policy = seq.make_sequence_policy(CONFIG, LENGTH, temperature)
    y = policy.sample(key, params, big_contexts)
    return y, policy.log_prob(params, big_contexts, y)

  swept_y, swept_lp = jax.jit(jax.vmap(run))(keys, params, temperatures)
  swept = jax.tree.map(np.asarray, (params, swept_y, swept_lp))
  for i in range(3):
    single = tf.init_params(keys[i], CONFIG)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[i], b),
                 swept[0], single)
    # A Python float, as the other tests pass: the compiled functions match.
    temperature = float(temperatures[i])
    y = _generate(keys[i], single, big_contexts, temperature, 0.0, None)[0]
    np.testing.assert_array_equal(swept[1][i], y)
    lp = _token_log_probs(single, big_contexts, y, temperature)
    np.testing.assert_allclose(swept[2][i], np.sum(lp, 1), atol=1e-12)


def test_building_blocks_agree_with_and_without_jit():
  """The pieces of a forward and of a token draw, eager and jitted (an
  eager model compiles every operation separately: seconds per test, so
  the whole model is tested jitted)."""
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(3, 4, 2, 8)))
  logits = jnp.asarray(rng.normal(size=(3, LENGTH, VOCAB)))
  x = _contexts()
  y = jnp.array([[3, 2, 0], [4, 5, 3], [2, 0, 0]], jnp.int32)
  u = jnp.asarray(rng.uniform(size=(3, 1)))

  def pieces(z, logits, mask, y, u):
    log_probs = seq.token_log_probs(logits, 0.9)
    return (tf.apply_rope(z, seq.prompt_positions(mask), 300.0),
            tf.rms_norm(z, jnp.arange(8.0), 1e-6), log_probs,
            seq.response_mask(y), seq.inverse_cdf(log_probs[:, 0], u))

  eager, jitted = (variant(pieces)(z, logits, x.mask, y, u)
                   for variant in _VARIANTS)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, atol=1e-12)
  np.testing.assert_array_equal(eager[3], [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
  np.testing.assert_allclose(jnp.exp(eager[2]).sum(-1), 1.0, atol=1e-12)


def test_inverse_cdf_boundaries():
  log_probs = jnp.log(jnp.array([[0.25, 0.25, 0.5]] * 6))
  u = jnp.array([[0.0], [0.2499], [0.2501], [0.4999], [0.5001], [0.9999]])
  np.testing.assert_array_equal(seq.inverse_cdf(log_probs, u),
                                [0, 0, 1, 1, 2, 2])
  # Unnormalized rows give the same draws.
  np.testing.assert_array_equal(seq.inverse_cdf(log_probs + 3.0, u),
                                [0, 0, 1, 1, 2, 2])
