"""Learned preference models on a scalar-head transformer: a Bradley-Terry
reward and a pairwise preference model (:class:`PreferenceModel`).

The scorer (:func:`scorer_score`) reads a token sequence, left-padded
prompt then response segments (:mod:`nash_jax.oracles.pairs`), and returns
``w . h_last + b`` with ``h_last`` the final-normed hidden state at the
last real token (:func:`nash_jax.policies.transformer.hidden_states`).
Parameters::

  {'body': transformer params (its own TransformerConfig),
   'head': {'w': [D], 'b': []}}
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.oracles import pairs
from nash_jax.oracles.core import MODEL_KINDS, PreferenceOracle
from nash_jax.policies.sequence import BOS_ID, EOS_ID, PAD_ID
from nash_jax.policies.transformer import (
  TransformerConfig,
  hidden_states,
  init_params,
  validate_transformer_config,
)


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
                            pairs.real_positions(mask), mask)
  last = jnp.take_along_axis(hidden, pairs.last_real_index(mask)[..., None],
                             axis=1)
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
    return pairs.logit_probability(self.logit(params, x, y, y_prime))

  def oracle(self) -> PreferenceOracle:
    """This model behind the oracle protocol (``params``: its params)."""
    return PreferenceOracle(self.name, self.probability)


def _check_model_config(config: TransformerConfig, eos_id: int, pad_id: int,
                        separator=()):
  validate_transformer_config(config)
  pairs.check_token_ids(config, 'eos_id', (eos_id,))
  pairs.check_token_ids(config, 'pad_id', (pad_id,))
  return pairs.check_token_ids(config, 'separator', separator)


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
    tokens, mask = pairs.segments(pairs.prompt_segment(x),
                                  pairs.clean_responses(y, eos_id, pad_id))
    return scorer_score(config, params, tokens, mask)

  def logit(params, x: TokenContexts, y, y_prime):
    lo, hi, flip, same = pairs.canonical_pairs(y, y_prime, eos_id, pad_id)
    both = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), x)
    r = reward(params, both, jnp.concatenate([lo, hi], axis=0))
    batch = y.shape[0]
    return pairs.orient(r[:batch] - r[batch:], flip, same)

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
    lo, hi, flip, same = pairs.canonical_pairs(y, y_prime, eos_id, pad_id)
    batch = y.shape[0]
    prompt = pairs.prompt_segment(x)
    sep_segment = pairs.constant_segment(sep, batch)
    lo = pairs.clean_responses(lo, eos_id, pad_id)
    hi = pairs.clean_responses(hi, eos_id, pad_id)
    forward = pairs.segments(prompt, lo, sep_segment, hi)
    backward = pairs.segments(prompt, hi, sep_segment, lo)
    tokens, mask = (jnp.concatenate([a, b], axis=0)
                    for a, b in zip(forward, backward))
    f = scorer_score(config, params, tokens, mask)
    return pairs.orient(f[:batch] - f[batch:], flip, same)

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
