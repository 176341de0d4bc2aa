"""A reference policy worth regularizing towards: supervised fine-tuning
(SFT) on a corpus of responses.

NLHF regularizes towards ``pi_ref`` (ALGORITHMS.md section 1). A randomly
initialized transformer is a nearly uniform ``pi_ref``; real post-training
starts from a supervised model. This module gives the token game a corpus
with a known distribution and trains the reference on it:

* The **writer** (:class:`Writer`): a synthetic corpus of "human" responses
  to a prompt with topic token ``t_x`` (:mod:`nash_jax.environments.tokens`).
  Token by token, the writer stops (EOS) with probability ``stop``;
  otherwise it writes the topic with probability ``topic`` or one of the
  other ``V - 1`` content tokens uniformly. A response reaching ``L`` tokens
  is cut there. Its exact distribution over the listed responses is::

    q(y|x) = prod_{t<k} (1 - stop) q_tok(y_t|x)  *  (stop if k < L else 1)

    q_tok(t_x|x) = topic,   q_tok(c|x) = (1 - topic) / (V - 1)  (c != t_x)

  with ``k`` the number of content tokens of ``y``; the probabilities of all
  ``sum_{k<=L} V^k`` responses sum to 1 (:func:`writer_log_prob`; sampled
  by :func:`sample_writer` for any ``L``, listable or not).
* **SFT** (:func:`fit`): maximum likelihood, ``min_theta E_{x~rho, y~q}
  [-log pi_theta(y|x)]``, i.e. ``KL(q || pi_theta)`` up to the entropy of
  ``q``, by optax adam on batches drawn inside one jitted ``lax.scan``. In
  the listable game :func:`corpus_kl` gives the exact ``KL(q || pi)`` per
  prompt averaged under ``rho``, which the LM binary reports before and
  after SFT.

Any other corpus plugs into :func:`fit` as a ``sample(key, batch_size) ->
(x, y)`` function (e.g. tokenized prompt/response pairs of a JSONL file).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nash_jax.environments import tokens as tokens_lib
from nash_jax.errors import ConfigError
from nash_jax.precision import in_float32
from nash_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class Writer:
  """The synthetic corpus' token process (module docstring).

  Attributes:
    stop: probability of ending (EOS) before each token, in ``(0, 1)``.
    topic: probability that a written token is the prompt's topic, in
      ``[0, 1]``.
  """

  stop: float = setting(0.3, "The corpus writer's probability of ending "
                        '(EOS) before each token.')
  topic: float = setting(0.5, "The corpus writer's probability that a "
                         "token is the prompt's topic (else another content "
                         'token, uniformly).')


def check_writer(writer: Writer, vocab_size: int) -> Writer:
  """Raises :class:`ConfigError` (flags ``corpus_stop``, ``corpus_topic``)
  for probabilities out of range; returns ``writer``."""
  if not (isinstance(writer.stop, (int, float)) and 0 < writer.stop < 1):
    raise ConfigError('corpus_stop', f'must be in (0, 1), got '
                      f'{writer.stop!r}')
  if not (isinstance(writer.topic, (int, float)) and 0 <= writer.topic <= 1):
    raise ConfigError('corpus_topic', f'must be in [0, 1], got '
                      f'{writer.topic!r}')
  if vocab_size < 2 and writer.topic < 1:
    raise ConfigError('corpus_topic', f'must be 1 with a single content '
                      f'token (vocab_size={vocab_size})')
  return writer


def writer_log_prob(writer: Writer, topic: chex.Array, y: chex.Array,
                    vocab_size: int) -> chex.Array:
  """``log q(y|x)`` per sample, ``[B]`` (module docstring).

  Args:
    writer: the corpus process.
    topic: ``[B]`` topic token of each prompt.
    y: ``[B, L]`` responses (content tokens, then EOS, then PAD).
    vocab_size: ``V``, the content tokens.
  """
  chex.assert_rank([topic, y], [1, 2])
  dtype = jnp.result_type(float)
  valid = tokens_lib.content_mask(y)
  k = jnp.sum(valid, axis=-1)
  on_topic = y == topic[:, None]
  log_off = (math.log1p(-writer.topic) - math.log(vocab_size - 1)
             if writer.topic < 1 else -jnp.inf)
  log_topic = math.log(writer.topic) if writer.topic > 0 else -jnp.inf
  per_token = math.log1p(-writer.stop) + jnp.where(on_topic, log_topic,
                                                   log_off)
  total = jnp.sum(jnp.where(valid, per_token, 0.0), axis=-1)
  end = jnp.where(k < y.shape[1], math.log(writer.stop), 0.0)
  return (total + end).astype(dtype)


def sample_writer(writer: Writer, key: chex.PRNGKey, topic: chex.Array,
                  max_length: int, vocab_size: int) -> chex.Array:
  """``[B, L]`` responses drawn from the writer for prompts with topics
  ``topic [B]`` (jittable; one batch of uniforms per decision)."""
  chex.assert_rank(topic, 1)
  batch = topic.shape[0]
  stop_key, topic_key, other_key = jax.random.split(key, 3)
  shape = (batch, max_length)
  stops = jax.random.uniform(stop_key, shape) < writer.stop
  # k: the first stop (the number of content tokens), L without one.
  k = jnp.where(jnp.any(stops, axis=-1), jnp.argmax(stops, axis=-1),
                max_length)
  is_topic = jax.random.uniform(topic_key, shape) < writer.topic
  offset = jax.random.randint(other_key, shape, 1, max(vocab_size, 2))
  topic_index = (topic - tokens_lib.FIRST_CONTENT)[:, None]
  other = tokens_lib.FIRST_CONTENT + (topic_index + offset) % vocab_size
  content = jnp.where(is_topic | (vocab_size < 2), topic[:, None], other)
  t = jnp.arange(max_length)[None, :]
  y = jnp.where(t < k[:, None], content,
                jnp.where(t == k[:, None], tokens_lib.EOS, tokens_lib.PAD))
  return y.astype(jnp.int32)


def writer_log_policy(writer: Writer, env_params,
                      vocab_size: int) -> chex.Array:
  """``log q [X, N]`` over the listed responses of a
  :class:`~nash_jax.environments.tokens.TokenEnvParams` with ``V =
  vocab_size`` content tokens."""
  topics = tokens_lib.prompt_topic(env_params.prompts, env_params.prompt_mask)
  responses = env_params.responses
  num_x, num_y = topics.shape[0], responses.shape[0]
  flat = writer_log_prob(writer, jnp.repeat(topics, num_y),
                         jnp.tile(responses, (num_x, 1)), vocab_size)
  return flat.reshape(num_x, num_y)


def corpus_kl(log_q: chex.Array, log_pi: chex.Array,
              context_weights: chex.Array) -> chex.Array:
  """``sum_x rho(x) KL(q(.|x) || pi(.|x))`` from listed ``log q, log pi
  [X, N]`` (terms with ``q = 0`` are 0)."""
  q = jnp.exp(log_q)
  terms = jnp.where(q > 0, q * (log_q - log_pi), 0.0)
  return jnp.sum(context_weights * jnp.sum(terms, axis=-1))


def writer_sampler(writer: Writer, env_params, max_length: int,
                   vocab_size: int) -> Callable:
  """``sample(key, batch_size) -> (x, y)``: prompts ``x ~ rho`` of the
  token game and writer responses ``y ~ q(.|x)``."""

  def sample(key, batch_size):
    x_key, y_key = jax.random.split(key)
    x = tokens_lib.sample_contexts(env_params, x_key, batch_size)
    topic = tokens_lib.prompt_topic(x.tokens, x.mask)
    return x, sample_writer(writer, y_key, topic, max_length, vocab_size)

  return sample


@functools.partial(jax.jit, static_argnums=(1, 3, 4, 5))
def _fit(key, log_prob_fn, params, sample, num_steps, batch_size,
         learning_rate):
  optimizer = in_float32(optax.adam(learning_rate))

  def loss_fn(p, x, y):
    return -jnp.mean(log_prob_fn(p, x, y))

  def step(carry, key):
    p, opt_state = carry
    x, y = sample(key, batch_size)
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  keys = jax.random.split(key, num_steps)
  (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)),
                                     keys)
  return params, losses


def fit(key: chex.PRNGKey, log_prob_fn: Callable, params: Any,
        sample: Callable, num_steps: int, batch_size: int,
        learning_rate: float):
  """Supervised fine-tuning: ``num_steps`` adam steps on the mean negative
  log-likelihood ``-mean_b log pi_params(y_b|x_b)`` of batches ``(x, y) =
  sample(key_t, batch_size)``.

  Args:
    key: PRNG key of the batches (step ``t`` uses ``split(key,
      num_steps)[t]``).
    log_prob_fn: ``(params, x, y) -> [B]`` (the policy's ``log_prob``).
    params: the initial parameters.
    sample: ``(key, batch_size) -> (x, y)``, the corpus; hashable (a
      function defined once per corpus), as it is a static argument.
    num_steps: adam steps (static).
    batch_size: responses per step (static).
    learning_rate: adam's step size.

  Returns:
    ``(params, losses [num_steps])``: the fine-tuned parameters and each
    step's loss (before its update). The whole fit is one compiled call.
  """
  return _fit(key, log_prob_fn, params, sample, num_steps, batch_size,
              learning_rate)


def loss_curve(losses, points: int = 100) -> list[list[float]]:
  """``losses [T]`` summarized for a report: at most ``points`` pairs
  ``[last step, mean loss]`` over consecutive, nearly equal spans of
  steps."""
  losses = np.asarray(losses, np.float64)
  points = min(points, len(losses))
  edges = np.linspace(0, len(losses), points + 1).astype(int)
  return [[int(edges[i + 1]), float(losses[edges[i]:edges[i + 1]].mean())]
          for i in range(points)]
