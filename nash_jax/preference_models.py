r"""Preference oracles on token sequences behind one protocol: the ground-truth
annotator population, learned models (a Bradley-Terry reward and a pairwise
preference model on a transformer with a scalar head) and an LLM judge
(ALGORITHMS.md section 6; issue 10, item 2).

The protocol (:class:`PreferenceOracle`): pairs of responses for a batch of
prompts in, ``P(y > y' | x)`` out::

  probability(params, x: TokenContexts, y [B, L], y_prime [B, L]) -> [B]

``params`` is the oracle's data: the annotators' sharpness and weights
(:class:`AnnotatorParams`, or the environment's ``TokenEnvParams``), a
learned model's parameters, or the judge language model's parameters. Every
function is pure, jittable and vmappable; parameters are plain dict pytrees.

Responses follow :mod:`nash_jax.policies.sequence`: content tokens, then
``EOS``, then padding; a response cut at ``L`` has no ``EOS``. The tokens
after the first ``EOS`` are never read: every model replaces them by
``PAD`` and masks them as attention keys, and RoPE positions count real
tokens only (``cumsum(mask) - 1``), so a padded sequence gives exactly the
result of its unpadded concatenation (up to float rounding).

Exact antisymmetry. All three implementations satisfy ``P(y > y'|x) +
P(y' > y|x) = 1`` and ``P(y > y|x) = 1/2`` exactly in floating point, not
just mathematically. Two devices make it so:

* the pair is put in a canonical order first (:func:`canonical_pairs`:
  lexicographic on the tokens through the first ``EOS``), the model is run
  on ``(lo, hi)`` and the sign of its antisymmetric statistic is flipped
  when ``y`` came second; so ``(y, y')`` and ``(y', y)`` run the very same
  computation, and equal responses get exactly ``1/2``;
* the link is evaluated as in
  :func:`nash_jax.environments.tokens.population_preference`:
  ``h = sigmoid(|d|)`` (or ``min(1/2 + |A|, 1)``) in ``[1/2, 1]``, and
  ``1 - h`` is exact there (Sterbenz), so ``P(d) + P(-d) = 1``.

Learned models (:class:`PreferenceModel`). A scalar-head transformer
(:func:`scorer_score`) reads a token sequence, left-padded prompt then
response segments, and returns ``w . h_last + b`` with ``h_last`` the
final-normed hidden state at the last real token
(:func:`nash_jax.policies.transformer.hidden_states`). Parameters::

  {'body': transformer params (its own TransformerConfig),
   'head': {'w': [D], 'b': []}}

* Bradley-Terry reward (Bradley & Terry 1952; the RLHF reward model of
  Christiano et al. 2017, arXiv 1706.03741, and Ouyang et al. 2022, arXiv
  2203.02155): ``r(x, y)`` = score of ``[prompt, y]``, ``P(y > y'|x) =
  sigmoid(r(x, y) - r(x, y'))`` (:func:`make_reward_model`; its
  ``reward(params, x, y) -> [B]`` is what RLHF maximizes).
* Pairwise preference model (PairRM, Jiang et al. 2023, arXiv 2306.02561;
  the general preference model of Munos et al. 2023, arXiv 2312.00886):
  ``f(x, y, y')`` = score of ``[prompt, y, SEP, y']``, ``P(y > y'|x) =
  sigmoid(f(x, y, y') - f(x, y', y))``, antisymmetric by construction and
  able to represent intransitive preferences, which no reward can
  (:func:`make_pairwise_model`).

Both are trained by :func:`fit`: binary cross-entropy of the logit ``d``
(``P = sigmoid(d)``) against labels ``o`` (Bernoulli outcomes or
probabilities), ``L = E[o softplus(-d) + (1 - o) softplus(d)]``, with
optax's Adam on minibatches drawn with replacement inside a jitted
``lax.scan``. :func:`make_comparisons` builds labelled comparison sets from
any response sampler and any oracle; :func:`evaluate_fit` scores a fit
against the ground truth on held-out pairs.

LLM judge (:func:`make_judge`; LLM-as-a-judge, Zheng et al. 2023, arXiv
2306.05685, who measure its position bias and propose evaluating both
orders): a language model reads ``[prefix, prompt, marker_1, y, marker_2,
y', suffix]`` (a :class:`JudgeTemplate` of token-id segments) and
``p(x, y, y')`` is its next-token softmax restricted to the two answer
tokens, ``p = exp(l_1) / (exp(l_1) + exp(l_2)) = sigmoid(l_1 - l_2)``.
Averaged over both orders,

  P(y > y'|x) = 1/2 [p(x, y, y') + 1 - p(x, y', y)],

which removes a constant position bias and makes ``P + P^T = 1``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from nash_jax.environments import tokens as token_env
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.policies.sequence import (
  BOS_ID,
  EOS_ID,
  FIRST_CONTENT_ID,
  PAD_ID,
)
from nash_jax.policies.transformer import (
  TransformerConfig,
  hidden_states,
  init_params,
  validate_transformer_config,
)
from nash_jax.precision import in_float32

ORACLE_NAMES = ('annotators', 'learned', 'judge')
MODEL_KINDS = ('bradley_terry', 'pairwise')
OUTCOMES = ('bernoulli', 'probability')

__all__ = [
    'AnnotatorParams', 'Comparisons', 'JudgeTemplate', 'MODEL_KINDS',
    'ORACLE_NAMES', 'OUTCOMES', 'Pairs', 'PreferenceModel',
    'PreferenceOracle', 'annotator_oracle', 'annotator_params',
    'canonical_pairs', 'evaluate_fit', 'fit', 'init_scorer',
    'judge_first_probability', 'judge_sequence', 'logit_probability',
    'make_comparisons', 'make_judge', 'make_pairwise_model',
    'make_preference_model', 'make_reward_model', 'oracle_outcomes', 'pairwise_loss', 'scorer_score',
    'synthetic_judge_template', 'with_oracle',
]


# ------------------------------------------------------------------ protocol


class PreferenceOracle(NamedTuple):
  """A preference oracle on token sequences.

  Attributes:
    name: 'annotators', 'bradley_terry', 'pairwise' or 'judge'.
    probability: ``(params, x: TokenContexts, y [B, L], y_prime [B, L]) ->
      [B]``, ``P(y > y' | x)``; pure, jittable, vmappable, with ``P(y >
      y') + P(y' > y) = 1`` and ``P(y > y) = 1/2`` exactly.
  """

  name: str
  probability: Callable[[Any, TokenContexts, chex.Array, chex.Array],
                        chex.Array]


def _check_outcome(outcome: str):
  if outcome not in OUTCOMES:
    raise ConfigError('outcome', f'unknown outcome {outcome!r}; expected '
                      f'one of {OUTCOMES}')


def oracle_outcomes(oracle: PreferenceOracle, params, key: chex.PRNGKey,
                    x: TokenContexts, y: chex.Array, y_prime: chex.Array,
                    outcome: str = 'bernoulli') -> chex.Array:
  """One preference query per pair: ``o ~ Bernoulli(P(y > y'|x))`` (a
  human-style label) or ``o = P`` (``outcome='probability'``). ``[B]``."""
  _check_outcome(outcome)
  prob = oracle.probability(params, x, y, y_prime)
  if outcome == 'probability':
    return prob
  return jax.random.bernoulli(key, prob).astype(prob.dtype)


def with_oracle(env, oracle: PreferenceOracle, oracle_params,
                outcome: str = 'bernoulli'):
  """The environment ``env`` with its training queries answered by
  ``oracle``; everything else (contexts, reference, the exact ``game``
  that evaluation reads) unchanged, so evaluation stays on the ground
  truth.

  ``oracle_params`` is closed over: inside a ``jit`` its arrays become
  compile-time constants, which is fine for the small models of the
  listable game; a large judge should be threaded through the step's
  arguments instead.
  """
  _check_outcome(outcome)

  def outcomes(env_params, key, x, y, y_prime):
    del env_params
    return oracle_outcomes(oracle, oracle_params, key, x, y, y_prime,
                           outcome)

  return env._replace(outcomes=outcomes)


# ------------------------------------------------------------ exact helpers


def logit_probability(d: chex.Array) -> chex.Array:
  """``sigmoid(d)`` with ``P(d) + P(-d) = 1`` exactly: ``h =
  sigmoid(|d|)`` in ``[1/2, 1]``, then ``h`` or ``1 - h`` (exact, Sterbenz).
  """
  h = jax.nn.sigmoid(jnp.abs(d))
  return jnp.where(d >= 0, h, 1.0 - h)


def _antisymmetric_probability(a: chex.Array) -> chex.Array:
  """``1/2 + a`` for an antisymmetric ``a`` in ``[-1/2, 1/2]``, with
  ``P(a) + P(-a) = 1`` exactly (as ``population_preference``)."""
  high = jnp.minimum(0.5 + jnp.abs(a), 1.0)
  return jnp.where(a >= 0, high, 1.0 - high)


def _response_mask(y: chex.Array, eos_id: int) -> chex.Array:
  """True through the first ``eos_id`` (every token of a response without
  one): :func:`nash_jax.policies.sequence.response_mask` for any EOS id."""
  is_eos = (y == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


def _clean(y: chex.Array, eos_id: int = EOS_ID,
           pad_id: int = PAD_ID) -> tuple[chex.Array, chex.Array]:
  """``(tokens, mask)``: ``y`` with every token after the first EOS
  replaced by PAD, and the mask of the tokens through the first EOS."""
  mask = _response_mask(y, eos_id)
  return jnp.where(mask, y, pad_id).astype(jnp.int32), mask


def canonical_pairs(y: chex.Array, y_prime: chex.Array, eos_id: int = EOS_ID,
                    pad_id: int = PAD_ID):
  """Puts each pair in a canonical order, so that a pair and its swap run
  the same computation.

  The responses are compared lexicographically on their tokens through the
  first EOS (padding replaced by PAD, so its content never matters).

  Args:
    y: ``[B, L]`` int responses.
    y_prime: ``[B, L]``.
    eos_id: the end-of-sequence id (static).
    pad_id: the id that replaces the tokens after it (static).

  Returns:
    ``(lo, hi, flip, same)``: ``lo, hi [B, L]`` the cleaned responses in
    increasing order, ``flip [B]`` bool (True where ``y`` is ``hi``),
    ``same [B]`` bool (the responses are equal through their first EOS).
  """
  chex.assert_rank([y, y_prime], 2)
  chex.assert_equal_shape([y, y_prime])
  a, _ = _clean(y, eos_id, pad_id)
  b, _ = _clean(y_prime, eos_id, pad_id)
  differ = a != b
  first = jnp.argmax(differ, axis=-1)[:, None]
  a_first = jnp.take_along_axis(a, first, axis=-1)[:, 0]
  b_first = jnp.take_along_axis(b, first, axis=-1)[:, 0]
  flip = a_first > b_first
  same = ~jnp.any(differ, axis=-1)
  lo = jnp.where(flip[:, None], b, a)
  hi = jnp.where(flip[:, None], a, b)
  return lo, hi, flip, same


def _orient(stat: chex.Array, flip: chex.Array, same: chex.Array):
  """A canonical antisymmetric statistic of ``(lo, hi)`` turned into that
  of ``(y, y')``: negated where flipped (exact), 0 where the responses are
  equal."""
  return jnp.where(same, jnp.zeros_like(stat), jnp.where(flip, -stat, stat))


def _segments(*parts):
  """Concatenates ``(tokens [B, n], mask [B, n])`` segments along time."""
  tokens = jnp.concatenate([p[0].astype(jnp.int32) for p in parts], axis=1)
  mask = jnp.concatenate([p[1].astype(bool) for p in parts], axis=1)
  return tokens, mask


def _constant(ids, batch: int):
  """A template segment ``ids`` repeated over the batch, all real."""
  ids = jnp.asarray(ids, jnp.int32).reshape(1, -1)
  tokens = jnp.broadcast_to(ids, (batch, ids.shape[1]))
  return tokens, jnp.ones(tokens.shape, bool)


def _positions(mask: chex.Array) -> chex.Array:
  """RoPE positions counting real tokens only: ``max(cumsum(mask) - 1,
  0)``."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def _last_real(mask: chex.Array) -> chex.Array:
  """``[B, 1]`` index of the last True of each row of ``mask [B, T]``."""
  last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
  return last.astype(jnp.int32)[:, None]


def _prompt(x: TokenContexts):
  return x.tokens.astype(jnp.int32), x.mask.astype(bool)


# ---------------------------------------------------------------- annotators


@flax.struct.dataclass
class AnnotatorParams:
  """The annotator population's data (field names as in
  :class:`~nash_jax.environments.tokens.TokenEnvParams`, which therefore
  serves as well).

  Attributes:
    sharpness: ``[K]`` ``tau_k``.
    annotator_weights: ``[K]`` ``w_k`` (summing to 1).
  """

  sharpness: chex.Array
  annotator_weights: chex.Array


def annotator_params(env_params) -> AnnotatorParams:
  """The annotators' data of a ``TokenEnvParams`` (or anything with
  ``sharpness`` and ``annotator_weights``)."""
  return AnnotatorParams(env_params.sharpness, env_params.annotator_weights)


def _annotator_probability(params, x: TokenContexts, y: chex.Array,
                           y_prime: chex.Array) -> chex.Array:
  topic = token_env.prompt_topic(x.tokens, x.mask)
  return token_env.oracle_probability(topic, y, y_prime, params.sharpness,
                                      params.annotator_weights)


def annotator_oracle() -> PreferenceOracle:
  """The ground truth: the token game's annotator population,
  ``P(y > y'|x) = sum_k w_k sigmoid(tau_k (s_k(x, y) - s_k(x, y')))``
  (:func:`nash_jax.environments.tokens.oracle_probability`), read from the
  prompt's topic token and the responses' tokens. Its scores are computed
  by sorting, so it judges responses of any length (exact in the listable
  game, usable where nothing can be listed). ``params``:
  :class:`AnnotatorParams` or the environment's ``TokenEnvParams``."""
  return PreferenceOracle('annotators', _annotator_probability)


# ---------------------------------------------------- scalar-head transformer


def init_scorer(key: chex.PRNGKey, config: TransformerConfig) -> dict:
  """``{'body': init_params(config), 'head': {'w': [D], 'b': []}}``, the
  head weight normal with standard deviation ``D^-1/2`` (the hidden state
  is RMS-normalized, so the initial score has unit scale) and ``b = 0``."""
  body_key, head_key = jax.random.split(key)
  dtype = config.dtype
  w = jax.random.normal(head_key, (config.d_model,),
                        jnp.promote_types(dtype, jnp.float32))
  return {'body': init_params(body_key, config),
          'head': {'w': (w * config.d_model**-0.5).astype(dtype),
                   'b': jnp.zeros((), dtype)}}


def scorer_score(config: TransformerConfig, params: dict, tokens: chex.Array,
                 mask: chex.Array) -> chex.Array:
  """The scalar head on the hidden state at the last real token.

  ``score = w . h[t*] + b`` with ``h = hidden_states(body, tokens)`` (final
  RMSNorm applied), ``t* = max{t : mask_t}``, RoPE positions ``cumsum(mask)
  - 1`` and ``mask`` as the attention key mask, so masked slots anywhere in
  the sequence (left padding of the prompt, padding after a response's
  EOS) are never read.

  Args:
    config: the body's architecture.
    params: ``{'body': ..., 'head': {'w': [D], 'b': []}}``.
    tokens: ``[B, T]`` int.
    mask: ``[B, T]`` bool, True on real tokens (at least one per row).

  Returns:
    ``[B]`` scores, in at least float32.
  """
  chex.assert_rank([tokens, mask], 2)
  chex.assert_equal_shape([tokens, mask])
  hidden, _ = hidden_states(config, params['body'], tokens.astype(jnp.int32),
                            _positions(mask), mask)
  last = jnp.take_along_axis(hidden, _last_real(mask)[..., None], axis=1)
  wide = jnp.promote_types(hidden.dtype, jnp.float32)
  w, b = params['head']['w'].astype(wide), params['head']['b'].astype(wide)
  return jnp.einsum('bd,d->b', last[:, 0].astype(wide), w) + b


class PreferenceModel(NamedTuple):
  """A learned preference model on a scalar-head transformer.

  Attributes:
    name: 'bradley_terry' or 'pairwise'.
    config: the body's :class:`TransformerConfig`.
    init: ``key -> params`` (:func:`init_scorer`).
    logit: ``(params, x, y, y') -> [B]``, ``d`` with ``P(y > y'|x) =
      sigmoid(d)``; exactly antisymmetric (``d(y', y) = -d(y, y')``,
      ``d(y, y) = 0``); differentiable in ``params``.
    reward: ``(params, x, y) -> [B]``, ``r(x, y)`` of a Bradley-Terry model
      (``None`` for the pairwise model).
  """

  name: str
  config: TransformerConfig
  init: Callable[[chex.PRNGKey], dict]
  logit: Callable[..., chex.Array]
  reward: Callable[..., chex.Array] | None

  def probability(self, params, x: TokenContexts, y: chex.Array,
                  y_prime: chex.Array) -> chex.Array:
    """``P(y > y'|x) = sigmoid(logit)``, ``[B]`` (exactly antisymmetric)."""
    return logit_probability(self.logit(params, x, y, y_prime))

  def oracle(self) -> PreferenceOracle:
    """This model behind the oracle protocol (``params``: its params)."""
    return PreferenceOracle(self.name, self.probability)


def _check_ids(config: TransformerConfig, flag: str, ids) -> tuple:
  ids = tuple(int(i) for i in ids)
  if any(i < 0 or i >= config.vocab_size for i in ids):
    raise ConfigError(flag, f'token ids must lie in [0, '
                      f'{config.vocab_size}), got {ids}')
  return ids


def _check_model_config(config: TransformerConfig, eos_id: int, pad_id: int,
                        separator=()):
  validate_transformer_config(config)
  _check_ids(config, 'eos_id', (eos_id,))
  _check_ids(config, 'pad_id', (pad_id,))
  return _check_ids(config, 'separator', separator)


def make_reward_model(config: TransformerConfig, eos_id: int = EOS_ID,
                      pad_id: int = PAD_ID) -> PreferenceModel:
  """The Bradley-Terry reward model (Bradley & Terry 1952).

  ``r(x, y)`` = :func:`scorer_score` of ``[prompt, y]`` (read at ``y``'s
  EOS, or its last token when cut at ``L``), and
  ``P(y > y'|x) = sigmoid(r(x, y) - r(x, y'))``. Any such ``P`` is
  transitive; on an intransitive oracle a reward gets at most two of the
  three edges of a Condorcet cycle right (ALGORITHMS.md section 6; claim 6).

  ``eos_id`` and ``pad_id``: the responses' end-of-sequence and padding ids
  (the synthetic vocabulary's by default; a real tokenizer's otherwise).
  """
  _check_model_config(config, eos_id, pad_id)

  def reward(params, x: TokenContexts, y: chex.Array) -> chex.Array:
    chex.assert_rank(y, 2)
    tokens, mask = _segments(_prompt(x), _clean(y, eos_id, pad_id))
    return scorer_score(config, params, tokens, mask)

  def logit(params, x: TokenContexts, y, y_prime):
    lo, hi, flip, same = canonical_pairs(y, y_prime, eos_id, pad_id)
    both = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), x)
    r = reward(params, both, jnp.concatenate([lo, hi], axis=0))
    batch = y.shape[0]
    return _orient(r[:batch] - r[batch:], flip, same)

  return PreferenceModel('bradley_terry', config,
                         functools.partial(init_scorer, config=config),
                         logit, reward)


def make_pairwise_model(config: TransformerConfig, separator=(BOS_ID,),
                        eos_id: int = EOS_ID,
                        pad_id: int = PAD_ID) -> PreferenceModel:
  """The learned pairwise preference model (PairRM-style, arXiv
  2306.02561).

  ``f(x, y, y')`` = :func:`scorer_score` of ``[prompt, y, separator, y']``
  (read at the last real token of ``y'``) and ``P(y > y'|x) =
  sigmoid(f(x, y, y') - f(x, y', y))``: antisymmetric for every parameter
  value, and not constrained to be transitive.

  Args:
    config: the body's architecture.
    separator: token ids between the two responses (default ``(BOS,)``:
      the synthetic vocabulary has no dedicated separator, and BOS appears
      nowhere else after the prompt's start). It keeps the boundary
      unambiguous when ``y`` is cut at ``L`` without an EOS.
    eos_id: the responses' end-of-sequence id.
    pad_id: the responses' padding id.
  """
  sep = _check_model_config(config, eos_id, pad_id, separator)
  if not sep:
    raise ConfigError('separator', 'must hold at least one token id')

  def logit(params, x: TokenContexts, y, y_prime):
    lo, hi, flip, same = canonical_pairs(y, y_prime, eos_id, pad_id)
    batch = y.shape[0]
    prompt = _prompt(x)
    sep_segment = _constant(sep, batch)
    lo, hi = _clean(lo, eos_id, pad_id), _clean(hi, eos_id, pad_id)
    forward = _segments(prompt, lo, sep_segment, hi)
    backward = _segments(prompt, hi, sep_segment, lo)
    tokens, mask = (jnp.concatenate([a, b], axis=0)
                    for a, b in zip(forward, backward))
    f = scorer_score(config, params, tokens, mask)
    return _orient(f[:batch] - f[batch:], flip, same)

  return PreferenceModel('pairwise', config,
                         functools.partial(init_scorer, config=config),
                         logit, None)


def make_preference_model(kind: str, config: TransformerConfig,
                          separator=(BOS_ID,), eos_id: int = EOS_ID,
                          pad_id: int = PAD_ID) -> PreferenceModel:
  """:func:`make_reward_model` (``kind='bradley_terry'``) or
  :func:`make_pairwise_model` (``'pairwise'``; ``separator`` is used only
  there). Raises :class:`ConfigError` (flag ``preference_model``) for other
  kinds."""
  if kind == 'bradley_terry':
    return make_reward_model(config, eos_id, pad_id)
  if kind == 'pairwise':
    return make_pairwise_model(config, separator, eos_id, pad_id)
  raise ConfigError('preference_model', f'unknown kind {kind!r}; expected '
                    f'one of {MODEL_KINDS}')


# ------------------------------------------------------------------ training


@flax.struct.dataclass
class Pairs:
  """Ordered pairs of responses to prompts (leaves lead with ``[M]``).

  Attributes:
    x: :class:`TokenContexts` of the prompts.
    y: ``[M, L]`` int first responses.
    y_prime: ``[M, L]`` int second responses.
  """

  x: TokenContexts
  y: chex.Array
  y_prime: chex.Array

  def __len__(self) -> int:
    return self.y.shape[0]


@flax.struct.dataclass
class Comparisons:
  """Labelled comparisons.

  Attributes:
    pairs: :class:`Pairs` ``[M]``.
    labels: ``[M]`` what training sees: the labelling oracle's outcomes
      (Bernoulli draws, or its probabilities).
    probabilities: ``[M]`` the labelling oracle's ``P(y > y'|x)`` (the
      ground truth when the annotators label).
  """

  pairs: Pairs
  labels: chex.Array
  probabilities: chex.Array


def make_comparisons(key: chex.PRNGKey, contexts: Callable,
                     sample: Callable, oracle: PreferenceOracle,
                     oracle_params, num_train: int, num_held_out: int,
                     outcome: str = 'bernoulli',
                     sample_opponent: Callable | None = None):
  """A labelled comparison set and a held-out set from one draw.

  ``x ~ contexts(key, M)``, ``y ~ sample(key, x)``, ``y' ~
  sample_opponent(key, x)`` (default ``sample``), all independent, then one
  query each: ``o = oracle_outcomes(...)``, ``M = num_train +
  num_held_out``. The first ``num_train`` pairs are the training set, the
  rest the held-out set (independent draws; in a small game the same pair
  may occur in both).

  Args:
    key: PRNG key.
    contexts: ``(key, n) -> TokenContexts`` (e.g. ``partial(
      tokens.sample_contexts, env_params)``).
    sample: ``(key, x) -> y [n, L]``, any response sampler (a policy's
      ``sample`` with its params bound, or uniform over listed responses).
    oracle: the labelling oracle.
    oracle_params: its params.
    num_train: training pairs (``>= 1``).
    num_held_out: held-out pairs (``>= 0``).
    outcome: 'bernoulli' (sampled labels) or 'probability' (``o = P``).
    sample_opponent: sampler of ``y'`` (default: ``sample``).

  Returns:
    ``(train, held_out)`` :class:`Comparisons`. Preference queries spent:
    ``num_train + num_held_out``.
  """
  _check_outcome(outcome)
  if num_train < 1 or num_held_out < 0:
    raise ConfigError('num_comparisons', f'need num_train >= 1 and '
                      f'num_held_out >= 0, got {num_train} and '
                      f'{num_held_out}')
  sample_opponent = sample if sample_opponent is None else sample_opponent
  x_key, y_key, opp_key, o_key = jax.random.split(key, 4)
  total = num_train + num_held_out
  x = contexts(x_key, total)
  y = sample(y_key, x)
  y_prime = sample_opponent(opp_key, x)
  prob = oracle.probability(oracle_params, x, y, y_prime)
  if outcome == 'probability':
    labels = prob
  else:
    labels = jax.random.bernoulli(o_key, prob).astype(prob.dtype)
  data = Comparisons(Pairs(x, y, y_prime), labels, prob)
  train = jax.tree.map(lambda a: a[:num_train], data)
  held_out = jax.tree.map(lambda a: a[num_train:], data)
  return train, held_out


def pairwise_loss(d: chex.Array, o: chex.Array) -> chex.Array:
  """Binary cross-entropy of ``P = sigmoid(d)`` against ``o`` in ``[0, 1]``:
  ``o softplus(-d) + (1 - o) softplus(d)`` (per pair; its minimum over
  ``d`` is at ``sigmoid(d) = o``)."""
  chex.assert_equal_shape([d, o])
  o = o.astype(d.dtype)
  return o * jax.nn.softplus(-d) + (1 - o) * jax.nn.softplus(d)


def fit_optimizer(learning_rate, weight_decay,
                  max_grad_norm) -> optax.GradientTransformation:
  """The optimizer of :func:`fit`: global-norm clipping, then AdamW
  (Loshchilov and Hutter, 2019), both in float32 for bfloat16 parameters
  (:func:`nash_jax.precision.in_float32`: in bfloat16 a second moment
  cannot decay by a factor 0.999)."""
  return in_float32(optax.chain(
      optax.clip_by_global_norm(max_grad_norm),
      optax.adamw(learning_rate, weight_decay=weight_decay)))


@functools.partial(jax.jit, static_argnames=('model', 'num_steps',
                                              'batch_size', 'return_losses'))
def fit(key: chex.PRNGKey, model: PreferenceModel, init_params: dict,
        pairs: Pairs, labels: chex.Array, num_steps: int, batch_size: int,
        learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0,
        return_losses: bool = False):
  """Maximum likelihood on labelled pairs, in one compiled call.

  Minimizes ``E_{(x, y, y', o)} [o softplus(-d) + (1 - o) softplus(d)]``
  (:func:`pairwise_loss`) with ``d = model.logit(params, x, y, y')``: the
  Bradley-Terry likelihood for a reward model, the cross-entropy of
  ALGORITHMS.md section 6 for a pairwise model. Each of ``num_steps``
  steps (a ``lax.scan``) draws ``batch_size`` pairs uniformly with
  replacement and takes one step of
  ``clip_by_global_norm(max_grad_norm)`` then ``adamw(learning_rate,
  weight_decay)`` (Adam, Kingma & Ba 2014, arXiv 1412.6980, with decoupled
  weight decay, Loshchilov & Hutter 2017, arXiv 1711.05101; plain Adam at
  ``weight_decay = 0``).

  Args:
    key: PRNG key of the minibatch draws.
    model: a :class:`PreferenceModel` (static).
    init_params: the starting parameters (``model.init(key)``).
    pairs: :class:`Pairs` ``[M]``.
    labels: ``[M]`` outcomes or probabilities in ``[0, 1]``.
    num_steps: optimizer steps (static).
    batch_size: pairs per step (static).
    learning_rate: Adam's step size (may be traced).
    weight_decay: decoupled weight decay (may be traced).
    max_grad_norm: global-norm clipping threshold (may be traced).
    return_losses: also return the ``[num_steps]`` minibatch losses.

  Returns:
    The fitted params (and the losses with ``return_losses``).
  """
  chex.assert_rank(labels, 1)
  chex.assert_axis_dimension(pairs.y, 0, labels.shape[0])
  num = labels.shape[0]
  optimizer = fit_optimizer(learning_rate, weight_decay, max_grad_norm)

  def loss_fn(params, batch, o):
    d = model.logit(params, batch.x, batch.y, batch.y_prime)
    return jnp.mean(pairwise_loss(d, o))

  def step(carry, step_key):
    params, opt_state = carry
    index = jax.random.randint(step_key, (batch_size,), 0, num)
    batch = jax.tree.map(lambda a: a[index], pairs)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, labels[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  keys = jax.random.split(key, num_steps)
  (params, _), losses = jax.lax.scan(
      step, (init_params, optimizer.init(init_params)), keys)
  return (params, losses) if return_losses else params


def evaluate_fit(oracle: PreferenceOracle, params, pairs: Pairs,
                 probabilities: chex.Array) -> dict:
  """How well an oracle matches the ground truth on (held-out) pairs.

  With ``q = oracle.probability(params, ...)`` and ``p`` the ground
  truth's ``P(y > y'|x)``:

  * ``accuracy``: over pairs with ``p != 1/2`` (exact ties, e.g. equal
    annotator scores or ``y = y'``, are excluded), the fraction where
    ``q - 1/2`` has the sign of ``p - 1/2``; a ``q`` of exactly ``1/2``
    counts ``1/2`` (a fair coin's expected score). Chance is 1/2.
  * ``log_loss``: ``mean[-p log q - (1 - p) log(1 - q)]`` over all pairs,
    the cross-entropy against the ground-truth probabilities;
    ``excess_log_loss`` subtracts the ground truth's own entropy (the mean
    KL from ``p`` to ``q``, 0 for a perfect model).
  * ``num_pairs``, ``num_ties``.

  Jittable (``oracle`` static); returns a dict of scalars.
  """
  chex.assert_rank(probabilities, 1)
  q = oracle.probability(params, pairs.x, pairs.y, pairs.y_prime)
  p = probabilities.astype(q.dtype)
  ties = p == 0.5
  truth, guess = jnp.sign(p - 0.5), jnp.sign(q - 0.5)
  score = jnp.where(guess == 0, 0.5, (guess == truth).astype(q.dtype))
  counted = jnp.sum(~ties)
  accuracy = jnp.sum(jnp.where(ties, 0.0, score)) / jnp.maximum(counted, 1)
  eps = jnp.finfo(q.dtype).tiny
  xlogy = lambda a, b: jnp.where(a > 0, a * jnp.log(jnp.maximum(b, eps)), 0)
  log_loss = -jnp.mean(xlogy(p, q) + xlogy(1 - p, 1 - q))
  entropy = -jnp.mean(xlogy(p, p) + xlogy(1 - p, 1 - p))
  return {'accuracy': accuracy, 'log_loss': log_loss,
          'excess_log_loss': log_loss - entropy,
          'num_pairs': jnp.asarray(p.shape[0]), 'num_ties': jnp.sum(ties)}


# --------------------------------------------------------------------- judge


class JudgeTemplate(NamedTuple):
  """A judge prompt as token-id segments (hashable: tuples of ints).

  The judge reads ``prefix, prompt, marker_first, y, marker_second, y',
  suffix`` and answers with one of two tokens. With a real tokenizer the
  segments are its encodings of e.g. ``"Which response is better?\\n
  Prompt: "``, ``"\\nResponse A: "``, ``"\\nResponse B: "``, ``"\\nAnswer
  (A or B):"`` and the answers the ids of ``" A"`` and ``" B"``; the prompt
  tokens are inserted as given (with their own BOS, if any).

  Attributes:
    prefix: ids before the prompt.
    marker_first: ids introducing the first response.
    marker_second: ids introducing the second response.
    suffix: ids of the question, after the second response.
    answer_first: the id that means "the first is better".
    answer_second: the id that means "the second is better".
  """

  prefix: tuple[int, ...]
  marker_first: tuple[int, ...]
  marker_second: tuple[int, ...]
  suffix: tuple[int, ...]
  answer_first: int
  answer_second: int


def synthetic_judge_template(vocab_size: int) -> JudgeTemplate:
  """A template for the synthetic vocabulary (PAD, BOS, EOS, content ids
  from 3), where content ids serve as markers and answers: ``[BOS]
  prompt [3] y [4] y' [BOS]``, answers ``3`` ("first") and ``4``
  ("second"). ``vocab_size`` is the model's (at least 5)."""
  if vocab_size < FIRST_CONTENT_ID + 2:
    raise ConfigError('vocab_size', f'the synthetic judge template needs at '
                      f'least two content ids (vocab_size >= '
                      f'{FIRST_CONTENT_ID + 2}), got {vocab_size}')
  first, second = FIRST_CONTENT_ID, FIRST_CONTENT_ID + 1
  return JudgeTemplate((BOS_ID,), (first,), (second,), (BOS_ID,), first,
                       second)


def _check_template(config: TransformerConfig, template: JudgeTemplate):
  ids = (list(template.prefix) + list(template.marker_first) +
         list(template.marker_second) + list(template.suffix) +
         [template.answer_first, template.answer_second])
  if any(int(i) < 0 or int(i) >= config.vocab_size for i in ids):
    raise ConfigError('judge_template', f'token ids must lie in [0, '
                      f'{config.vocab_size}), got {ids}')
  if template.answer_first == template.answer_second:
    raise ConfigError('judge_template', 'the two answer tokens must differ, '
                      f'got {template.answer_first} twice')


def judge_sequence(template: JudgeTemplate, x: TokenContexts, y: chex.Array,
                   y_prime: chex.Array, eos_id: int = EOS_ID,
                   pad_id: int = PAD_ID):
  """``(tokens, mask) [B, T]``: ``prefix, prompt, marker_first, y,
  marker_second, y', suffix``, with the prompt's left padding and the
  responses' tokens after their first ``eos_id`` masked (and replaced by
  ``pad_id``)."""
  chex.assert_rank([y, y_prime], 2)
  batch = y.shape[0]
  parts = [_prompt(x), _constant(template.marker_first, batch),
           _clean(y, eos_id, pad_id),
           _constant(template.marker_second, batch),
           _clean(y_prime, eos_id, pad_id)]
  if template.prefix:
    parts.insert(0, _constant(template.prefix, batch))
  if template.suffix:
    parts.append(_constant(template.suffix, batch))
  return _segments(*parts)


def _answer_logit(config, params, template, x, y, y_prime, eos_id, pad_id):
  """``l_first - l_second`` at the last real token (``p = sigmoid`` of it).

  Only the two answer rows of the output head are applied, to the last
  hidden state: ``(w_first - w_second) . h_last`` with ``w`` the rows of the
  tied embedding (or the columns of the untied head), instead of ``[B, T,
  V]`` logits."""
  tokens, mask = judge_sequence(template, x, y, y_prime, eos_id, pad_id)
  hidden, _ = hidden_states(config, params, tokens, _positions(mask), mask)
  last = jnp.take_along_axis(hidden, _last_real(mask)[..., None], axis=1)
  answers = jnp.asarray([template.answer_first, template.answer_second])
  if config.tie_embeddings:
    rows = params['embedder']['embedding'][answers]                # [2, D]
  else:
    rows = params['head']['w'][:, answers].T                       # [2, D]
  wide = jnp.promote_types(hidden.dtype, jnp.float32)
  logits = jnp.einsum('bd,ad->ba', last[:, 0].astype(wide), rows.astype(wide))
  return logits[:, 0] - logits[:, 1]


def judge_first_probability(config: TransformerConfig, params,
                            template: JudgeTemplate, x: TokenContexts,
                            y: chex.Array, y_prime: chex.Array,
                            eos_id: int = EOS_ID,
                            pad_id: int = PAD_ID) -> chex.Array:
  """``p(x, y, y')``, ``[B]``: the judge's probability of answering "first"
  with ``y`` shown first, its next-token softmax over the two answer tokens
  only, ``sigmoid(l_first - l_second)`` (position-biased; not
  antisymmetric)."""
  return jax.nn.sigmoid(_answer_logit(config, params, template, x, y,
                                      y_prime, eos_id, pad_id))


def make_judge(config: TransformerConfig, template: JudgeTemplate,
               eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> PreferenceOracle:
  """An LLM judge (arXiv 2306.05685) behind the oracle protocol;
  ``params``: the language model's parameters (same model code and layout
  as the policy's, :mod:`nash_jax.policies.transformer`).

  ``P(y > y'|x) = 1/2 [p(x, y, y') + 1 - p(x, y', y)]`` with ``p`` from
  :func:`judge_first_probability`: both orders are asked (one forward over
  ``2B`` sequences), which cancels a constant preference for either
  position. Computed as ``1/2 + A`` with the antisymmetric ``A = 1/2
  [g(d_1) - g(d_2)]``, ``g(d) = sign(d) (sigmoid(|d|) - 1/2)`` exact, on the
  canonically ordered pair, so ``P + P^T = 1`` and ``P(y, y) = 1/2``
  exactly.

  Args:
    config: the judge's architecture.
    template: the judge prompt (:class:`JudgeTemplate`).
    eos_id: the responses' end-of-sequence id.
    pad_id: the id that replaces the responses' tokens after it.
  """
  validate_transformer_config(config)
  _check_template(config, template)
  _check_ids(config, 'eos_id', (eos_id,))
  _check_ids(config, 'pad_id', (pad_id,))

  def half_gap(d):
    return jnp.sign(d) * (jax.nn.sigmoid(jnp.abs(d)) - 0.5)

  def probability(params, x: TokenContexts, y, y_prime):
    lo, hi, flip, same = canonical_pairs(y, y_prime, eos_id, pad_id)
    batch = y.shape[0]
    both = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), x)
    d = _answer_logit(config, params, template, both,
                      jnp.concatenate([lo, hi], axis=0),
                      jnp.concatenate([hi, lo], axis=0), eos_id, pad_id)
    a = 0.5 * (half_gap(d[:batch]) - half_gap(d[batch:]))
    return _antisymmetric_probability(_orient(a, flip, same))

  return PreferenceOracle('judge', probability)
