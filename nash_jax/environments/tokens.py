"""An exactly solvable token environment: prompts, token responses short
enough to list, and an intransitive preference oracle on token sequences
(ALGORITHMS.md section 6, "Listable token game"; issue 9).

Token ids (shared with the transformer policy): ``PAD = 0``, ``BOS = 1``,
``EOS = 2`` and the ``V`` content tokens ``3 .. 3 + V - 1``; the model
vocabulary has ``V + 3`` ids (:func:`model_vocab_size`).

Responses. A response ``y`` is ``[L]`` int32 (``L = max_length``): ``k``
content tokens, then ``EOS``, then ``PAD``; a response of ``L`` content
tokens has no ``EOS`` (it was cut at ``L``). Its content is the leading run
of content tokens (whatever follows the first non-content token is ignored,
by the oracle and by :func:`response_index` alike). There are
``N = sum_{k=0}^{L} V^k`` responses (:func:`num_responses`; ``V = L = 4``:
341). Canonical order (:func:`list_responses`): by length ``k = 0..L``,
then lexicographically in the content tokens, i.e. response number::

  index(y) = sum_{j<k} V^j + sum_{t<k} (y_t - 3) V^(k-1-t)

(a mixed-radix code, :func:`response_index`). So index 0 is the empty
response ``[EOS, PAD, ...]``, indices ``1..V`` the one-token responses.

Prompts. ``X = num_prompts`` prompts of ``prompt_length`` tokens each
(``BOS`` included): ``[BOS, topic_x, c_1, ..., c_{P-2}]``. The TOPIC of
prompt ``x`` is the token right after ``BOS``, ``topic_x = 3 + (x mod V)``
(distinct across prompts as far as ``V`` allows); the fillers ``c_i`` are
uniform content tokens drawn by ``numpy.random.default_rng(seed)``. All
prompts have the same length; they are stored left-padded with a mask
anyway (:class:`~nash_jax.environments.core.TokenContexts`). The context
weights ``rho`` are uniform.

The oracle: three annotators, each with an interpretable score of the
response (:func:`annotator_scores`; ``valid`` marks the content tokens):

* ``on_topic``: ``s_1(x, y) = #{t : y_t = topic_x}``, mentions of the
  prompt's topic;
* ``concise``: ``s_2(y) = -#{t : valid_t}``, shorter is better;
* ``diverse``: ``s_3(x, y) = #{distinct content tokens of y other than
  topic_x}``, breadth beyond the topic.

Annotator ``k`` prefers by a Bradley-Terry link of sharpness ``tau_k``,
``P_k(y > y'|x) = sigmoid(tau_k (s_k(x, y) - s_k(x, y')))``, and the
population's preference is ``P = sum_k w_k P_k`` (weights ``w`` normalized
to sum 1; uniform by default). The scores are computed in JAX from the
token arrays for any ``L`` (sorting, not a vocabulary table), so the same
oracle judges responses far too long to list. ``P(y > y'|x) + P(y' > y|x) =
1`` holds exactly in floating point (:func:`population_preference`).

Why these three. The three scores compete for the same ``L`` slots: topic
mentions and off-topic breadth both need tokens, and each token costs the
concise annotator. No response is best on two of them at once, and the
majority preference is intransitive. The named Condorcet cycle
(:data:`CONDORCET_STYLES`, for every prompt, ``a, b, c`` the off-topic
tokens in increasing order)::

  terse [a]  >  on_topic [t, t, t]  >  diverse [t, a, b, c]  >  terse [a]

Each comparison's score differences are a permutation of ``(+2, +1, -3)``
(e.g. terse vs on_topic: topic -3, concise +2, diverse +1), so with equal
sharpness ``tau`` every edge has ``P = (sigmoid(2 tau) + sigmoid(tau) +
sigmoid(-3 tau)) / 3``: 0.622 at the default ``tau = 2``. Over all listed
responses there is no Condorcet winner, not even a weak one (a response
that nobody beats with ``P > 1/2``; :func:`condorcet_winners`). This holds
for every equal sharpness tried (``tau`` from 1/4 to 16) and for ``V >= 3,
L >= 4`` (tried: (3, 4), (4, 5), (5, 4), (3, 6)); it fails for strongly
unequal sharpness (e.g. ``tau = (0.25, 0.25, 1)``), and with ``L = 3`` or
``V = 2`` a short response (``[t, a]``, ``[a]``) is a weak winner (tied only
with its own permutations).

A length-loving annotator (``s = #content tokens``) in place of ``concise``
gives a winner: ``[t] * L`` is best on length and on topic at once, and
what any rival gains in breadth it has spent in topic mentions, so with
equal sharpness nothing beats it. (A search over fifteen such scores and
sharpness from 1/2 to 8 found no triple with a length lover and without a
brevity lover that is free of Condorcet winners.)

Defaults (:class:`TokenEnvSpec`): ``vocab_size = 4``, ``max_length = 4``
(``N = 341``), ``num_prompts = 4``, ``prompt_length = 3``, three
annotators of sharpness 2 and equal weight. The von Neumann winner of each
prompt mixes ``[t, t]``, ``[a, b]`` and ``[t, t, a, b]``, and
:func:`nash_jax.reference.equilibrium` solves ``pi*_beta`` of the induced
game in seconds. The fillers of a prompt do not enter the oracle: every
prompt's game is the same up to the relabelling of its topic (its
``pi_ref``, from the reference model, differs).

The environment (:func:`make_token_environment`) follows the protocol of
:mod:`nash_jax.environments.core`; its data is a :class:`TokenEnvParams`
built by :func:`token_env_params`. The reference model and the policy are
injected: the environment calls ``ref_log_prob_fn(reference, x, y)`` and
``policy.log_prob(params, x, y)`` and imports neither.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from nash_jax.environments.core import Environment, TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.games.core import Game

PAD = 0
BOS = 1
EOS = 2
FIRST_CONTENT = 3
NUM_SPECIAL = 3

DEFAULT_MAX_RESPONSES = 5000
ANNOTATORS = ('on_topic', 'concise', 'diverse')
ORACLES = ('bernoulli', 'probability')
DEFAULT_CHUNK_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class TokenEnvSpec:
  """Static settings of the token environment (hashable; see the module
  docstring for the meaning of each).

  Attributes:
    vocab_size: ``V``, content tokens (the model vocabulary is ``V + 3``).
    max_length: ``L``, maximum response length in tokens.
    num_prompts: ``X``.
    prompt_length: tokens per prompt, ``BOS`` and topic included (``>= 2``).
    seed: seed of the prompts' filler tokens.
    sharpness: ``tau_k`` per annotator, in the order of :data:`ANNOTATORS`.
    annotator_weights: ``w_k`` (normalized to sum 1).
    max_responses: refuse sizes with more than this many responses.
  """

  vocab_size: int = 4
  max_length: int = 4
  num_prompts: int = 4
  prompt_length: int = 3
  seed: int = 0
  sharpness: tuple[float, ...] = (2.0, 2.0, 2.0)
  annotator_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
  max_responses: int = DEFAULT_MAX_RESPONSES


# ----------------------------------------------------------------- responses


def model_vocab_size(vocab_size: int) -> int:
  """Token ids a model needs: ``V`` content tokens plus PAD, BOS, EOS."""
  return vocab_size + NUM_SPECIAL


def num_responses(vocab_size: int, max_length: int) -> int:
  """``N = sum_{k=0}^{L} V^k``: ``k < L`` tokens then EOS, or ``L`` tokens.
  """
  return sum(vocab_size ** k for k in range(max_length + 1))


def _count(vocab_size: int, max_length: int) -> str:
  """``N`` for a message: exact up to 10^15, else its order of magnitude."""
  if vocab_size == 1:
    return f'{max_length + 1:,}'
  digits = max_length * np.log10(vocab_size)
  if digits > 15:
    return f'~10^{digits:.0f}'
  return f'{num_responses(vocab_size, max_length):,}'


def check_listable(vocab_size: int, max_length: int,
                   max_responses: int = DEFAULT_MAX_RESPONSES) -> int:
  """Refuses sizes whose responses cannot be listed; returns ``N``.

  Raises:
    ConfigError: ``vocab_size < 1``, ``max_length < 1``, or ``N >
      max_responses`` (naming ``max_length`` and ``N``).
  """
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
    raise ConfigError('vocab_size', f'must be an integer >= 1, got '
                      f'{vocab_size!r}')
  if not isinstance(max_length, (int, np.integer)) or max_length < 1:
    raise ConfigError('max_length', f'must be an integer >= 1, got '
                      f'{max_length!r}')
  total, power = 0, 1
  for _ in range(max_length + 1):  # Stops early: L may be huge.
    total += power
    power *= vocab_size
    if total > max_responses:
      break
  if total > max_responses:
    raise ConfigError(
        'max_length', f'vocab_size={vocab_size} and max_length={max_length} '
        f'give N = {_count(vocab_size, max_length)} responses per prompt '
        f'(sum_k V^k), more than the '
        f'{max_responses:,} that can be listed; lower max_length or '
        f'vocab_size')
  return total


def make_response(content, max_length: int) -> np.ndarray:
  """``[L]`` int32: the content token ids, then EOS (if shorter than
  ``L``), then PAD."""
  content = [int(c) for c in content]
  if len(content) > max_length:
    raise ValueError(f'{len(content)} tokens do not fit max_length '
                     f'{max_length}')
  tail = [EOS] + [PAD] * (max_length - len(content) - 1)
  return np.asarray((content + tail)[:max_length], np.int32)


def list_responses(vocab_size: int, max_length: int,
                   max_responses: int = DEFAULT_MAX_RESPONSES) -> np.ndarray:
  """Every response, ``[N, L]`` int32, in the canonical order: by length
  ``k = 0..L``, then lexicographically (first token most significant).

  Raises:
    ConfigError: see :func:`check_listable`.
  """
  check_listable(vocab_size, max_length, max_responses)
  blocks = []
  for k in range(max_length + 1):
    codes = np.arange(vocab_size ** k)
    block = np.full((len(codes), max_length), PAD, np.int32)
    for t in range(k):
      block[:, t] = FIRST_CONTENT + (codes // vocab_size ** (k - 1 - t)) % (
          vocab_size)
    if k < max_length:
      block[:, k] = EOS
    blocks.append(block)
  return np.concatenate(blocks)


def content_mask(y: chex.Array) -> chex.Array:
  """``[..., L]`` bool: the leading run of content tokens (ids ``>= 3``),
  i.e. the tokens before EOS (or before any other non-content token)."""
  return jnp.cumprod(y >= FIRST_CONTENT, axis=-1).astype(bool)


def response_length(y: chex.Array) -> chex.Array:
  """``[...]`` int32: the number ``k`` of content tokens of ``y [..., L]``.
  """
  return jnp.sum(content_mask(y), axis=-1, dtype=jnp.int32)


def _index_tables(vocab_size: int, max_length: int):
  """Offsets ``O[k] = sum_{j<k} V^j`` ``[L+1]`` and digit weights
  ``W[k, t] = V^(k-1-t)`` for ``t < k`` (else 0), ``[L+1, L]``."""
  offsets = np.array([num_responses(vocab_size, k - 1) if k else 0
                      for k in range(max_length + 1)], np.int64)
  weights = np.zeros((max_length + 1, max_length), np.int64)
  for k in range(max_length + 1):
    for t in range(k):
      weights[k, t] = vocab_size ** (k - 1 - t)
  return offsets.astype(np.int32), weights.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def response_index(y: chex.Array, vocab_size: int,
                   max_length: int) -> chex.Array:
  """The position of each response in :func:`list_responses`, ``[...]``
  int32 (jittable; ``vocab_size`` and ``max_length`` are static).

  ``index(y) = sum_{j<k} V^j + sum_{t<k} (y_t - 3) V^(k-1-t)`` with ``k``
  the number of content tokens. Content ids must lie in ``3 .. 3 + V - 1``
  (not checked).

  Args:
    y: ``[..., L]`` int responses.
    vocab_size: ``V``.
    max_length: ``L`` (must equal ``y.shape[-1]``).

  Raises:
    ConfigError: sizes that cannot be listed (:func:`check_listable`).
  """
  check_listable(vocab_size, max_length, np.iinfo(np.int32).max)
  chex.assert_axis_dimension(y, -1, max_length)
  offsets, weights = _index_tables(vocab_size, max_length)
  valid = content_mask(y)
  k = jnp.sum(valid, axis=-1)
  digits = jnp.where(valid, y - FIRST_CONTENT, 0).astype(jnp.int32)
  code = jnp.sum(digits * jnp.asarray(weights)[k], axis=-1)
  return (jnp.asarray(offsets)[k] + code).astype(jnp.int32)


# ------------------------------------------------------------------- prompts


def prompt_topics(num_prompts: int, vocab_size: int) -> np.ndarray:
  """``topic_x = 3 + (x mod V)``, ``[X]`` int32."""
  return (FIRST_CONTENT + np.arange(num_prompts) % vocab_size).astype(
      np.int32)


def make_prompts(spec: TokenEnvSpec) -> tuple[np.ndarray, np.ndarray]:
  """The prompts ``[BOS, topic_x, fillers...]``: tokens ``[X, P]`` int32
  (left-padded; all prompts have length ``P`` here) and mask ``[X, P]``
  bool. Fillers are uniform content tokens from ``default_rng(seed)``."""
  check_spec(spec)
  num, length = spec.num_prompts, spec.prompt_length
  rng = np.random.default_rng(spec.seed)
  fillers = FIRST_CONTENT + rng.integers(0, spec.vocab_size,
                                         (num, length - 2))
  tokens = np.concatenate([
      np.full((num, 1), BOS), prompt_topics(num, spec.vocab_size)[:, None],
      fillers], axis=1).astype(np.int32)
  return tokens, np.ones((num, length), bool)


def prompt_topic(tokens: chex.Array, mask: chex.Array) -> chex.Array:
  """The topic of left-padded prompts: the token right after ``BOS`` (the
  first unmasked token), ``[B]`` int32 from ``tokens, mask [B, P]``."""
  chex.assert_equal_shape([tokens, mask])
  start = jnp.argmax(mask, axis=-1)
  return jnp.take_along_axis(tokens, (start + 1)[..., None], axis=-1)[..., 0]


def check_spec(spec: TokenEnvSpec) -> int:
  """Refuses unusable settings before any work; returns ``N``.

  Raises:
    ConfigError: naming the setting (``vocab_size``, ``max_length``,
      ``num_prompts``, ``prompt_length``, ``sharpness``,
      ``annotator_weights``).
  """
  n = check_listable(spec.vocab_size, spec.max_length, spec.max_responses)
  if spec.num_prompts < 1:
    raise ConfigError('num_prompts', f'must be >= 1, got {spec.num_prompts}')
  if spec.prompt_length < 2:
    raise ConfigError('prompt_length', f'must be >= 2 (BOS and the topic), '
                      f'got {spec.prompt_length}')
  k = len(ANNOTATORS)
  sharpness = np.asarray(spec.sharpness, float)
  weights = np.asarray(spec.annotator_weights, float)
  if sharpness.shape != (k,) or not np.all(np.isfinite(sharpness)) or np.any(
      sharpness < 0):
    raise ConfigError('sharpness', f'must be {k} finite values >= 0 (one '
                      f'per annotator {ANNOTATORS}), got {spec.sharpness}')
  if weights.shape != (k,) or not np.all(np.isfinite(weights)) or np.any(
      weights < 0) or not weights.sum() > 0:
    raise ConfigError('annotator_weights', f'must be {k} finite values >= 0 '
                      f'with a positive sum, got {spec.annotator_weights}')
  return n


# -------------------------------------------------------------------- oracle


def annotator_scores(topic: chex.Array, y: chex.Array,
                     dtype=None) -> chex.Array:
  """The annotators' scores ``s_k(x, y)``, ``[..., 3]`` in the order of
  :data:`ANNOTATORS`: topic mentions, minus the length, and the number of
  distinct content tokens other than the topic (counted by sorting, so any
  ``L`` and any vocabulary).

  Args:
    topic: ``[...]`` the prompt's topic token.
    y: ``[..., L]`` responses.
    dtype: float dtype of the scores (default: JAX's default float).
  """
  dtype = dtype or jnp.result_type(float)
  valid = content_mask(y)
  on_topic = jnp.sum(valid & (y == topic[..., None]), axis=-1)
  length = jnp.sum(valid, axis=-1)
  off = jnp.sort(jnp.where(valid & (y != topic[..., None]), y, -1), axis=-1)
  first = (off[..., 1:] != off[..., :-1]) & (off[..., 1:] >= 0)
  distinct = jnp.sum(first, axis=-1) + (off[..., 0] >= 0)
  return jnp.stack([on_topic, -length, distinct], axis=-1).astype(dtype)


def population_preference(score_diff: chex.Array, sharpness: chex.Array,
                          weights: chex.Array) -> chex.Array:
  """``P = sum_k w_k sigmoid(tau_k d_k)`` from ``d_k = s_k(y) - s_k(y')``.

  Computed so that ``P(d) + P(-d) = 1`` exactly in floating point: the
  antisymmetric part ``A = sum_k w_k sign(d_k) (sigmoid(tau_k |d_k|) -
  1/2)`` flips sign exactly with ``d`` (same terms, same order), and with
  ``h = min(1/2 + |A|, 1)`` the result is ``h`` if ``A >= 0``, else ``1 -
  h``, which is exact for ``h`` in ``[1/2, 1]`` (Sterbenz). ``P(0) = 1/2``.

  Args:
    score_diff: ``[..., K]``.
    sharpness: ``[K]`` ``tau_k >= 0``.
    weights: ``[K]`` ``w_k >= 0``, summing to 1.

  Returns:
    ``[...]`` probabilities in ``[0, 1]``.
  """
  num = score_diff.shape[-1]
  chex.assert_shape([sharpness, weights], (num,))
  shape = (1,) * (score_diff.ndim - 1) + (num,)  # No rank promotion.
  sharpness, weights = sharpness.reshape(shape), weights.reshape(shape)
  half_gap = jax.nn.sigmoid(sharpness * jnp.abs(score_diff)) - 0.5
  # The sign comes last: a multiply-add that XLA may fuse into an FMA then
  # multiplies by +-1 or 0 (exact), so fused and unfused code round alike.
  terms = (weights * half_gap) * jnp.sign(score_diff)
  antisym = terms[..., 0]
  for k in range(1, num):  # A fixed order, the same for every shape.
    antisym = antisym + terms[..., k]
  high = jnp.minimum(0.5 + jnp.abs(antisym), 1.0)
  return jnp.where(antisym >= 0, high, 1.0 - high)


def oracle_probability(topic: chex.Array, y: chex.Array, y_prime: chex.Array,
                       sharpness: chex.Array,
                       weights: chex.Array) -> chex.Array:
  """The ground truth ``P(y > y' | x)`` for topics ``[...]`` and responses
  ``[..., L]``: :func:`population_preference` of score differences."""
  chex.assert_equal_shape([y, y_prime])
  dtype = sharpness.dtype
  diff = (annotator_scores(topic, y, dtype) -
          annotator_scores(topic, y_prime, dtype))
  return population_preference(diff, sharpness, weights)


def preference_tensor_of(topics: chex.Array, responses: chex.Array,
                         sharpness: chex.Array,
                         weights: chex.Array) -> chex.Array:
  """``P[x, y, y']`` for topics ``[X]`` and responses ``[N, L]``: the
  scores of every response once, then the same link as
  :func:`oracle_probability` on all differences. ``[X, N, N]``."""
  chex.assert_rank([topics, responses], [1, 2])
  num = responses.shape[0]
  topic_rows = jnp.broadcast_to(topics[:, None], (topics.shape[0], num))
  scores = annotator_scores(topic_rows, jnp.broadcast_to(
      responses, (topics.shape[0],) + responses.shape), sharpness.dtype)
  diff = scores[:, :, None, :] - scores[:, None, :, :]
  return population_preference(diff, sharpness, weights)


def condorcet_winners(preferences, weak: bool = True) -> np.ndarray:
  """Per context, a Condorcet winner's index, or -1 where there is none.

  A (strict) Condorcet winner ``y`` has ``P(y > y'|x) > 1/2`` for every
  ``y' != y``; a weak one ``>= 1/2`` (nobody beats it). Where several weak
  winners exist (ties), the first is returned.

  Args:
    preferences: ``[X, n, n]``.
    weak: look for weak winners (a stronger check of intransitivity).

  Returns:
    ``[X]`` int.
  """
  prefs = np.asarray(preferences, np.float64)
  off_diagonal = ~np.eye(prefs.shape[-1], dtype=bool)
  wins = prefs >= 0.5 if weak else prefs > 0.5
  beats_all = np.all(wins | ~off_diagonal, axis=-1)
  return np.where(beats_all.any(axis=-1), np.argmax(beats_all, axis=-1), -1)


# ------------------------------------------------------------------ styles


class Style(NamedTuple):
  """A named response style: ``build(spec, prompt) -> [L]`` int32."""

  description: str
  build: Callable[[TokenEnvSpec, int], np.ndarray]


def _style_tokens(spec: TokenEnvSpec, prompt: int):
  if spec.vocab_size < 4 or spec.max_length < 4:
    raise ConfigError('vocab_size' if spec.vocab_size < 4 else 'max_length',
                      'the Condorcet styles need vocab_size >= 4 and '
                      f'max_length >= 4, got {spec.vocab_size} and '
                      f'{spec.max_length}')
  topic = int(prompt_topics(spec.num_prompts, spec.vocab_size)[prompt])
  content = FIRST_CONTENT + np.arange(spec.vocab_size)
  return topic, [int(c) for c in content if c != topic]


def _terse(spec, prompt):
  _, off = _style_tokens(spec, prompt)
  return make_response([off[0]], spec.max_length)


def _on_topic(spec, prompt):
  topic, _ = _style_tokens(spec, prompt)
  return make_response([topic] * 3, spec.max_length)


def _diverse(spec, prompt):
  topic, off = _style_tokens(spec, prompt)
  return make_response([topic] + off[:3], spec.max_length)


# Each style beats the next, and the last beats the first (for every prompt,
# at the default sharpness): terse > on_topic > diverse > terse.
CONDORCET_STYLES: dict[str, Style] = {
    'terse': Style('one off-topic token [a]: short, a little breadth, '
                   'no topic', _terse),
    'on_topic': Style('the topic three times [t, t, t]: on topic, '
                      'repetitive', _on_topic),
    'diverse': Style('the topic then three off-topic tokens [t, a, b, c]: '
                     'broad, long', _diverse),
}


# --------------------------------------------------------------- environment


@flax.struct.dataclass
class TokenEnvParams:
  """The token environment's data (a pytree).

  Attributes:
    prompts: ``[X, P]`` int32 left-padded prompt tokens.
    prompt_mask: ``[X, P]`` bool.
    context_weights: ``[X]`` ``rho``.
    responses: ``[N, L]`` int32, every response in the canonical order.
    sharpness: ``[K]`` annotators' ``tau_k``.
    annotator_weights: ``[K]`` ``w_k`` (sum 1).
    ref_log_policy: ``[X, N]`` ``log pi_ref`` over the listed responses
      (rows normalized).
    reference: the frozen reference model's params (any pytree, or None).
  """

  prompts: chex.Array
  prompt_mask: chex.Array
  context_weights: chex.Array
  responses: chex.Array
  sharpness: chex.Array
  annotator_weights: chex.Array
  ref_log_policy: chex.Array
  reference: Any = None

  @property
  def num_contexts(self) -> int:
    return self.prompts.shape[0]

  @property
  def num_responses(self) -> int:
    return self.responses.shape[0]


def contexts_at(env_params: TokenEnvParams, index: chex.Array) -> TokenContexts:
  """The context data of prompts ``index [B]``."""
  return TokenContexts(index=index.astype(jnp.int32),
                       tokens=env_params.prompts[index],
                       mask=env_params.prompt_mask[index])


def all_contexts(env_params: TokenEnvParams) -> TokenContexts:
  """Every prompt ``0..X-1``."""
  return contexts_at(env_params, jnp.arange(env_params.num_contexts))


@functools.partial(jax.jit, static_argnums=2)
def sample_contexts(env_params: TokenEnvParams, key,
                    batch_size: int) -> TokenContexts:
  """``x_1..x_B ~ rho`` by inverse CDF (one uniform each; as
  :func:`nash_jax.games.oracle.sample_contexts`)."""
  cdf = jnp.cumsum(env_params.context_weights)
  u = jax.random.uniform(key, (batch_size, 1), cdf.dtype)
  index = jnp.sum(cdf[None, :] <= u * cdf[-1], axis=-1)
  return contexts_at(env_params,
                     jnp.minimum(index, env_params.num_contexts - 1))


@jax.jit
def preference_probability(env_params: TokenEnvParams, x: TokenContexts,
                           y: chex.Array, y_prime: chex.Array) -> chex.Array:
  """``P(y > y' | x)`` per sample, ``[B]``, read from the prompt tokens
  (the topic) and the response tokens."""
  topic = prompt_topic(x.tokens, x.mask)
  return oracle_probability(topic, y, y_prime, env_params.sharpness,
                            env_params.annotator_weights)


@jax.jit
def preference_tensor(env_params: TokenEnvParams) -> chex.Array:
  """``P[x, y, y']`` over every prompt and listed response, ``[X, N, N]``,
  from the same oracle as :func:`preference_probability`."""
  topics = prompt_topic(env_params.prompts, env_params.prompt_mask)
  return preference_tensor_of(topics, env_params.responses,
                              env_params.sharpness,
                              env_params.annotator_weights)


@functools.partial(jax.jit, static_argnums=(0, 3))
def listed_log_probs(log_prob_fn: Callable, params, env_params: TokenEnvParams,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> chex.Array:
  """``log_prob_fn(params, x, y)`` for every prompt and listed response,
  ``[X, N]``: the ``X * N`` pairs in batches of at most ``chunk_size``
  (a ``lax.map`` over chunks; the last chunk is padded with response 0).
  Jittable."""
  num_x, num_y = env_params.num_contexts, env_params.num_responses
  total = num_x * num_y
  pair_x = jnp.repeat(jnp.arange(num_x), num_y)
  pair_y = jnp.tile(jnp.arange(num_y), num_x)

  def batch(ix, iy):
    return log_prob_fn(params, contexts_at(env_params, ix),
                       env_params.responses[iy])

  if total <= chunk_size:
    return batch(pair_x, pair_y).reshape(num_x, num_y)
  num_chunks = -(-total // chunk_size)
  pad = num_chunks * chunk_size - total
  pair_x = jnp.pad(pair_x, (0, pad)).reshape(num_chunks, chunk_size)
  pair_y = jnp.pad(pair_y, (0, pad)).reshape(num_chunks, chunk_size)
  out = jax.lax.map(lambda ab: batch(*ab), (pair_x, pair_y))
  return out.reshape(-1)[:total].reshape(num_x, num_y)


def _normalize_rows(log_policy: chex.Array) -> chex.Array:
  return log_policy - jax.scipy.special.logsumexp(log_policy, axis=-1,
                                                  keepdims=True)


def token_env_params(spec: TokenEnvSpec, reference: Any = None,
                     ref_log_policy=None, ref_log_prob_fn=None,
                     dtype=None, chunk_size: int = DEFAULT_CHUNK_SIZE
                     ) -> TokenEnvParams:
  """Builds the environment's data (host side, once).

  ``log pi_ref`` over the listed responses is, in order of precedence:
  ``ref_log_policy`` (``[X, N]``), or ``ref_log_prob_fn(reference, x, y)``
  evaluated on every pair, or uniform (only when ``reference`` is None).
  Rows are renormalized (a model that follows the EOS convention sums to 1
  already, up to rounding).

  Args:
    spec: the settings (checked first).
    reference: the frozen reference model's params, or None.
    ref_log_policy: ``[X, N]`` ``log pi_ref``, or None.
    ref_log_prob_fn: ``(reference, x, y) -> [B]``, or None.
    dtype: float dtype (default: JAX's default float).
    chunk_size: pairs per reference call.

  Raises:
    ConfigError: an unusable spec.
    ValueError: a reference without a way to score it, or a
      ``ref_log_policy`` of the wrong shape.
  """
  n = check_spec(spec)
  dtype = dtype or jnp.result_type(float)
  prompts, mask = make_prompts(spec)
  num_x = spec.num_prompts
  weights = np.asarray(spec.annotator_weights, np.float64)
  params = TokenEnvParams(
      prompts=jnp.asarray(prompts), prompt_mask=jnp.asarray(mask),
      context_weights=jnp.full((num_x,), 1.0 / num_x, dtype),
      responses=jnp.asarray(list_responses(spec.vocab_size, spec.max_length,
                                           spec.max_responses)),
      sharpness=jnp.asarray(spec.sharpness, dtype),
      annotator_weights=jnp.asarray(weights / weights.sum(), dtype),
      ref_log_policy=jnp.full((num_x, n), -np.log(n), dtype),
      reference=reference)
  if ref_log_policy is None and ref_log_prob_fn is not None:
    ref_log_policy = listed_log_probs(ref_log_prob_fn, reference, params,
                                      chunk_size)
  elif ref_log_policy is None and reference is not None:
    raise ValueError('token_env_params: a reference model needs '
                     'ref_log_prob_fn (or its ref_log_policy) to list pi_ref')
  if ref_log_policy is not None:
    ref_log_policy = np.asarray(ref_log_policy, np.float64)
    if ref_log_policy.shape != (num_x, n):
      raise ValueError(f'ref_log_policy must have shape [{num_x}, {n}], got '
                       f'{list(ref_log_policy.shape)}')
    ref_log_policy = ref_log_policy - scipy.special.logsumexp(
        ref_log_policy, axis=-1, keepdims=True)
    params = params.replace(ref_log_policy=jnp.asarray(ref_log_policy, dtype))
  return params


@jax.jit
def game_of(env_params: TokenEnvParams) -> Game:
  """The exact tabular game: ``P [X, N, N]``, ``rho``, ``pi_ref [X, N]``
  (rows renormalized)."""
  ref_policy = jnp.exp(_normalize_rows(env_params.ref_log_policy))
  ref_policy = ref_policy / jnp.sum(ref_policy, axis=-1, keepdims=True)
  return Game(preferences=preference_tensor(env_params),
              context_weights=env_params.context_weights,
              ref_policy=ref_policy)


def induced_game(spec: TokenEnvSpec, ref_log_policy) -> Game:
  """The game a spec and a listed reference ``log pi_ref [X, N]`` induce
  (for writing a game file: ``np.savez(path, preferences=...,
  ref_policy=..., context_weights=...)``, read by
  :func:`nash_jax.games.files.load_game`)."""
  return game_of(token_env_params(spec, ref_log_policy=ref_log_policy))


def condorcet_cycle_probabilities(env_params: TokenEnvParams,
                                  spec: TokenEnvSpec) -> np.ndarray:
  """``[X, 3]``: ``P(terse > on_topic)``, ``P(on_topic > diverse)``,
  ``P(diverse > terse)`` per prompt (all ``> 1/2``: a Condorcet cycle)."""
  styles = np.stack([np.stack([style.build(spec, x)
                               for style in CONDORCET_STYLES.values()])
                     for x in range(env_params.num_contexts)])  # [X, 3, L]
  num_x = env_params.num_contexts
  index = jnp.repeat(jnp.arange(num_x), 3)
  flat = lambda a: jnp.asarray(a.reshape(num_x * 3, -1))
  prob = preference_probability(env_params, contexts_at(env_params, index),
                                flat(styles),
                                flat(np.roll(styles, -1, axis=1)))
  return np.asarray(prob).reshape(num_x, 3)


def make_token_environment(spec: TokenEnvSpec, ref_log_prob_fn: Callable,
                           oracle: str = 'bernoulli',
                           chunk_size: int = DEFAULT_CHUNK_SIZE
                           ) -> Environment:
  """The token environment (protocol of :mod:`nash_jax.environments.core`).

  Args:
    spec: the settings (checked here, before any work).
    ref_log_prob_fn: ``(reference_params, x, y) -> [B]``, the reference
      model's ``log pi_ref(y|x)``; the environment never imports the model.
    oracle: ``'bernoulli'`` (``o ~ Bernoulli(P)``, a human label) or
      ``'probability'`` (``o = P``).
    chunk_size: pairs per ``policy.log_prob`` call in ``log_policy``.

  Returns:
    An :class:`~nash_jax.environments.core.Environment` over
    :class:`TokenEnvParams` (from :func:`token_env_params`).
  """
  check_spec(spec)
  if oracle not in ORACLES:
    raise ConfigError('oracle', f'unknown oracle {oracle!r}; expected one '
                      f'of {ORACLES}')

  def ref_log_prob(env_params: TokenEnvParams, x: TokenContexts, y):
    return ref_log_prob_fn(env_params.reference, x, y)

  def outcomes(env_params: TokenEnvParams, key, x: TokenContexts, y,
               y_prime):
    prob = preference_probability(env_params, x, y, y_prime)
    if oracle == 'probability':
      return prob
    return jax.random.bernoulli(key, prob).astype(prob.dtype)

  def log_policy(policy, params, env_params: TokenEnvParams):
    return listed_log_probs(policy.log_prob, params, env_params, chunk_size)

  return Environment(name='tokens', contexts=sample_contexts,
                     all_contexts=all_contexts, ref_log_prob=ref_log_prob,
                     outcomes=outcomes,
                     reference=lambda env_params: env_params.reference,
                     log_policy=log_policy, game=game_of)
