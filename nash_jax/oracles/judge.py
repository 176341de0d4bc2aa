"""An LLM judge behind the oracle protocol: a language model asked, with
a prompt template of token-id segments (:class:`JudgeTemplate`), which of
two responses is better, in both orders (:func:`make_judge`; Zheng et al.
2023, arXiv 2306.05685). The maths is in :mod:`nash_jax.oracles`."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.oracles import pairs
from nash_jax.oracles.core import PreferenceOracle
from nash_jax.policies.sequence import BOS_ID, EOS_ID, FIRST_CONTENT_ID, PAD_ID
from nash_jax.policies.transformer import (
  TransformerConfig,
  hidden_states,
  validate_transformer_config,
)


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
  parts = [pairs.prompt_segment(x),
           pairs.constant_segment(template.marker_first, batch),
           pairs.clean_responses(y, eos_id, pad_id),
           pairs.constant_segment(template.marker_second, batch),
           pairs.clean_responses(y_prime, eos_id, pad_id)]
  if template.prefix:
    parts.insert(0, pairs.constant_segment(template.prefix, batch))
  if template.suffix:
    parts.append(pairs.constant_segment(template.suffix, batch))
  return pairs.segments(*parts)


def _answer_logit(config, params, template, x, y, y_prime, eos_id, pad_id):
  """``l_first - l_second`` at the last real token (``p = sigmoid`` of it).

  Only the two answer rows of the output head are applied, to the last
  hidden state: ``(w_first - w_second) . h_last`` with ``w`` the rows of the
  tied embedding (or the columns of the untied head), instead of ``[B, T,
  V]`` logits."""
  tokens, mask = judge_sequence(template, x, y, y_prime, eos_id, pad_id)
  hidden, _ = hidden_states(config, params, tokens,
                            pairs.real_positions(mask), mask)
  last = jnp.take_along_axis(hidden, pairs.last_real_index(mask)[..., None],
                             axis=1)
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
  pairs.check_token_ids(config, 'eos_id', (eos_id,))
  pairs.check_token_ids(config, 'pad_id', (pad_id,))

  def half_gap(d):
    return jnp.sign(d) * (jax.nn.sigmoid(jnp.abs(d)) - 0.5)

  def probability(params, x: TokenContexts, y, y_prime):
    lo, hi, flip, same = pairs.canonical_pairs(y, y_prime, eos_id, pad_id)
    batch = y.shape[0]
    both = jax.tree.map(lambda a: jnp.concatenate([a, a], axis=0), x)
    d = _answer_logit(config, params, template, both,
                      jnp.concatenate([lo, hi], axis=0),
                      jnp.concatenate([hi, lo], axis=0), eos_id, pad_id)
    a = 0.5 * (half_gap(d[:batch]) - half_gap(d[batch:]))
    return pairs.antisymmetric_probability(pairs.orient(a, flip, same))

  return PreferenceOracle('judge', probability)
