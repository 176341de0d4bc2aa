"""Supervised fine-tuning of the reference (nash_jax/sft.py): the writer's
exact corpus distribution sums to 1, its samples follow it (with a negative
control), and SFT moves a tiny transformer towards it (exact KL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from nash_jax import sft
from nash_jax.environments import tokens as T
from nash_jax.errors import ConfigError
from nash_jax.policies import sequence, transformer

WRITER = sft.Writer(stop=0.3, topic=0.5)


def _env(vocab_size=4, max_length=4, num_prompts=4):
  spec = T.TokenEnvSpec(vocab_size=vocab_size, max_length=max_length,
                        num_prompts=num_prompts)
  return spec, T.token_env_params(spec)


@pytest.mark.parametrize('vocab_size,max_length', [(4, 4), (3, 5), (2, 1)])
def test_writer_distribution_sums_to_one(vocab_size, max_length):
  spec, env = _env(vocab_size, max_length)
  log_q = np.asarray(sft.writer_log_policy(WRITER, env, vocab_size),
                     np.float64)
  np.testing.assert_allclose(scipy.special.logsumexp(log_q, axis=-1), 0.0,
                             atol=1e-6)
  # The topic-only response of length 1 has q = (1 - stop) topic stop.
  topic = T.FIRST_CONTENT  # prompt 0's topic
  index = int(T.response_index(jnp.asarray(T.make_response([topic],
                                                           max_length)),
                               vocab_size, max_length))
  expected = 0.7 * 0.5 * (0.3 if max_length > 1 else 1.0)
  np.testing.assert_allclose(np.exp(log_q[0, index]), expected, rtol=1e-6)


def _frequencies(writer, key, topic, num, vocab_size, max_length):
  y = sft.sample_writer(writer, key, jnp.full((num,), topic), max_length,
                        vocab_size)
  index = np.asarray(T.response_index(y, vocab_size, max_length))
  return np.bincount(index, minlength=T.num_responses(vocab_size,
                                                      max_length))


@pytest.mark.slow
def test_writer_samples_follow_the_distribution():
  vocab_size, max_length, num = 3, 3, 40_000
  spec, env = _env(vocab_size, max_length)
  q = np.exp(np.asarray(sft.writer_log_policy(WRITER, env, vocab_size)))[0]
  topic = int(T.prompt_topics(1, vocab_size)[0])

  def chi2(counts):
    expected = num * q
    return float(np.sum((counts - expected) ** 2 / expected))

  counts = _frequencies(WRITER, jax.random.PRNGKey(0), topic, num,
                        vocab_size, max_length)
  dof = len(q) - 1
  # chi2 with dof degrees of freedom: mean dof, sd sqrt(2 dof).
  assert chi2(counts) < dof + 5 * np.sqrt(2 * dof)
  # Negative control: a writer that stops more often.
  other = _frequencies(sft.Writer(stop=0.35, topic=0.5),
                       jax.random.PRNGKey(0), topic, num, vocab_size,
                       max_length)
  assert chi2(other) > dof + 20 * np.sqrt(2 * dof)


def test_bad_writer_refused():
  with pytest.raises(ConfigError, match='corpus_stop'):
    sft.check_writer(sft.Writer(stop=1.0), 4)
  with pytest.raises(ConfigError, match='corpus_topic'):
    sft.check_writer(sft.Writer(topic=1.5), 4)


@pytest.mark.slow
def test_sft_moves_the_reference_towards_the_corpus():
  vocab_size, max_length = 3, 3
  spec, env = _env(vocab_size, max_length, num_prompts=3)
  config = transformer.TransformerConfig(
      vocab_size=T.model_vocab_size(vocab_size), d_model=16, num_layers=1,
      num_heads=2, num_kv_heads=1, mlp_dim=32)
  params = transformer.init_params(jax.random.PRNGKey(0), config)
  log_prob = lambda p, x, y: sequence.log_prob(config, p, x, y)
  log_q = sft.writer_log_policy(WRITER, env, vocab_size)

  def kl(p):
    log_pi = T.listed_log_probs(log_prob, p, env)
    return float(sft.corpus_kl(log_q, log_pi, env.context_weights))

  sample = sft.writer_sampler(WRITER, env, max_length, vocab_size)
  tuned, losses = sft.fit(jax.random.PRNGKey(1), log_prob, params, sample,
                          300, 32, 3e-3)
  before, after = kl(params), kl(tuned)
  assert losses.shape == (300,)
  # The loss is the cross-entropy H(q, pi) = H(q) + KL(q || pi) in
  # expectation: its last steps sit near the exact value.
  entropy = -float(jnp.sum(env.context_weights * jnp.sum(
      jnp.exp(log_q) * log_q, -1)))
  assert abs(float(jnp.mean(losses[-100:])) - (entropy + after)) < 0.15
  assert after < 0.2 * before, (before, after)
